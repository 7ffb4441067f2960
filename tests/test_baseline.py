import json

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import CIFAR_SHAPED

from pipelines.config import load_pipeline_config
from stages import baseline
from stages.lib import catalog
from stages.lib.artifacts import ArtifactError, verify
from stages.lib.training import build_classifier, one_hot


def test_seed_network_is_the_one_the_seed_describes():
    model = build_classifier(load_pipeline_config("seed").baseline, CIFAR_SHAPED)
    encoder = model.get_layer("vgg_encoder")
    convs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [96, 96, 192, 192, 256, 256]
    assert all(conv.kernel_size == (3, 3) and conv.kernel_regularizer.l2 == pytest.approx(0.003) for conv in convs)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in encoder.layers) == 6
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in encoder.layers) == 3
    assert isinstance(encoder.layers[-1], keras.layers.GlobalAveragePooling2D)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2 and dense[-1].units == 100
    augmentation = [type(layer).__name__ for layer in model.get_layer("augmentation").layers]
    assert augmentation == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomGaussianBlur"]


def test_baseline_outputs(model_artifact, split_artifact, smoke):
    manifest = verify(model_artifact)
    assert manifest["parents"]["split"]["digest"] == verify(split_artifact)["digest"]
    assert manifest["saved_model"] is True and (model_artifact / "saved_model" / "saved_model.pb").is_file()
    history = pd.read_parquet(model_artifact / "history.parquet")
    assert history["epoch"].tolist() == list(range(1, smoke.baseline.epochs + 1))
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"} <= set(history.columns)
    metrics = json.loads((model_artifact / "metrics.json").read_text())
    assert 0 <= metrics["best_val_accuracy"] <= 1 and metrics["images_per_second"] > 0


def test_kept_weights_are_those_of_the_selected_epoch(model_artifact, split_artifact, smoke):
    metrics = json.loads((model_artifact / "metrics.json").read_text())
    history = pd.read_parquet(model_artifact / "history.parquet")
    assert metrics["best_epoch"] == int(history["val_loss"].idxmin()) + 1  # smoke selects on val_loss
    model = keras.saving.load_model(model_artifact / "model.keras")
    validation = catalog.read_table(split_artifact, "validation")
    loss = model.evaluate(validation.images.astype("float32"), one_hot(validation.labels, 100), verbose=0, return_dict=True)
    assert loss["loss"] == pytest.approx(metrics["best_val_loss"], rel=1e-4)


def test_saved_model_serves_the_same_predictions(model_artifact, split_artifact):
    import tensorflow as tf

    images = catalog.read_table(split_artifact, "validation").images[:8].astype("float32")
    saved_model = tf.saved_model.load(str(model_artifact / "saved_model"))  # kept alive: serve() uses its variables
    served = saved_model.serve(images).numpy()
    keras_model = keras.saving.load_model(model_artifact / "model.keras")
    np.testing.assert_allclose(served, keras_model.predict(images, verbose=0), atol=1e-5)


def test_unfinished_split_is_refused(tmp_path, smoke):
    (tmp_path / "split").mkdir()
    with pytest.raises(ArtifactError, match="manifest.json is missing: .* Rerun the stage"):
        baseline.STAGE.execute(smoke.baseline, {"split": tmp_path / "split"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_training_reads_only_labeled_and_validation(tmp_path, split_artifact, smoke, monkeypatch):
    opened = []
    real_read = catalog.read_table
    monkeypatch.setattr(catalog, "read_table", lambda artifact, name: opened.append(name) or real_read(artifact, name))
    manifest = baseline.STAGE.execute(smoke.baseline, {"split": split_artifact}, tmp_path / "out")
    assert opened == ["labeled", "validation"]
    assert manifest["reads"] == ["split/dataset.json", "split/labeled.parquet", "split/validation.parquet"]
