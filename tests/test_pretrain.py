"""Encoder pretraining: the decoder, the objectives, the k-NN probe, the divergence guard, the stage."""

import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import CIFAR_SHAPED

from pipelines.config import load_pipeline_config
from stages import fine_tune, pretrain
from stages.fine_tune import EncoderFineTuneConfig, JointConfig, TwoStepConfig
from stages.lib import catalog, training
from stages.lib.artifacts import ArtifactError, write_manifest
from stages.lib.models import build_decoder, build_encoder, encoder_of
from stages.lib.objectives import OBJECTIVES, build_objective
from stages.lib.objectives.simclr import ViewAugmentConfig, build_views
from stages.lib.training import FiniteGuard, NonFiniteValue, TwoStreamBatches, build_classifier
from stages.pretrain import PretrainConfig


@pytest.mark.parametrize("preset", ["smoke", "quick", "seed"])
def test_decoder_mirrors_the_encoder_back_to_an_image(preset):
    architecture = load_pipeline_config(preset).baseline.architecture
    encoder, decoder = build_encoder(architecture, (32, 32, 3)), build_decoder(architecture, (32, 32, 3))
    assert decoder.input_shape == encoder.output_shape and decoder.output_shape == (None, 32, 32, 3)
    convs = [layer.filters for layer in decoder.layers if isinstance(layer, keras.layers.Conv2D)]
    per_block = architecture.convs_per_block
    mirrored = [f for f in reversed(architecture.filters) for _ in range(per_block)]
    assert convs == mirrored + [3]  # seed: 256, 256, 192, 192, 96, 96, then the RGB output
    assert sum(isinstance(layer, keras.layers.UpSampling2D) for layer in decoder.layers) == len(architecture.filters)


def test_every_registered_objective_has_its_section_in_the_stage_config():
    for name in OBJECTIVES:
        assert PretrainConfig.model_fields[name].annotation is OBJECTIVES[name].config_type
    with pytest.raises(ValueError, match="unknown objective 'byol'; known: autoencoder, simclr"):
        PretrainConfig(objective="byol")


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
    pretrain.STAGE.execute(config, {"split": split_artifact}, output)
    return request.param, output


def test_pretrain_stage_writes_the_encoder_history_and_figures(pretrained, smoke):
    objective, output = pretrained
    encoder = keras.saving.load_model(output / catalog.ENCODER_FILE)
    assert encoder.input_shape == (None, 32, 32, 3) and encoder.output_shape == (None, smoke.baseline.architecture.filters[-1])
    history = pd.read_parquet(output / "history.parquet")
    evidence = {"autoencoder": {"reconstruction_loss", "psnr"}, "simclr": {"contrastive_loss", "pair_accuracy"}}[objective]
    assert evidence | {"loss", "probe_accuracy"} <= set(history.columns) and len(history) == 2
    assert np.isfinite(history.drop(columns=["timestamp_ms"]).to_numpy()).all()
    metrics = json.loads((output / "metrics.json").read_text())
    assert 0 <= metrics["untrained_probe_accuracy"] <= 1 and metrics["final_probe_accuracy"] == history["probe_accuracy"].iloc[-1]
    figure = {"autoencoder": "reconstructions.png", "simclr": "similarity_matrix.png"}[objective]
    assert (output / "figures" / figure).is_file() and (output / "figures" / "pretraining_curves.png").is_file()


@pytest.mark.parametrize("mode", ["two_step", "joint"])
def test_fine_tune_puts_a_classifier_on_the_pretrained_encoder(pretrained, mode, split_artifact, smoke, tmp_path):
    objective, encoder_artifact = pretrained
    config = EncoderFineTuneConfig(mode=mode, classifier=smoke.baseline, two_step=TwoStepConfig(unfreeze_epochs=1),
                                   joint=JointConfig(unlabeled_batch_size=32))
    fine_tune.STAGE.execute(config, {"split": split_artifact, "encoder": encoder_artifact}, tmp_path / "out")
    classifier = keras.saving.load_model(tmp_path / "out" / "model.keras")
    assert classifier.output_shape == (None, 100)
    history = pd.read_parquet(tmp_path / "out" / "history.parquet")
    phases = {"two_step": ["head", "head", "unfrozen"], "joint": ["joint", "joint"]}[mode]
    assert history["phase"].tolist() == phases and history["epoch"].tolist() == list(range(1, len(phases) + 1))
    if mode == "joint":
        evidence = {"autoencoder": "reconstruction_loss", "simclr": "contrastive_loss"}[objective]
        assert {"classification_loss", evidence, "val_accuracy"} <= set(history.columns)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 1 <= metrics["best_epoch"] <= len(phases) and 0 <= metrics["best_val_accuracy"] <= 1


