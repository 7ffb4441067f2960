"""Fine-tune stage: a classifier on a pretrained encoder, two-step or joint (the seed's exercises 3-4).

The classifier is the baseline's (``build_classifier``) with the pretrained encoder's weights in
its encoder, so the output ``model.keras`` is evaluated and served like any baseline model.
Two-step trains the head on the frozen encoder, then optionally everything at a lower rate.
Joint adds the pretraining objective on batches of all training images to the classification
loss on labeled batches, weighted ``(1 - a)`` and ``(1 + a)``; its classifier is validated and
kept with BatchNorm statistics re-estimated on the labeled images.
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
from pydantic import Field

from stages.lib import catalog, losses
from stages.lib.artifacts import ArtifactError, read_manifest, record_read
from stages.lib.catalog import ENCODER_FILE, OBJECTIVE_SETUP_FILE, OBJECTIVE_WEIGHTS, DatasetInfo, ImageTable
from stages.lib.config import StrictModel
from stages.lib.models import encoder_of
from stages.lib.objectives import ObjectiveSetup, build_objective
from stages.lib.stage import Stage, main
from stages.lib.training import (
    BatchNormRecalibration,
    TrainConfig,
    TwoStreamBatches,
    build_classifier,
    build_optimizer,
    cosine_schedule,
    feed,
    fit_classifier,
    fit_epochs,
    kept_model_summary,
)

log = logging.getLogger(__name__)


class TwoStepConfig(StrictModel):
    """The dense head on the frozen encoder (``classifier``'s schedule), then optionally every layer."""

    unfreeze_epochs: int = Field(0, ge=0, description="epochs training every layer after the head; 0 = none")
    unfreeze_learning_rate: float = Field(1e-4, gt=0, description="peak learning rate once unfrozen")


class JointConfig(StrictModel):
    """Classification on labeled batches plus the encoder's pretraining objective on batches of all
    images, ``(1 - weight) * classification + (1 + weight) * unsupervised``."""

    weight: float = Field(0.5, ge=-1, le=1, description="a in the weighting above; the seed used 0.5")
    unlabeled_batch_size: int = Field(256, ge=2, description="images per step for the unsupervised term")
    from_scratch: bool = Field(False, description="ignore the pretrained weights")
    recalibrate_batchnorm: bool = Field(
        True, description="before each validation, re-estimate BatchNorm's statistics on the labeled images "
                          "(the moving ones also average the objective's augmented views)")


class EncoderFineTuneConfig(StrictModel):
    """A classifier on a pretrained encoder, trained as ``mode`` says with the settings of its section."""

    mode: Literal["two_step", "joint"] = "two_step"
    classifier: TrainConfig = TrainConfig()
    two_step: TwoStepConfig = TwoStepConfig()
    joint: JointConfig = JointConfig()


ENCODER_FIELDS = ("name", "filters", "convs_per_block")  # what must agree for the weights to fit


def pretrained_setup(encoder_artifact: Path, classifier: TrainConfig) -> ObjectiveSetup:
    """What the pretrain artifact's objective was built from, checked against the classifier it goes under."""
    manifest = read_manifest(encoder_artifact)
    if manifest["stage"] != "pretrain":
        raise ArtifactError(f"{encoder_artifact} holds a {manifest['stage']} artifact; the encoder input must be "
                            "the pretrain stage's output")
    pretrained = ObjectiveSetup.model_validate_json((encoder_artifact / OBJECTIVE_SETUP_FILE).read_text())
    for field in ENCODER_FIELDS:
        mine, theirs = getattr(classifier.architecture, field), getattr(pretrained.architecture, field)
        if mine != theirs:
            raise ArtifactError(f"classifier.architecture.{field} is {mine} but the encoder in {encoder_artifact} "
                                f"has {theirs}: fine-tune with the architecture it was pretrained with")
    return pretrained


def load_encoder(encoder_artifact: Path, data: DatasetInfo) -> keras.Model:
    """The pretrained encoder, checked against the shape of the images."""
    record_read(encoder_artifact / ENCODER_FILE)
    encoder = keras.saving.load_model(encoder_artifact / ENCODER_FILE)
    if tuple(encoder.input_shape[1:]) != data.image_shape:
        raise ArtifactError(f"{encoder_artifact / ENCODER_FILE} takes inputs of shape {encoder.input_shape[1:]}, but "
                            f"the images are {data.image_shape}: pretrain an encoder on this split")
    return encoder


def two_step(config: EncoderFineTuneConfig, data: DatasetInfo, pretrained: keras.Model, labeled: ImageTable,
             validation: ImageTable):
    """Head on the frozen encoder, then (``unfreeze_epochs``) everything.

    Returns the classifier, the per-epoch history of both phases and the kept epoch (counted
    across phases: the best of the last phase)."""
    keras.utils.set_random_seed(config.classifier.seed)
    classifier = build_classifier(config.classifier, data)
    encoder = encoder_of(classifier)
    encoder.set_weights(pretrained.get_weights())
    encoder.trainable = False  # BatchNorm runs in inference mode too: the pretrained statistics stay
    head = fit_classifier(classifier, config.classifier, labeled, validation)
    if not config.two_step.unfreeze_epochs:
        return classifier, head.history.assign(phase="head"), head.best_epoch
    encoder.trainable = True
    unfrozen = config.classifier.model_copy(update={
        "epochs": config.two_step.unfreeze_epochs, "learning_rate": config.two_step.unfreeze_learning_rate, "warmup_epochs": 0})
    tuned = fit_classifier(classifier, unfrozen, labeled, validation)
    history = pd.concat([head.history.assign(phase="head"), tuned.history.assign(phase="unfrozen")], ignore_index=True)
    return classifier, history, len(head.history) + tuned.best_epoch


class JointModel(keras.Model):
    """The classifier and a pretraining objective sharing one encoder, trained on the joint loss."""

    def __init__(self, classifier: keras.Model, objective: keras.Model, config: EncoderFineTuneConfig, **kwargs):
        super().__init__(**kwargs)
        self.classifier, self.objective = classifier, objective
        self.joint_weight = config.joint.weight
        self.label_smoothing = config.classifier.label_smoothing
        self.classification_loss = keras.metrics.Mean(name="classification_loss")
        self.accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        # Keras does not collect the metrics of a nested Model: the objective's evidence is added here
        return super().metrics + self.objective.metrics

    def call(self, inputs, training=False):
        labeled, images = (keras.ops.cast(batch, "float32") for batch in inputs)  # uint8 from TwoStreamBatches
        return {"probabilities": self.classifier(labeled, training=training),
                "unsupervised": self.objective(images, training=training)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        probabilities = y_pred["probabilities"]
        classification = keras.ops.mean(keras.losses.categorical_crossentropy(
            y, probabilities, label_smoothing=self.label_smoothing))
        self.classification_loss.update_state(classification)
        self.accuracy.update_state(y, probabilities)
        unsupervised = self.objective.unsupervised_loss(y_pred["unsupervised"])
        return losses.with_regularization(losses.joint_loss(classification, unsupervised, self.joint_weight), self.losses)


def joint(config: EncoderFineTuneConfig, data: DatasetInfo, encoder_artifact: Path, pretrained: ObjectiveSetup,
          labeled: ImageTable, validation: ImageTable, images: np.ndarray):
    keras.utils.set_random_seed(config.classifier.seed)
    classifier = build_classifier(config.classifier, data)
    objective = build_objective(pretrained, encoder=encoder_of(classifier))
    objective(images[:2].astype("float32"))  # build it, so the pretrained weights have somewhere to go
    if not config.joint.from_scratch:
        objective.load_weights(encoder_artifact / OBJECTIVE_WEIGHTS)
    model = JointModel(classifier, objective, config)
    model((images[:2].astype("float32"),) * 2)  # built, so that a checkpoint can restore into it
    schedule = config.classifier
    unlabeled_batch = config.joint.unlabeled_batch_size
    train = TwoStreamBatches(labeled, data.num_classes, images, schedule.batch_size, unlabeled_batch, schedule.seed)
    # validation: classification on the validation images, the objective on those same images
    checks = TwoStreamBatches(validation, data.num_classes, validation.images, len(validation), min(len(validation), unlabeled_batch),
                              schedule.seed + 1)
    model.compile(optimizer=build_optimizer(schedule, cosine_schedule(schedule, len(train))))
    statistics = BatchNormRecalibration(classifier, labeled.images, schedule.batch_size, schedule.seed)
    fitted = fit_epochs(model, train, schedule.epochs, schedule.seed, validation_data=feed(checks), select_on="val_accuracy",
                        patience=schedule.early_stopping_patience,
                        extra=(statistics,) if config.joint.recalibrate_batchnorm else ())
    return classifier, fitted.history.assign(phase="joint"), fitted.best_epoch


def run(config: EncoderFineTuneConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    split, encoder_artifact = inputs["split"], inputs["encoder"]
    pretrained = pretrained_setup(encoder_artifact, config.classifier)
    data = catalog.read_dataset_info(split)
    encoder = load_encoder(encoder_artifact, data)
    labeled, validation = catalog.read_table(split, "labeled"), catalog.read_table(split, "validation")
    if config.mode == "two_step":
        classifier, history, best_epoch = two_step(config, data, encoder, labeled, validation)
    else:
        images = np.concatenate([labeled.images, catalog.read_table(split, "unlabeled").images])
        classifier, history, best_epoch = joint(config, data, encoder_artifact, pretrained, labeled, validation, images)
    history["epoch"] = np.arange(1, len(history) + 1)  # counted across phases
    metrics = kept_model_summary(classifier, validation, history, best_epoch)
    log.info("%s %s fine-tuning: val accuracy %.4f", pretrained.name, config.mode, metrics["best_val_accuracy"])
    return catalog.save_classifier(output, classifier, history, metrics, data)


STAGE = Stage("fine_tune", EncoderFineTuneConfig, run, inputs=("split", "encoder"),
              summary="Classifier on a pretrained encoder: two-step (frozen, then unfrozen) or joint with the pretraining loss.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
