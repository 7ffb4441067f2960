"""Fine-tune stage: a classifier on a pretrained encoder, two-step or joint (the seed's exercises 3-4).

The classifier is the baseline's (``build_classifier``) with the pretrained encoder's weights in
its encoder, so the output ``model.keras`` is evaluated and served like any baseline model.
Two-step trains the head on the frozen encoder, then optionally everything at a lower rate.
Joint adds the pretraining objective on batches of all training images to the classification
loss on labeled batches, weighted ``(1 - a)`` and ``(1 + a)``; its classifier is validated and
kept with BatchNorm statistics re-estimated on the labeled images.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from stages import data, losses
from stages.artifacts import ArtifactError, parent_entry, read_manifest, staged_output, verify, write_manifest
from stages.baseline import save_classifier
from stages.config import EncoderFineTuneConfig, PretrainConfig, TrainConfig
from stages.data import IMAGE_SHAPE, ImageTable
from stages.models import build_classifier, encoder_of
from stages.objectives import OBJECTIVES
from stages.pretrain import ENCODER_FILE, OBJECTIVE_WEIGHTS
from stages.stage import Stage, main
from stages.training import (BatchNormRecalibration, EpochRecorder, TwoStreamBatches, build_optimizer, cosine_schedule,
                             epoch_callbacks, feed, fit_classifier, kept_model_summary)

log = logging.getLogger(__name__)

ENCODER_FIELDS = ("name", "filters", "convs_per_block")  # what must agree for the weights to fit


def pretrained_config(encoder_artifact: Path, classifier: TrainConfig) -> PretrainConfig:
    """The pretrain artifact's config, checked against the classifier it goes under."""
    manifest = read_manifest(encoder_artifact)
    if manifest["stage"] != "pretrain":
        raise ArtifactError(f"{encoder_artifact} holds a {manifest['stage']} artifact; the encoder input must be "
                            "the pretrain stage's output")
    pretrained = PretrainConfig.model_validate(manifest["config"])
    for field in ENCODER_FIELDS:
        mine, theirs = getattr(classifier.architecture, field), getattr(pretrained.architecture, field)
        if mine != theirs:
            raise ArtifactError(f"classifier.architecture.{field} is {mine} but the encoder in {encoder_artifact} "
                                f"has {theirs}: fine-tune with the architecture it was pretrained with")
    return pretrained


def load_encoder(encoder_artifact: Path) -> keras.Model:
    """The pretrained encoder, checked against the shape of the images."""
    encoder = keras.saving.load_model(encoder_artifact / ENCODER_FILE)
    if tuple(encoder.input_shape[1:]) != IMAGE_SHAPE:
        raise ArtifactError(f"{encoder_artifact / ENCODER_FILE} takes inputs of shape {encoder.input_shape[1:]}, but "
                            f"the images are {IMAGE_SHAPE}: pretrain an encoder on this split")
    return encoder


def two_step(config: EncoderFineTuneConfig, pretrained: keras.Model, labeled: ImageTable, validation: ImageTable):
    """Head on the frozen encoder, then (``unfreeze_epochs``) everything.

    Returns the classifier, the per-epoch history of both phases and the kept epoch (counted
    across phases: the best of the last phase)."""
    keras.utils.set_random_seed(config.classifier.seed)
    classifier = build_classifier(config.classifier)
    encoder = encoder_of(classifier)
    encoder.set_weights(pretrained.get_weights())
    encoder.trainable = False  # BatchNorm runs in inference mode too: the pretrained statistics stay
    head = fit_classifier(classifier, config.classifier, labeled, validation)
    if not config.unfreeze_epochs:
        return classifier, head.history.assign(phase="head"), head.best_epoch
    encoder.trainable = True
    unfrozen = config.classifier.model_copy(update={
        "epochs": config.unfreeze_epochs, "learning_rate": config.unfreeze_learning_rate, "warmup_epochs": 0})
    tuned = fit_classifier(classifier, unfrozen, labeled, validation)
    history = pd.concat([head.history.assign(phase="head"), tuned.history.assign(phase="unfrozen")], ignore_index=True)
    return classifier, history, len(head.history) + tuned.best_epoch


