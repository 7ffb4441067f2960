"""Evaluate stage: test-set metrics and figures of a trained classifier.

This is the only stage that reads the test table.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from pydantic import Field

from stages.lib import catalog, figures
from stages.lib.config import StrictModel
from stages.lib.models import INFERENCE_BATCH
from stages.lib.stage import Stage, main
from stages.lib.training import accuracy_and_cross_entropy

log = logging.getLogger(__name__)


class EvaluateConfig(StrictModel):
    batch_size: int = Field(INFERENCE_BATCH, ge=1, description="inference batch size")
    # +0.40 to +0.61 pts top-1 on the 40,000 unlabeled images for each of four quick-preset models that
    # never saw them, where 1,000 validation images cannot resolve it (bench/results/flip-average-quick.md)
    flip_average: bool = Field(True, description="predict the mean of the softmax of each image and of its mirror "
                               "image (for models trained with random flips; off for the single view alone)")


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Top-1, top-5, mean cross-entropy and the confusion matrix (true x predicted counts) of probabilities (N, C)."""
    num_classes = probabilities.shape[1]
    top5 = np.argsort(probabilities, axis=1)[:, -5:]
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
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
        "label": np.arange(len(classes), dtype=np.int32),
        "name": classes,
        "images": support,
        "accuracy": np.diag(matrix) / np.maximum(support, 1),
    })


def run(config: EvaluateConfig, inputs: Mapping[str, Path], output: Path) -> None:
    split, trained = inputs["split"], inputs["model"]
    data = catalog.read_dataset_info(split)
    test = catalog.read_table(split, "test")
    model = catalog.load_classifier(trained, data)
    views = view_probabilities(model, test.images, config.batch_size, config.flip_average)
    probabilities = views.mean(axis=0)
    metrics, matrix = classification_metrics(probabilities, test.labels)
    # the un-averaged view: comparable with evaluations made without flip averaging
    metrics["test_accuracy_single_view"] = accuracy_and_cross_entropy(views[0], test.labels)[0]
    per_class_table(matrix, data.classes).to_parquet(output / catalog.PER_CLASS_FILE, index=False)
    pd.DataFrame({
        "id": test.ids, "label": test.labels, "predicted": probabilities.argmax(axis=1).astype(np.int32),
        "confidence": probabilities.max(axis=1),
    }).to_parquet(output / catalog.PREDICTIONS_FILE, index=False)
    catalog.write_metrics(output, metrics)
    drawn = catalog.figures_dir(output)
    figures.learning_curves(pd.read_parquet(trained / catalog.HISTORY_FILE), catalog.read_metrics(trained)["best_epoch"],
                            drawn / "learning_curves.png")
    figures.confusion_matrix(matrix, data.classes, drawn / "confusion_matrix.png")
    figures.network_diagram(model, drawn / "network.png")
    log.info("test top-1 %.4f (single view %.4f), top-5 %.4f on %d images", metrics["test_accuracy"],
             metrics["test_accuracy_single_view"], metrics["test_top5_accuracy"], metrics["test_images"])


STAGE = Stage("evaluate", EvaluateConfig, run, inputs=("split", "model"),
              summary="Test-set top-1/top-5 accuracy, loss, per-class accuracy and figures of a trained model.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