# Fits a network that is BatchNorm then a dense layer on one stream of images while the callback
# re-estimates its statistics on another; prints the kept moving mean and variance and the batch
# statistics of the other stream. Run in-process (TensorFlow) and in a subprocess (JAX).
RECALIBRATED_FIT = """
import json, keras, numpy as np
from stages.lib.training import BatchNormRecalibration, EpochRecorder, epoch_callbacks
rng = np.random.default_rng(0)
train = rng.normal(50.0, 10.0, size=(64, 2, 2, 3)).astype("float32")  # far from the images below
images = rng.normal(-3.0, 2.0, size=(35, 2, 2, 3)).astype("float32")  # 4 batches of 8; 3 left over
inputs = keras.Input((2, 2, 3))
network = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.BatchNormalization()(inputs))))
network.compile(optimizer="sgd", loss="mse")
selector = keras.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=True, patience=3)
callbacks = epoch_callbacks(0, EpochRecorder(3), selector, extra=(BatchNormRecalibration(network, images, 8, seed=0),))
network.fit(train, np.zeros((64, 2)), validation_data=(images, np.zeros((35, 2))), epochs=3, batch_size=16, verbose=0,
            callbacks=callbacks)
norm = network.layers[1]
order = np.random.default_rng(0).permutation(35)[:32].reshape(4, 8)
batches = images[order].reshape(4, -1, 3)  # (batch, pixels, channel)
print(json.dumps({"mean": keras.ops.convert_to_numpy(norm.moving_mean).tolist(),
                  "variance": keras.ops.convert_to_numpy(norm.moving_variance).tolist(),
                  "expected_mean": batches.mean(axis=1).mean(axis=0).tolist(),
                  "expected_variance": batches.var(axis=1).mean(axis=0).tolist(), "momentum": norm.momentum}))
"""


def assert_recalibrated(printed: str) -> None:
    result = json.loads(printed.strip().splitlines()[-1])
    np.testing.assert_allclose(result["mean"], result["expected_mean"], rtol=1e-5)
    np.testing.assert_allclose(result["variance"], result["expected_variance"], rtol=1e-4)
    assert result["momentum"] == 0.99  # put back


def test_recalibrated_batchnorm_keeps_the_batch_statistics_of_the_given_images(capsys):
    """Validated and kept: the mean of the batch statistics of the given images' whole batches,
    not the moving average of the training stream (mean 50 against -3)."""
    exec(RECALIBRATED_FIT, {})
    assert_recalibrated(capsys.readouterr().out)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_recalibrated_batchnorm_on_the_jax_backend():
    """JAX's fit holds the variables in a state of its own: the callback's values must reach it."""
    out = subprocess.run([sys.executable, "-c", RECALIBRATED_FIT], env={**os.environ, "KERAS_BACKEND": "jax"},
                         capture_output=True, text=True, check=True).stdout
    assert_recalibrated(out)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_joint_fine_tuning_recalibrates_the_classifier_before_each_validation(recalibrate, pretrained, split_artifact,
                                                                              smoke, tmp_path, monkeypatch):
    calls = []
    original = training.recalibrate_batchnorm

    def recorded(network, images, batch_size):
        calls.append((network.name, len(images), batch_size))
        original(network, images, batch_size)

    monkeypatch.setattr(training, "recalibrate_batchnorm", recorded)
    _, encoder_artifact = pretrained
    config = EncoderFineTuneConfig(mode="joint", classifier=smoke.baseline,
                                   joint=JointConfig(unlabeled_batch_size=32, recalibrate_batchnorm=recalibrate))
    fine_tune.STAGE.execute(config, {"split": split_artifact, "encoder": encoder_artifact}, tmp_path / "out")
    labeled = len(catalog.read_table(split_artifact, "labeled"))
    epochs = len(pd.read_parquet(tmp_path / "out" / "history.parquet"))
    expected = [("vgg_classifier", labeled, smoke.baseline.batch_size)] * epochs
    assert calls == (expected if recalibrate else [])