class JointModel(keras.Model):
    """The classifier and a pretraining objective sharing one encoder, trained on the joint loss."""

    def __init__(self, classifier: keras.Model, objective: keras.Model, config: EncoderFineTuneConfig, **kwargs):
        super().__init__(**kwargs)
        self.classifier, self.objective = classifier, objective
        self.joint_weight = config.joint_weight
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


def joint(config: EncoderFineTuneConfig, encoder_artifact: Path, pretrained: PretrainConfig, labeled: ImageTable,
          validation: ImageTable, images: np.ndarray):
    keras.utils.set_random_seed(config.classifier.seed)
    classifier = build_classifier(config.classifier)
    objective = OBJECTIVES[pretrained.objective](pretrained, encoder=encoder_of(classifier))
    objective(images[:2].astype("float32"))  # build it, so the pretrained weights have somewhere to go
    if not config.from_scratch:
        objective.load_weights(encoder_artifact / OBJECTIVE_WEIGHTS)
    model = JointModel(classifier, objective, config)
    model((images[:2].astype("float32"),) * 2)  # built, so that a checkpoint can restore into it
    train = TwoStreamBatches(labeled, images, config.classifier.batch_size, config.unlabeled_batch_size, config.classifier.seed)
    # validation: classification on the validation images, the objective on those same images
    checks = TwoStreamBatches(validation, validation.images, len(validation), min(len(validation), config.unlabeled_batch_size),
                          config.classifier.seed + 1)
    model.compile(optimizer=build_optimizer(config.classifier, cosine_schedule(config.classifier, len(train))))
    recorder = EpochRecorder(config.classifier.epochs)
    selector = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", restore_best_weights=True,
        patience=config.classifier.early_stopping_patience or config.classifier.epochs)
    statistics = BatchNormRecalibration(classifier, labeled.images, config.classifier.batch_size, config.classifier.seed)
    model.fit(feed(train), validation_data=feed(checks), epochs=config.classifier.epochs, shuffle=False, verbose=0,
              callbacks=epoch_callbacks(config.classifier.seed, recorder, selector, (train,),
                                        (statistics,) if config.recalibrate_batchnorm else ()))
    return classifier, recorder.history().assign(phase="joint"), selector.best_epoch + 1


def run(config: EncoderFineTuneConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    split, encoder_artifact = Path(inputs["split"]), Path(inputs["encoder"])
    verify(split)
    verify(encoder_artifact)
    pretrained = pretrained_config(encoder_artifact, config.classifier)
    encoder = load_encoder(encoder_artifact)
    labeled, validation = data.read_table(split, "labeled"), data.read_table(split, "validation")
    if config.mode == "two_step":
        classifier, history, best_epoch = two_step(config, encoder, labeled, validation)
    else:
        images = np.concatenate([labeled.images, data.read_table(split, "unlabeled").images])
        classifier, history, best_epoch = joint(config, encoder_artifact, pretrained, labeled, validation, images)
    history["epoch"] = np.arange(1, len(history) + 1)  # counted across phases
    metrics = kept_model_summary(classifier, validation, history, best_epoch)
    with staged_output(output) as tmp:
        exported = save_classifier(tmp, classifier, history, metrics)
        reads = ["split/labeled.parquet", "split/validation.parquet"]
        manifest = write_manifest(
            tmp, "fine_tune", config.model_dump(mode="json"),
            {"split": parent_entry(split), "encoder": parent_entry(encoder_artifact)}, started,
            extra={"reads": reads + (["split/unlabeled.parquet"] if config.mode == "joint" else []),
                   "backend": keras.backend.backend(), "saved_model": exported},
        )
    log.info("%s %s fine-tuning: val accuracy %.4f", pretrained.objective, config.mode, metrics["best_val_accuracy"])
    return manifest


STAGE = Stage(
    name="fine_tune",
    summary="Classifier on a pretrained encoder: two-step (frozen, then unfrozen) or joint with the pretraining loss.",
    config_type=EncoderFineTuneConfig,
    inputs=("split", "encoder"),
    run=run,
)

if __name__ == "__main__":
    sys.exit(main(STAGE))
