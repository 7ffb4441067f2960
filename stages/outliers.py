"""Outlier stage: score the unlabeled images against the labeled ones and drop the atypical (exercise 5).

A scorer of the registry (``SCORERS``) is fitted on the labeled images and returns a score per
image, positive inside its one-class boundary, which leaves a fraction ``nu`` of the labeled images
outside. The output is a split artifact whose unlabeled tables hold only the kept (inside) images,
so every later stage runs on it unchanged; the other tables are the input split's own files
(hard-linked where possible). Beside them: ``scores.parquet`` (id, score, kept) of every
unlabeled image, metrics, and figures (the most and least typical images, the score histogram
with its cut, the kept fraction per true class from the audit labels, for the report only).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from keras import ops
from pydantic import Field

from stages.lib import catalog, figures, losses
from stages.lib.catalog import OUTLIER_SCORE_SCHEMA, OUTLIER_SCORES_FILE, TABLES
from stages.lib.config import StrictModel
from stages.lib.errors import InvalidSetting
from stages.lib.models import INFERENCE_BATCH, ArchitectureConfig, build_encoder, build_scaling, encode_with, encoder_of
from stages.lib.registry import Registry
from stages.lib.stage import Stage, main
from stages.lib.training import EpochBatches, Schedule, cosine_schedule, fit_epochs

log = logging.getLogger(__name__)

SHOWN = 16  # images in each row of the typical / atypical figure
# fits on labeled images (N, 32, 32, 3), scores images (M, ...): training scores (N,), scores (M,) and
# the per-epoch history of a trained scorer (None for one fitted in one go)
Scorer = Callable[["OutlierConfig", np.ndarray, np.ndarray, Mapping[str, Path]],
                  tuple[np.ndarray, np.ndarray, pd.DataFrame | None]]
SCORERS: Registry[Scorer] = Registry("outlier scorer")
ScorerName = SCORERS.name_type()


class OneClassNNConfig(Schedule):
    """How the one-class network trains (on the labeled images, from fresh weights)."""

    architecture: ArchitectureConfig = ArchitectureConfig()
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(10, ge=1, description="epochs over the labeled images")
    learning_rate: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    warmup_epochs: int = Field(0, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


class OutlierConfig(StrictModel):
    """Which unlabeled images are atypical of the labeled ones (the seed's exercise 5).

    ``one_class_nn``: soft-boundary Deep SVDD on the shared encoder (its section's ``architecture``,
    fresh weights) trained on the labeled images: features are pulled into a sphere around their initial
    mean whose radius leaves a fraction ``nu`` of the labeled images outside. Its BatchNorm layers
    stay frozen at their initial identity, so the network has no bias term to collapse every image
    onto the centre with. ``one_class_svm``: scikit-learn's OneClassSVM (RBF) on the frozen
    encoder features of the input ``model``, the reference. In both, ``nu`` is the fraction of the
    labeled images outside the boundary, and an unlabeled image is kept when it falls inside.
    """

    scorer: ScorerName = Field("one_class_nn", description="key in SCORERS")
    nu: float = Field(0.1, gt=0, le=1, description="fraction of the labeled images left outside the boundary; the seed's "
                                                   "v = 0.9 kept 89.8%, so it counted the inside (see README)")
    one_class_nn: OneClassNNConfig = OneClassNNConfig()


def outside_fraction(scores: np.ndarray) -> float:
    """Fraction of images outside the boundary (score < 0)."""
    return float((np.asarray(scores) < 0).mean())


class SoftBoundarySVDD(keras.Model):
    """Soft-boundary Deep SVDD (Ruff et al., 2018): minimise R^2 + mean(max(0, |f(x) - c|^2 - R^2)) / nu.

    The centre c is the mean feature of the training images before training; R^2 is re-solved after
    every epoch as the (1 - nu) quantile of the squared distances, the optimum of the objective for
    fixed features, so a fraction nu of the training images lies outside."""

    def __init__(self, encoder: keras.Model, nu: float, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.encoder, self.nu = build_scaling(), encoder, nu
        width = encoder.output_shape[-1]
        self.center = self.add_weight(shape=(width,), initializer="zeros", trainable=False, name="center")
        self.radius_squared = self.add_weight(shape=(), initializer="zeros", trainable=False, name="radius_squared")
        self.outside = keras.metrics.Mean(name="outside_fraction")  # of the batch, against the radius of the last epoch

    def call(self, images, training=False):
        features = self.encoder(self.scale(images), training=training)
        return ops.sum(ops.square(features - self.center), axis=-1)  # squared distance (N,)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        beyond = ops.relu(y_pred - self.radius_squared)
        self.outside.update_state(ops.mean(ops.cast(beyond > 0, "float32")))
        return losses.with_regularization(self.radius_squared + ops.mean(beyond) / self.nu, self.losses)

    def solve_radius(self, distances: np.ndarray) -> None:
        self.radius_squared.assign(float(np.quantile(distances, 1 - self.nu)))


class RadiusUpdate(keras.callbacks.Callback):
    """After each epoch, R^2 from the training images' distances (``SoftBoundarySVDD.solve_radius``)."""

    def __init__(self, distances: Callable[[], np.ndarray]):
        super().__init__()
        self.distances = distances

    def on_epoch_end(self, epoch, logs=None):
        self.model.solve_radius(self.distances())
        logs["radius_squared"] = float(ops.convert_to_numpy(self.model.radius_squared))


def one_class_encoder(config: OneClassNNConfig, image_shape: tuple[int, ...]) -> keras.Model:
    """The shared encoder with its BatchNorm layers frozen at their initial identity (Deep SVDD needs
    a network without bias terms; a trainable BatchNorm offset would let it map every image to c)."""
    encoder = build_encoder(config.architecture, image_shape, seed=config.seed)
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode too: moving mean 0, variance 1, no offset
    return encoder


@SCORERS.register("one_class_nn")
def one_class_nn(config: OutlierConfig, labeled: np.ndarray, images: np.ndarray,
                 inputs: Mapping[str, Path]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Soft-boundary Deep SVDD on the shared encoder; score = R^2 - squared distance to the centre."""
    network = config.one_class_nn
    keras.utils.set_random_seed(network.seed)
    model = SoftBoundarySVDD(one_class_encoder(network, labeled.shape[1:]), config.nu)

    def distances(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(batch.astype("float32"), batch_size=INFERENCE_BATCH, verbose=0))

    model.center.assign(encode_with(model.encoder)(labeled).mean(axis=0))
    steps = math.ceil(len(labeled) / network.batch_size)
    model.compile(optimizer=keras.optimizers.AdamW(cosine_schedule(network, steps), weight_decay=network.weight_decay))
    batches = EpochBatches((labeled.astype("float32"),), network.batch_size, network.seed)
    history = fit_epochs(model, batches, network.epochs, network.seed, extra=(RadiusUpdate(lambda: distances(labeled)),)).history
    radius_squared = float(ops.convert_to_numpy(model.radius_squared))
    if radius_squared <= 1e-10:
        raise InvalidSetting("the one-class network collapsed: every labeled image sits on the centre (R^2 = "
                           f"{radius_squared:.2e}). Lower weight_decay, learning_rate or epochs")
    return radius_squared - distances(labeled), radius_squared - distances(images), history


@SCORERS.register("one_class_svm")
def one_class_svm(config: OutlierConfig, labeled: np.ndarray, images: np.ndarray,
                  inputs: Mapping[str, Path]) -> tuple[np.ndarray, np.ndarray, None]:
    """scikit-learn's OneClassSVM (RBF, gamma 'scale') on the input model's standardised encoder features."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    if "model" not in inputs:
        raise InvalidSetting("outliers.scorer one_class_svm scores frozen features of a trained classifier: pass "
                         "--input model=DIR (a baseline artifact), or set outliers.scorer=one_class_nn")
    classifier = catalog.load_classifier(inputs["model"], catalog.read_dataset_info(inputs["split"]))
    encode = encode_with(encoder_of(classifier))
    svm = make_pipeline(StandardScaler(), OneClassSVM(nu=config.nu, kernel="rbf", gamma="scale"))
    svm.fit(encode(labeled))
    return svm.decision_function(encode(labeled)), svm.decision_function(encode(images)), None


def run(config: OutlierConfig, inputs: Mapping[str, Path], output: Path) -> None:
    split = inputs["split"]
    labeled, unlabeled = catalog.read_table(split, "labeled"), catalog.read_table(split, "unlabeled")
    audit = catalog.read_table(split, "unlabeled_audit")
    log.info("%s (nu %.2f): fitting on %d labeled images, scoring %d unlabeled", config.scorer, config.nu,
             len(labeled), len(unlabeled))
    train_scores, scores, history = SCORERS[config.scorer](config, labeled.images, unlabeled.images, inputs)
    kept = scores >= 0
    if not kept.any():
        raise InvalidSetting(f"outliers: no unlabeled image falls inside the boundary (highest score {scores.max():.3g}); "
                         f"lower outliers.nu (now {config.nu})")
    metrics = {"nu": config.nu, "train_outside_fraction": outside_fraction(train_scores),
               "kept_fraction": float(kept.mean()), "kept": int(kept.sum()), "dropped": int((~kept).sum())}
    link_tables(split, output, ("labeled", "validation", "test"))
    shutil.copy2(split / catalog.DATASET_FILE, output / catalog.DATASET_FILE)
    data = catalog.read_dataset_info(split)
    catalog.write_table(output, "unlabeled", data, unlabeled.ids[kept], unlabeled.images[kept])
    audit_kept = np.isin(audit.ids, unlabeled.ids[kept])  # the source may have audit labels for some images only
    catalog.write_table(output, "unlabeled_audit", data, audit.ids[audit_kept], labels=audit.labels[audit_kept])
    table = pd.DataFrame({"id": unlabeled.ids, "score": scores.astype("float32"), "kept": kept})
    pq.write_table(pa.Table.from_pandas(table, schema=OUTLIER_SCORE_SCHEMA, preserve_index=False),
                   output / OUTLIER_SCORES_FILE, compression="snappy")
    catalog.write_metrics(output, metrics)
    if history is not None:  # per epoch: loss, outside_fraction of the batches, radius_squared
        history.to_parquet(output / catalog.HISTORY_FILE, index=False)
    write_figures(catalog.figures_dir(output), unlabeled.images, scores, audit_kept, audit.labels)
    log.info("outliers: kept %d of %d unlabeled images (%.1f%%); %.1f%% of the labeled ones fall outside", metrics["kept"],
             len(unlabeled), 100 * metrics["kept_fraction"], 100 * metrics["train_outside_fraction"])


def link_tables(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """The source artifact's tables in ``target``: hard links (same bytes, no copy), else copies."""
    for name in names:
        filename = TABLES[name][0]
        try:
            os.link(source / filename, target / filename)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(source / filename, target / filename)


def write_figures(directory: Path, images: np.ndarray, scores: np.ndarray, audit_kept: np.ndarray,
                  audit_labels: np.ndarray) -> None:
    """``audit_kept`` (M,): whether each image with an audit label (M,) was kept."""
    order = np.argsort(-scores)
    figures.image_pairs(images[order[:SHOWN]], images[order[::-1][:SHOWN]], ("most typical", "least typical"),
                        directory / "typical_and_atypical.png")
    figures.score_histogram(scores, directory / "score_histogram.png")
    if len(audit_labels):
        figures.kept_per_class(audit_labels, audit_kept, directory / "kept_per_class.png")


STAGE = Stage("outliers", OutlierConfig, run, inputs=("split",), optional_inputs=("model",),
              summary="Score unlabeled images with a one-class model fitted on the labeled ones; a split without the atypical.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
