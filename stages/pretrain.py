"""Pretrain stage: the shared encoder trained without labels by a registered objective.

Trains on labeled + unlabeled training images (labels unused). Evidence that it learned, per
epoch: the objective's own metrics (reconstruction loss and PSNR; contrastive loss and
positive-pair accuracy) and, every ``probe_every`` epochs, a k-NN probe: validation accuracy of
the nearest labeled images in the encoder's feature space. Any NaN or infinity stops it with an
error. Writes the encoder (``encoder.keras``), which the fine-tune stage puts under a classifier.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages import data, figures
from stages.artifacts import parent_entry, staged_output, verify, write_manifest
from stages.baseline import HISTORY_FILE, METRICS_FILE
from stages.config import PretrainConfig
from stages.data import ImageTable
from stages.models import PIXEL_OFFSET, PIXEL_SCALE
from stages.objectives import OBJECTIVES
from stages.stage import Stage, main
from stages.training import EpochBatches, EpochRecorder, cosine_schedule, epoch_callbacks, feed, training_seconds

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.keras"
OBJECTIVE_WEIGHTS = "objective.weights.h5"  # encoder + decoder or projection head, for joint fine-tuning
FIGURES_DIR = "figures"
FIGURE_IMAGES = 16  # validation images drawn in the objective's figures
PROBE_NEIGHBOURS = 20


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, labels: np.ndarray,
                 k: int = PROBE_NEIGHBOURS) -> float:
    """Accuracy of a cosine k-NN majority vote (ties to the nearest) of ``features`` among ``train_features``."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = unit(features) @ unit(train_features).T  # (M, N)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    votes = np.zeros((len(features), int(train_labels.max()) + 1))
    # weights fall with rank, so a tie goes to the class of the nearer neighbours
    np.add.at(votes, (np.arange(len(features))[:, None], train_labels[nearest]), 1.0 + 1e-3 / np.arange(1, k + 1))
    return float((votes.argmax(axis=1) == labels).mean())


class KnnProbe(keras.callbacks.Callback):
    """Every ``every`` epochs: validation accuracy of a k-NN on the encoder's features of the labeled set."""

    def __init__(self, encode, labeled: ImageTable, validation: ImageTable, every: int):
        super().__init__()
        self.encode, self.labeled, self.validation, self.every = encode, labeled, validation, every

    def on_epoch_end(self, epoch, logs=None):
        if self.every and ((epoch + 1) % self.every == 0 or epoch + 1 == self.params["epochs"]):
            logs["probe_accuracy"] = self.accuracy()

    def accuracy(self) -> float:
        return knn_accuracy(self.encode(self.labeled.images), self.labeled.labels,
                            self.encode(self.validation.images), self.validation.labels)


def encode_with(encoder: keras.Model, batch_size: int = 500):
    """images (N, 32, 32, 3) 0..255 -> the encoder's features (N, C), in inference mode."""
    def encode(images: np.ndarray) -> np.ndarray:
        scaled = images.astype("float32") * PIXEL_SCALE + PIXEL_OFFSET
        return np.asarray(encoder.predict(scaled, batch_size=batch_size, verbose=0), dtype="float32")
    return encode


def run(config: PretrainConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    split = Path(inputs["split"])
    verify(split)
    labeled, validation = data.read_table(split, "labeled"), data.read_table(split, "validation")
    images = np.concatenate([labeled.images, data.read_table(split, "unlabeled").images]).astype("float32")
    log.info("pretraining a %s encoder (%s) on %d images", config.architecture.name, config.objective, len(images))
    keras.utils.set_random_seed(config.seed)
    model = OBJECTIVES[config.objective](config)
    model(images[:2])  # build every part, so that a checkpoint can restore into it
    steps = math.ceil(len(images) / config.batch_size)
    model.compile(optimizer=keras.optimizers.AdamW(cosine_schedule(config, steps), weight_decay=config.weight_decay,
                                                   clipnorm=config.clipnorm))
    probe = KnnProbe(encode_with(model.encoder), labeled, validation, config.probe_every)
    recorder = EpochRecorder(config.epochs)
    untrained_probe = probe.accuracy() if config.probe_every else None  # epoch 0: a random encoder
    batches = EpochBatches((images,), config.batch_size, config.seed)
    model.fit(feed(batches), epochs=config.epochs, shuffle=False, verbose=0,
              callbacks=epoch_callbacks(config.seed, recorder, datasets=(batches,), extra=(probe,)))
    history = recorder.history()
    metrics = summary(history, untrained_probe, len(images), model.encoder.count_params())
    with staged_output(output) as tmp:
        model.encoder.save(tmp / ENCODER_FILE)
        model.save_weights(tmp / OBJECTIVE_WEIGHTS)
        history.to_parquet(tmp / HISTORY_FILE, index=False)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / FIGURES_DIR).mkdir()
        model.figures(validation.images[:FIGURE_IMAGES], tmp / FIGURES_DIR)
        figures.pretraining_curves(history, tmp / FIGURES_DIR / "pretraining_curves.png")
        manifest = write_manifest(
            tmp, "pretrain", config.model_dump(mode="json"), {"split": parent_entry(split)}, started,
            extra={"reads": ["split/labeled.parquet", "split/unlabeled.parquet", "split/validation.parquet"],
                   "backend": keras.backend.backend()},
        )
    log.info("%s pretraining done in %.0f s: %s", config.objective, metrics["train_seconds"], metrics)
    return manifest


def summary(history, untrained_probe: float | None, images: int, parameters: int) -> dict[str, Any]:
    """First and last value of every logged metric, the probe before training, and the cost."""
    seconds = training_seconds(history)
    metrics: dict[str, Any] = {"epochs_run": len(history), "parameters": parameters, "train_seconds": round(seconds, 2),
                               "images_per_second": round(images * len(history) / seconds, 1)}
    for column in history.columns.drop(["epoch", "learning_rate", "epoch_seconds", "timestamp_ms"]):
        values = history[column].dropna()
        metrics[f"first_{column}"], metrics[f"final_{column}"] = float(values.iloc[0]), float(values.iloc[-1])
    if untrained_probe is not None:
        metrics["untrained_probe_accuracy"] = untrained_probe
    return metrics


STAGE = Stage(
    name="pretrain",
    summary="Pretrain the shared encoder without labels (autoencoder or SimCLR), with a k-NN probe per epoch.",
    config_type=PretrainConfig,
    inputs=("split",),
    run=run,
)

if __name__ == "__main__":
    sys.exit(main(STAGE))
