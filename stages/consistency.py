"""Consistency stage: FixMatch-family semi-supervised training of the classifier (beyond the seed).

Each step takes a labeled batch and ``unlabeled_ratio`` times as many images of the whole
training set (labeled and unlabeled, as in USB). One forward pass in training mode gives the
predictions on the labeled images, on a weak view of the others (the classifier's own
augmentation: flip and shift) and on a strong view (RandAugment and Cutout on top). With
``concatenate_views`` off, the weak view has a pass of its own outside the gradient, and
``strong_fraction`` can then give strong views to the images most likely to have a target only,
sparing the passes that the mask would zero (the CPU's case: 16-28% of images pass at 0.6), and
``target_view`` "clean" can take the targets from an inference-mode pass over the images as they
are (no dropout, BatchNorm's moving statistics: the self-training stage's teacher). The method
(``stages.ssl_methods``) turns the target predictions into pseudo-labels and a mask; the loss is
the labeled cross-entropy plus ``unlabeled_weight`` times the masked cross-entropy of the strong
view against those pseudo-labels. The optimizer keeps an EMA of the weights; validation, the kept
epoch and the output model use the EMA weights. The output is a plain classifier, evaluated and
served like the baseline's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import pandas as pd
from keras import ops
from pydantic import Field, model_validator

from stages.lib import catalog, losses
from stages.lib.artifacts import ArtifactError
from stages.lib.catalog import DataError, DatasetInfo, ImageTable
from stages.lib.config import StrictModel
from stages.lib.errors import InvalidSetting
from stages.lib.models import INFERENCE_BATCH, StrongAugmentConfig, build_strong_augmentation
from stages.lib.ssl_methods import METHODS, FixMatchConfig, FreeMatchConfig, MethodName
from stages.lib.stage import Stage, main
from stages.lib.training import (
    Budget,
    TrainConfig,
    TwoStreamBatches,
    build_classifier,
    build_optimizer,
    fit_epochs,
    kept_model_summary,
    learning_rate,
    one_hot,
    training_seconds,
    validation_metrics,
)

log = logging.getLogger(__name__)


class ConsistencyConfig(StrictModel):
    """Consistency SSL (FixMatch family): per step a labeled batch and ``unlabeled_ratio`` times as
    many unlabeled images; the prediction on a weak view, where the method trusts it, is the target
    of the prediction on a strong view. Evaluated and kept with the optimizer's EMA weights.

    ``classifier`` gives the network, the weak augmentation, the labeled batch size and the
    optimizer; an epoch is ``steps_per_epoch`` steps. ``warm_start`` continues from a trained
    classifier of that network (the flows pass the baseline's) instead of fresh weights.
    """

    method: MethodName = Field("fixmatch", description="key in METHODS (stages/lib/ssl_methods.py); its section below "
                                                        "holds its settings")
    fixmatch: FixMatchConfig = FixMatchConfig()
    freematch: FreeMatchConfig = FreeMatchConfig()
    classifier: TrainConfig = TrainConfig()
    warm_start: bool = Field(False, description="start from the weights of the input model instead of fresh ones")
    steps_per_epoch: int = Field(256, ge=1, description="training steps between two validations")
    unlabeled_ratio: int = Field(7, ge=1, description="mu: unlabeled images per labeled image in a step")
    unlabeled_weight: float = Field(1.0, ge=0, description="lambda_u: weight of the unlabeled loss")
    ema_momentum: float = Field(0.999, gt=0, lt=1, description="EMA of the weights that are evaluated and kept")
    concatenate_views: bool = Field(
        True, description="one training-mode pass over the labeled, weak and strong views, so BatchNorm normalises them "
                          "together (USB's use_cat); false: the weak view in a pass of its own outside the gradient, "
                          "which spares its backward pass")
    target_view: Literal["weak", "clean"] = Field(
        "weak", description="what the targets are predicted from. weak: the weak view (the classifier's flip and shift) "
                            "in a training-mode pass, FixMatch as published; clean: the images as they are, in an "
                            "inference-mode pass (no dropout, BatchNorm's moving statistics), as self-training labels "
                            "the unlabeled set, so the classifier can keep its dropout without blurring the targets. "
                            "Needs concatenate_views false")
    strong_fraction: float = Field(
        1.0, gt=0, le=1, description="share of each unlabeled batch given a strong view: the images with a target "
                                     "first, the surest first. 1 = all (FixMatch as published); below the mask rate, "
                                     "targets go unused (the capped_rate metric). Needs concatenate_views false")
    strong: StrongAugmentConfig = StrongAugmentConfig()

    @model_validator(mode="after")
    def _strong_share_after_the_weak_pass(self) -> ConsistencyConfig:
        if self.strong_fraction < 1 and self.concatenate_views:
            raise ValueError(f"strong_fraction {self.strong_fraction} picks the strong views from the weak view's "
                             "predictions, which a shared pass gives too late: set concatenate_views to false, "
                             "or strong_fraction to 1")
        if self.target_view == "clean" and self.concatenate_views:
            raise ValueError("target_view clean predicts the targets in an inference-mode pass of their own, which a "
                             "shared training-mode pass cannot give: set concatenate_views to false, or target_view to weak")
        return self


class ConsistencyModel(keras.Model):
    """The classifier, a strong augmentation and an SSL method, trained on the consistency loss.

    Inputs are (labeled images, unlabeled images); in inference only the labeled ones are used, so
    validation measures the classifier alone."""

    def __init__(self, classifier: keras.Model, config: ConsistencyConfig, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.strong = build_strong_augmentation(config.strong, config.classifier.seed + 100)
        self.method = METHODS[config.method](getattr(config, config.method), name=config.method)
        self.unlabeled_weight = config.unlabeled_weight
        self.concatenate_views = config.concatenate_views
        self.weak_targets = config.target_view == "weak"  # else an inference-mode pass over the clean images
        unlabeled_batch = config.classifier.batch_size * config.unlabeled_ratio
        # strong views a step (a static count, for top_k); None: every unlabeled image's
        self.strong_views = max(1, round(config.strong_fraction * unlabeled_batch)) if config.strong_fraction < 1 else None
        self.label_smoothing = config.classifier.label_smoothing
        self.supervised_loss = keras.metrics.Mean(name="supervised_loss")
        self.unsupervised_loss = keras.metrics.Mean(name="unsupervised_loss")
        self.mask_rate = keras.metrics.Mean(name="mask_rate")  # fraction of unlabeled images with a target
        self.capped_rate = keras.metrics.Mean(name="capped_rate")  # ... with a target but no strong view (strong_fraction)
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")

    def build(self, input_shape):
        """Every part with state: a checkpoint restores into them before the first step."""
        images_shape = input_shape[1]
        if self.strong.layers:
            self.strong.build(images_shape)
        self.method.build((None, self.classifier.output_shape[-1]))
        self.built = True

    def call(self, inputs, training=False):
        labeled, unlabeled = (ops.cast(images, "float32") for images in inputs)  # uint8 from TwoStreamBatches
        if not training:
            return {"labeled": self.classifier(labeled, training=False)}
        n_labeled, n_unlabeled = ops.shape(labeled)[0], ops.shape(unlabeled)[0]
        if self.concatenate_views:  # one pass: BatchNorm sees every view
            probabilities = self.classifier(ops.concatenate([labeled, unlabeled, self.strong_view(unlabeled)]), training=True)
            weak = ops.stop_gradient(probabilities[n_labeled:n_labeled + n_unlabeled])
            pseudo_labels, mask = self.method(weak, training=True)
            return {"labeled": probabilities[:n_labeled], "strong": probabilities[n_labeled + n_unlabeled:],
                    "pseudo_labels": pseudo_labels, "mask": mask, "passing": mask}
        # the target pass feeds only the stop_gradient, so no backward pass is run for it
        targets = ops.stop_gradient(self.classifier(unlabeled, training=self.weak_targets))
        pseudo_labels, passing = self.method(targets, training=True)
        mask = passing
        if self.strong_views is not None:  # the strong view only where a target is likely: targets first, surest first
            chosen = ops.top_k(passing + ops.max(targets, axis=-1), self.strong_views)[1]
            unlabeled, pseudo_labels, mask = (ops.take(tensor, chosen, axis=0) for tensor in (unlabeled, pseudo_labels, passing))
        probabilities = self.classifier(ops.concatenate([labeled, self.strong_view(unlabeled)]), training=True)
        return {"labeled": probabilities[:n_labeled], "strong": probabilities[n_labeled:], "pseudo_labels": pseudo_labels,
                "mask": mask, "passing": passing}

    def strong_view(self, images):
        return self.strong(images, training=True) if self.strong.layers else images

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        supervised = ops.mean(keras.losses.categorical_crossentropy(y, y_pred["labeled"], label_smoothing=self.label_smoothing))
        self.supervised_loss.update_state(supervised)
        self.accuracy.update_state(y, y_pred["labeled"])
        if "strong" not in y_pred:
            return supervised
        per_image = keras.losses.sparse_categorical_crossentropy(y_pred["pseudo_labels"], y_pred["strong"])
        # "mask" holds the targets given a strong view, "passing" every unlabeled image's: FixMatch averages over all
        unlabeled = ops.cast(ops.shape(y_pred["passing"])[0], "float32")
        unsupervised = ops.sum(y_pred["mask"] * per_image) / unlabeled
        self.unsupervised_loss.update_state(unsupervised)
        self.mask_rate.update_state(ops.mean(y_pred["passing"]))
        self.capped_rate.update_state((ops.sum(y_pred["passing"]) - ops.sum(y_pred["mask"])) / unlabeled)
        return losses.with_regularization(supervised + self.unlabeled_weight * unsupervised, self.losses)


def train(config: ConsistencyConfig, data: DatasetInfo, labeled: ImageTable, validation: ImageTable, images: np.ndarray,
          start: keras.Model | None = None):
    """Returns the classifier holding the EMA weights of the best validation epoch, the per-epoch
    history and that epoch. ``start``: a trained classifier whose weights it begins with; it is
    epoch 0, kept when no epoch beats it on validation (as self-training keeps its iteration 0)."""
    schedule = config.classifier
    keras.utils.set_random_seed(schedule.seed)
    classifier = build_classifier(schedule, data)
    if start is not None:
        try:
            classifier.set_weights(start.get_weights())
        except ValueError as error:
            raise ArtifactError(f"the warm-start model is not the network consistency.classifier.architecture builds "
                                f"({error}): start from a model of that architecture, or set the architecture to the "
                                "model's") from None
    model = ConsistencyModel(classifier, config)
    model.build(((None, *data.image_shape),) * 2)
    if start is not None:  # before fit: a resumed run's checkpoint then restores the state it reached
        model.method.start_from(weak_view_probabilities(classifier, images, schedule.seed))
    batches = TwoStreamBatches(labeled, data.num_classes, images, schedule.batch_size, schedule.batch_size * config.unlabeled_ratio,
                               schedule.seed, steps=config.steps_per_epoch)
    model.compile(optimizer=build_optimizer(schedule, learning_rate(schedule, config.steps_per_epoch), use_ema=True,
                                            ema_momentum=config.ema_momentum))
    # the EMA swap's epoch end puts the EMA weights in the model before the selector sees them: those are kept
    fitted = fit_epochs(model, batches, schedule.epochs, schedule.seed,
                        validation_data=((validation.images,) * 2, one_hot(validation.labels, data.num_classes)),
                        validation_batch_size=INFERENCE_BATCH, select_on="val_accuracy", patience=schedule.early_stopping_patience,
                        budget=Budget.of(schedule),
                        extra=(keras.callbacks.SwapEMAWeights(swap_on_epoch=True),))
    if start is not None and validation_metrics(start, validation, batch_size=INFERENCE_BATCH)["val_accuracy"] >= fitted.best:
        classifier.set_weights(start.get_weights())
        return classifier, fitted.history, 0
    return classifier, fitted.history, fitted.best_epoch


def weak_view_probabilities(classifier: keras.Model, images: np.ndarray, seed: int, sample: int = 5000) -> np.ndarray:
    """The classifier's probabilities (sample, C) for a seeded sample of ``images``, un-augmented: the
    weak view is a flip and a small shift of them, and the standard error of a mean of values in
    [0, 1] over 5,000 images is at most 0.007."""
    rows = np.random.default_rng(seed).choice(len(images), min(sample, len(images)), replace=False)
    return classifier.predict(images[rows].astype("float32"), batch_size=INFERENCE_BATCH, verbose=0)


def run(config: ConsistencyConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    split = inputs["split"]
    data = catalog.read_dataset_info(split)
    labeled, validation = catalog.read_table(split, "labeled"), catalog.read_table(split, "validation")
    unlabeled = catalog.read_table(split, "unlabeled")
    if not len(unlabeled):
        raise DataError(f"{catalog.table_path(split, 'unlabeled')} has no images, and {config.method} learns from "
                        "unlabeled ones: add some to the data source, or train the supervised baseline alone "
                        "(ssl-pipeline run --supervised-only)")
    images = np.concatenate([labeled.images, unlabeled.images])
    log.info("%s on %s: %d labeled, %d images for the unlabeled loss, %d steps per epoch", config.method,
             config.classifier.architecture.name, len(labeled), len(images), config.steps_per_epoch)
    start = warm_start_model(config, data, inputs)
    classifier, history, best_epoch = train(config, data, labeled, validation, images, start)
    metrics = {**kept_model_summary(classifier, validation, history, best_epoch), **throughput(config, history)}
    log.info("%s: val accuracy %.4f at epoch %d of %d", config.method, metrics["best_val_accuracy"], best_epoch, len(history))
    return catalog.save_classifier(output, classifier, history, metrics, data)


def warm_start_model(config: ConsistencyConfig, data: DatasetInfo, inputs: Mapping[str, Path]) -> keras.Model | None:
    """The input classifier to start from when ``warm_start`` asks for one."""
    if not config.warm_start:
        if "model" in inputs:
            raise InvalidSetting("consistency got a model input but warm_start is false: set consistency.warm_start=true "
                             "to start from it, or drop the input")
        return None
    if "model" not in inputs:
        raise InvalidSetting("consistency.warm_start is true but no model input was given: pass --input model=DIR "
                         "(a baseline artifact), or set consistency.warm_start=false")
    return catalog.load_classifier(inputs["model"], data)


def throughput(config: ConsistencyConfig, history: pd.DataFrame) -> dict[str, float]:
    """Steps run and training images per second (a labeled image counts once, an unlabeled one once
    though it is seen in two views); epoch times include validation."""
    steps = len(history) * config.steps_per_epoch
    images = steps * config.classifier.batch_size * (1 + config.unlabeled_ratio)
    seconds = training_seconds(history)
    return {"steps": steps, "steps_per_second": round(steps / seconds, 2), "images_per_second": round(images / seconds, 1)}


STAGE = Stage("consistency", ConsistencyConfig, run, inputs=("split",), optional_inputs=("model",),
              summary="FixMatch-family SSL: labeled loss + masked strong-view loss against weak-view pseudo-labels, EMA weights.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
