"""Pretrain stage: the shared encoder trained without labels by a registered objective.

Trains on labeled + unlabeled training images (labels unused). Evidence that it learned, per
epoch: the objective's own metrics (reconstruction loss and PSNR; contrastive loss and
positive-pair accuracy) and, every ``probe_every`` epochs, a k-NN probe: validation accuracy of
the nearest labeled images in the encoder's feature space. Any NaN or infinity stops it with an
error. Writes the encoder (``encoder.keras``), which the fine-tune stage puts under a classifier.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
from pydantic import Field

from stages.lib import catalog, figures
from stages.lib.catalog import ImageTable
from stages.lib.models import ArchitectureConfig, Precision, encode_with
from stages.lib.objectives import ObjectiveName, ObjectiveSetup, build_objective
from stages.lib.objectives.autoencoder import AutoencoderConfig
from stages.lib.objectives.simclr import SimCLRConfig
from stages.lib.stage import Stage, main
from stages.lib.training import EpochBatches, Schedule, cosine_schedule, fit_epochs, training_seconds

log = logging.getLogger(__name__)

FIGURE_IMAGES = 16  # validation images drawn in the objective's figures
PROBE_NEIGHBOURS = 20


class PretrainConfig(Schedule):
    """Unsupervised pretraining of the shared encoder on labeled + unlabeled images, by the objective
    named in ``objective``, with the settings of its own section."""

    objective: ObjectiveName = Field("autoencoder", description="key in OBJECTIVES (stages/lib/objectives); its "
                                                                "section below holds its settings")
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    simclr: SimCLRConfig = SimCLRConfig()
    architecture: ArchitectureConfig = ArchitectureConfig()
    batch_size: int = Field(512, ge=2, description="images per step (simclr: 2x as many views)")
    epochs: int = Field(15, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    warmup_epochs: int = Field(0, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    clipnorm: float | None = Field(1.0, gt=0, description="gradient norm clip; None = no clipping")
    probe_every: int = Field(1, ge=0, description="k-NN probe of validation accuracy every N epochs; 0 = never")
    precision: Precision = "float32"
    seed: int = 0

    def objective_setup(self, image_shape: tuple[int, int, int]) -> ObjectiveSetup:
        return ObjectiveSetup(name=self.objective, settings=getattr(self, self.objective).model_dump(mode="json"),
                              architecture=self.architecture, image_shape=image_shape, precision=self.precision,
                              seed=self.seed)


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


def run(config: PretrainConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    split = inputs["split"]
    labeled, validation = catalog.read_table(split, "labeled"), catalog.read_table(split, "validation")
    images = np.concatenate([labeled.images, catalog.read_table(split, "unlabeled").images]).astype("float32")
    log.info("pretraining a %s encoder (%s) on %d images", config.architecture.name, config.objective, len(images))
    keras.utils.set_random_seed(config.seed)
    setup = config.objective_setup(catalog.read_dataset_info(split).image_shape)
    model = build_objective(setup)
    model(images[:2])  # build every part, so that a checkpoint can restore into it
    steps = math.ceil(len(images) / config.batch_size)
    model.compile(optimizer=keras.optimizers.AdamW(cosine_schedule(config, steps), weight_decay=config.weight_decay,
                                                   clipnorm=config.clipnorm))
    probe = KnnProbe(encode_with(model.encoder), labeled, validation, config.probe_every)
    untrained_probe = probe.accuracy() if config.probe_every else None  # epoch 0: a random encoder
    history = fit_epochs(model, EpochBatches((images,), config.batch_size, config.seed), config.epochs, config.seed,
                         extra=(probe,)).history
    metrics = summary(history, untrained_probe, len(images), model.encoder.count_params())
    model.encoder.save(output / catalog.ENCODER_FILE)
    model.save_weights(output / catalog.OBJECTIVE_WEIGHTS)
    (output / catalog.OBJECTIVE_SETUP_FILE).write_text(setup.model_dump_json(indent=2) + "\n")
    history.to_parquet(output / catalog.HISTORY_FILE, index=False)
    catalog.write_metrics(output, metrics)
    drawn = catalog.figures_dir(output)
    model.figures(validation.images[:FIGURE_IMAGES], drawn)
    figures.pretraining_curves(history, drawn / "pretraining_curves.png")
    log.info("%s pretraining done in %.0f s: %s", config.objective, metrics["train_seconds"], metrics)
    return {"backend": keras.backend.backend()}


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


STAGE = Stage("pretrain", PretrainConfig, run, inputs=("split",),
              summary="Pretrain the shared encoder without labels (autoencoder or SimCLR), with a k-NN probe per epoch.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
