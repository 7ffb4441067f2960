"""Evaluate stage: test-set metrics and figures of a trained classifier.

This is the only stage that reads the test table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from stages import data, figures
from stages.artifacts import parent_entry, staged_output, verify, write_manifest
from stages.baseline import HISTORY_FILE, METRICS_FILE, load_classifier
from stages.config import NUM_CLASSES, EvaluateConfig
from stages.stage import Stage, main
from stages.training import accuracy_and_cross_entropy

log = logging.getLogger(__name__)

PER_CLASS_FILE = "per_class.parquet"
PREDICTIONS_FILE = "predictions.parquet"
FIGURES_DIR = "figures"


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Top-1, top-5, mean cross-entropy and the confusion matrix (true x predicted counts)."""
    top5 = np.argsort(probabilities, axis=1)[:, -5:]
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(matrix, (labels, probabilities.argmax(axis=1)), 1)
    accuracy, loss = accuracy_and_cross_entropy(probabilities, labels)
    metrics = {
        "test_accuracy": accuracy,
        "test_top5_accuracy": float((top5 == labels[:, None]).any(axis=1).mean()),
        "test_loss": loss,
        "test_images": int(len(labels)),
    }
    return metrics, matrix


def view_probabilities(model: keras.Model, images: np.ndarray, batch_size: int, flip_average: bool) -> np.ndarray:
    """The model's softmax (V, N, C) of uint8 images (N, H, W, 3): the images as they are, then (V = 2,
    with ``flip_average``) mirrored left to right."""
    views = [images, images[:, :, ::-1]] if flip_average else [images]
    return np.stack([model.predict(view.astype("float32"), batch_size=batch_size, verbose=0) for view in views])


def per_class_table(matrix: np.ndarray, classes: list[str]) -> pd.DataFrame:
    support = matrix.sum(axis=1)
    return pd.DataFrame({
        "label": np.arange(NUM_CLASSES, dtype=np.int32),
        "name": classes,
        "images": support,
        "accuracy": np.diag(matrix) / np.maximum(support, 1),
    })


def run(config: EvaluateConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    split, trained = Path(inputs["split"]), Path(inputs["model"])
    verify(split)
    verify(trained)
    test = data.read_table(split, "test")
    classes = json.loads((split / "classes.json").read_text())
    model = load_classifier(trained)
    views = view_probabilities(model, test.images, config.batch_size, config.flip_average)
    probabilities = views.mean(axis=0)
    metrics, matrix = classification_metrics(probabilities, test.labels)
    # the un-averaged view: comparable with evaluations made without flip averaging
    metrics["test_accuracy_single_view"] = accuracy_and_cross_entropy(views[0], test.labels)[0]
    history = pd.read_parquet(trained / HISTORY_FILE)
    best_epoch = json.loads((trained / METRICS_FILE).read_text())["best_epoch"]
    with staged_output(output) as tmp:
        per_class_table(matrix, classes).to_parquet(tmp / PER_CLASS_FILE, index=False)
        pd.DataFrame({
            "id": test.ids, "label": test.labels, "predicted": probabilities.argmax(axis=1).astype(np.int32),
            "confidence": probabilities.max(axis=1),
        }).to_parquet(tmp / PREDICTIONS_FILE, index=False)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / FIGURES_DIR).mkdir()
        figures.learning_curves(history, best_epoch, tmp / FIGURES_DIR / "learning_curves.png")
        figures.confusion_matrix(matrix, tmp / FIGURES_DIR / "confusion_matrix.png")
        figures.network_diagram(model, tmp / FIGURES_DIR / "network.png")
        manifest = write_manifest(
            tmp, "evaluate", config.model_dump(mode="json"),
            {"split": parent_entry(split), "model": parent_entry(trained)}, started,
            extra={"reads": ["split/test.parquet"]},
        )
    log.info("test top-1 %.4f (single view %.4f), top-5 %.4f on %d images", metrics["test_accuracy"],
             metrics["test_accuracy_single_view"], metrics["test_top5_accuracy"], metrics["test_images"])
    return manifest


STAGE = Stage(
    name="evaluate",
    summary="Test-set top-1/top-5 accuracy, loss, per-class accuracy and figures of a trained model.",
    config_type=EvaluateConfig,
    inputs=("split", "model"),
    run=run,
)

if __name__ == "__main__":
    sys.exit(main(STAGE))
