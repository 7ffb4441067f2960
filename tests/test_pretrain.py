"""Encoder pretraining: the decoder, the objectives, the k-NN probe, the divergence guard, the stage."""

import json
import typing

import keras
import numpy as np
import pandas as pd
import pytest

from stages import pretrain
from stages.config import PretrainConfig, ViewAugmentConfig, load_pipeline_config
from stages.models import build_decoder, build_encoder
from stages.objectives import OBJECTIVES
from stages.objectives.simclr import build_views
from stages.training import FiniteGuard, NonFiniteValue


@pytest.mark.parametrize("preset", ["smoke", "quick", "seed"])
def test_decoder_mirrors_the_encoder_back_to_an_image(preset):
    architecture = load_pipeline_config(preset).baseline.architecture
    encoder, decoder = build_encoder(architecture), build_decoder(architecture)
    assert decoder.input_shape == encoder.output_shape and decoder.output_shape == (None, 32, 32, 3)
    convs = [layer.filters for layer in decoder.layers if isinstance(layer, keras.layers.Conv2D)]
    per_block = architecture.convs_per_block
    mirrored = [f for f in reversed(architecture.filters) for _ in range(per_block)]
    assert convs == mirrored + [3]  # seed: 256, 256, 192, 192, 96, 96, then the RGB output
    assert sum(isinstance(layer, keras.layers.UpSampling2D) for layer in decoder.layers) == len(architecture.filters)


def test_every_configurable_objective_is_registered():
    assert set(OBJECTIVES) == set(typing.get_args(PretrainConfig.model_fields["objective"].annotation))


def test_views_keep_shape_and_pixel_range_and_differ():
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    views = build_views(ViewAugmentConfig(blur_sigma=1.0), seed=0)
    first, second = (keras.ops.convert_to_numpy(views(images, training=True)) for _ in range(2))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 255
    assert not np.allclose(first, second)


def test_knn_accuracy_on_hand_made_features():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], "float32")
    labels = np.array([0, 0, 1, 1])
    queries = np.array([[1, 0.05], [0.05, 1], [1, 0]], "float32")
    assert pretrain.knn_accuracy(train, labels, queries, np.array([0, 1, 1]), k=2) == pytest.approx(2 / 3)
    # a tie (one vote each) goes to the nearer neighbour's class
    assert pretrain.knn_accuracy(train, labels, np.array([[0.8, 0.2]], "float32"), np.array([0]), k=4) == 1.0


def test_finite_guard_names_the_value_the_step_and_the_fix():
    guard = FiniteGuard()
    guard.on_epoch_begin(2)
    with pytest.raises(NonFiniteValue, match=r"loss became nan at epoch 3, step 5: training diverged. Lower learning_rate"):
        guard.on_train_batch_end(4, {"loss": float("nan")})
    with pytest.raises(NonFiniteValue, match="psnr became inf at the end of epoch 3"):
        guard.on_epoch_end(2, {"loss": 1.0, "psnr": float("inf")})


@pytest.fixture(scope="module", params=["autoencoder", "simclr"])
def pretrained(request, tmp_path_factory, split_artifact, smoke):
    config = PretrainConfig(objective=request.param, architecture=smoke.baseline.architecture, epochs=2,
                            batch_size=64)
    output = tmp_path_factory.mktemp(request.param) / "artifact"
    pretrain.run(config, {"split": split_artifact}, output)
    return request.param, output


def test_pretrain_stage_writes_the_encoder_history_and_figures(pretrained, smoke):
    objective, output = pretrained
    encoder = keras.saving.load_model(output / pretrain.ENCODER_FILE)
    assert encoder.input_shape == (None, 32, 32, 3) and encoder.output_shape == (None, smoke.baseline.architecture.filters[-1])
    history = pd.read_parquet(output / "history.parquet")
    evidence = {"autoencoder": {"reconstruction_loss", "psnr"}, "simclr": {"contrastive_loss", "pair_accuracy"}}[objective]
    assert evidence | {"loss", "probe_accuracy"} <= set(history.columns) and len(history) == 2
    assert np.isfinite(history.drop(columns=["timestamp_ms"]).to_numpy()).all()
    metrics = json.loads((output / "metrics.json").read_text())
    assert 0 <= metrics["untrained_probe_accuracy"] <= 1 and metrics["final_probe_accuracy"] == history["probe_accuracy"].iloc[-1]
    figure = {"autoencoder": "reconstructions.png", "simclr": "similarity_matrix.png"}[objective]
    assert (output / "figures" / figure).is_file() and (output / "figures" / "pretraining_curves.png").is_file()
