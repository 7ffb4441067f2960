"""Baseline stage: the supervised classifier trained on the labeled split only."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

from stages import data
from stages.artifacts import ArtifactError, parent_entry, staged_output, verify, write_manifest
from stages.config import NUM_CLASSES, TrainConfig
from stages.data import MODEL_FILE
from stages.stage import Stage, main
from stages.training import train_classifier

log = logging.getLogger(__name__)

SAVED_MODEL_DIR = "saved_model"  # to serve (TensorFlow SavedModel)
HISTORY_FILE = "history.parquet"  # one row per epoch
METRICS_FILE = "metrics.json"


def export_saved_model(model: keras.Model, path: Path) -> bool:
    """Write a SavedModel with a ``serve`` endpoint; False when TensorFlow is not installed.

    ``model.export`` calls the model without ``training=False``, and Keras' random augmentation
    layers then default to training mode: the served predictions would be augmented. The
    endpoint here passes ``training=False`` explicitly.
    """
    if importlib.util.find_spec("tensorflow") is None:
        log.warning("TensorFlow is not installed: no SavedModel is exported, only %s", MODEL_FILE)
        return False
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")],
    )
    archive.write_out(str(path), verbose=False)
    return True


def save_classifier(directory: Path, model: keras.Model, history, metrics: dict[str, Any]) -> bool:
    """A trained classifier's artifact files: model.keras, the SavedModel, the per-epoch history and
    the metrics; True when the SavedModel was written."""
    model.save(directory / MODEL_FILE)
    exported = export_saved_model(model, directory / SAVED_MODEL_DIR)
    history.to_parquet(directory / HISTORY_FILE, index=False)
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return exported


def load_classifier(artifact: Path) -> keras.Model:
    """The classifier of a model artifact (baseline, self_train, fine_tune, consistency), checked to
    take the catalog's images and to predict the CIFAR-100 classes."""
    path = Path(artifact) / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the model input must be a trained classifier's artifact "
                            "(baseline, self_train, fine_tune or consistency stage)")
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises several types for a damaged or foreign file
        raise ArtifactError(f"{path} is not a loadable Keras model ({type(error).__name__}: {error}); "
                            "retrain it with the stage that made it") from None
    wanted = {"input shape": (tuple(model.input_shape[1:]), data.IMAGE_SHAPE),
              "number of classes": (model.output_shape[-1], NUM_CLASSES)}
    for what, (actual, expected) in wanted.items():
        if actual != expected:
            raise ArtifactError(f"{path} has {what} {actual}, but the pipeline's images need {expected}: "
                                "use a classifier trained by this pipeline on CIFAR-100")
    return model


def run(config: TrainConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    split = Path(inputs["split"])
    verify(split)
    train, validation = data.read_table(split, "labeled"), data.read_table(split, "validation")
    log.info("training %s on %d labeled images, validating on %d", config.architecture.name, len(train), len(validation))
    result = train_classifier(config, train, validation)
    best = result.history.iloc[result.best_epoch - 1]
    # "best_" = at the kept epoch; the unprefixed names are the per-epoch history's
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_val_accuracy": float(best["val_accuracy"]),
        "best_val_top5_accuracy": float(best["val_top5_accuracy"]),
        "best_val_loss": float(best["val_loss"]),
        "best_train_accuracy": float(best["accuracy"]),
        "best_train_loss": float(best["loss"]),
        "parameters": result.model.count_params(),
        "train_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 1),  # training images / epoch wall time
    }
    with staged_output(output) as tmp:
        exported = save_classifier(tmp, result.model, result.history, metrics)
        manifest = write_manifest(
            tmp, "baseline", config.model_dump(mode="json"), {"split": parent_entry(split)}, started,
            extra={"reads": ["split/labeled.parquet", "split/validation.parquet"],
                   "backend": keras.backend.backend(), "saved_model": exported},
        )
    log.info("best epoch %d: val accuracy %.4f; model in %s", result.best_epoch, metrics["best_val_accuracy"], output)
    return manifest


STAGE = Stage(
    name="baseline",
    summary="Train the supervised classifier on the labeled split; keep the best validation epoch.",
    config_type=TrainConfig,
    inputs=("split",),
    run=run,
)

if __name__ == "__main__":
    sys.exit(main(STAGE))