def test_two_step_starts_from_the_pretrained_encoder_and_keeps_it_frozen(pretrained, split_artifact, smoke, tmp_path):
    _, encoder_artifact = pretrained
    config = EncoderFineTuneConfig(classifier=smoke.baseline)
    fine_tune.STAGE.execute(config, {"split": split_artifact, "encoder": encoder_artifact}, tmp_path / "out")
    classifier = keras.saving.load_model(tmp_path / "out" / "model.keras")
    tuned = classifier.get_layer("vgg_encoder").get_weights()
    original = keras.saving.load_model(encoder_artifact / catalog.ENCODER_FILE).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(tuned, original))


def test_joint_loss_weights_reach_the_training_objective(pretrained, split_artifact, smoke):
    """With a = 1 the classification term weighs 0: the joint loss is twice the unsupervised one."""
    objective, encoder_artifact = pretrained
    config = EncoderFineTuneConfig(mode="joint", classifier=smoke.baseline, joint=JointConfig(weight=1.0, unlabeled_batch_size=32))
    setup = fine_tune.pretrained_setup(encoder_artifact, config.classifier)
    classifier = build_classifier(config.classifier, CIFAR_SHAPED)
    model = fine_tune.JointModel(classifier, build_objective(setup, encoder=encoder_of(classifier)), config)
    labeled = catalog.read_table(split_artifact, "labeled")
    batch = TwoStreamBatches(labeled, 100, labeled.images, 16, 16, seed=0)[0]
    keras.utils.set_random_seed(0)
    outputs = model(batch[0], training=False)
    total = float(model.compute_loss(y=batch[1], y_pred=outputs)) - float(sum(model.losses))
    unsupervised = float(model.objective.unsupervised_loss(outputs["unsupervised"]))
    assert total == pytest.approx(2 * unsupervised, rel=1e-5)


def test_joint_weight_outside_minus_one_one_is_refused():
    for a in (-1.5, 1.01):
        with pytest.raises(ValueError, match="joint.weight"):
            EncoderFineTuneConfig.model_validate({"mode": "joint", "joint": {"weight": a}})


def test_an_encoder_for_other_images_is_refused(pretrained, split_artifact, smoke, tmp_path):
    _, encoder_artifact = pretrained
    foreign = tmp_path / "foreign"
    shutil.copytree(encoder_artifact, foreign)
    inputs = keras.Input((64, 64, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)).save(foreign / catalog.ENCODER_FILE)
    manifest = json.loads((foreign / "manifest.json").read_text())
    write_manifest(foreign, "pretrain", manifest["config"], manifest["parents"], dt.datetime.now(dt.timezone.utc))
    with pytest.raises(ArtifactError, match=r"encoder.keras takes inputs of shape \(64, 64, 3\), but the images are \(32, 32, 3\)"):
        fine_tune.STAGE.execute(EncoderFineTuneConfig(classifier=smoke.baseline), {"split": split_artifact, "encoder": foreign},
                      tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_encoder_of_another_architecture_is_refused(pretrained, smoke):
    _, encoder_artifact = pretrained
    wider = smoke.baseline.model_copy(update={"architecture": smoke.baseline.architecture.model_copy(
        update={"filters": (16, 32)})})
    with pytest.raises(ArtifactError, match=r"classifier.architecture.filters is \(16, 32\) but the encoder"):
        fine_tune.pretrained_setup(encoder_artifact, wider)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_simclr_pretraining_runs_on_the_jax_backend(split_artifact, smoke, tmp_path):
    config = PretrainConfig(objective="simclr", architecture=smoke.baseline.architecture, epochs=1, batch_size=64,
                            probe_every=0)
    (tmp_path / "config.json").write_text(config.model_dump_json())
    subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", str(tmp_path / "config.json"),
                    "--input", f"split={split_artifact}", "--output", str(tmp_path / "out")],
                   env={**os.environ, "KERAS_BACKEND": "jax"}, check=True, capture_output=True)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backend"] == "jax"
    assert np.isfinite(json.loads((tmp_path / "out" / "metrics.json").read_text())["final_contrastive_loss"])
