"""Pseudo-labels and masks of consistency SSL: which weak-view predictions become targets.

``hard_pseudo_labels`` and ``confident`` are the rule the self-training stage applies to the whole
unlabeled set; a method of the registry applies it per batch, with a fixed threshold (FixMatch) or
thresholds it adapts as the model learns (FreeMatch). A new method is a config class of its own
settings and one class here: a Keras layer built from that config, mapping target probabilities
(N, C) to (pseudo-labels (N,), mask (N,) of 0/1 float32), whose state, if any, lives in
non-trainable weights updated in ``call`` (so it trains on every backend) and is set from a trained
model's predictions by ``start_from`` when training starts from one. The consistency stage's
config holds one section per registered method, named as registered.
"""

from __future__ import annotations

import keras
from keras import layers, ops
from pydantic import Field

from stages.lib.config import StrictModel
from stages.lib.registry import Registry

METHODS: Registry[type[SSLMethod]] = Registry("SSL method")
MethodName = METHODS.name_type()


def hard_pseudo_labels(probabilities):
    """The predicted class of each row of probabilities (N, C) and its probability: (labels, confidence)."""
    return ops.argmax(probabilities, axis=-1), ops.max(probabilities, axis=-1)


def confident(confidence, threshold):
    """The selection rule: a prediction is trusted when its confidence reaches the threshold (a scalar or
    one per row)."""
    return confidence >= threshold


class SSLMethod(layers.Layer):
    """What every method is: ``call`` gives (pseudo-labels, mask) for weak-view probabilities."""

    def start_from(self, probabilities) -> None:
        """Sets the state to what it would be had it tracked the trained model whose weak-view
        probabilities (N, C) these are; a method without state has nothing to set."""


class FixMatchConfig(StrictModel):
    threshold: float = Field(0.95, gt=0, le=1, description="confidence a pseudo-label needs")


@METHODS.register("fixmatch")
class FixMatch(SSLMethod):
    """FixMatch (Sohn et al., 2020): a weak-view prediction is a target when its confidence reaches a
    fixed threshold (0.95 in the paper)."""

    config_type = FixMatchConfig

    def __init__(self, config: FixMatchConfig, **kwargs):
        super().__init__(**kwargs)
        self.threshold = config.threshold

    def call(self, probabilities, training=False):
        labels, confidence = hard_pseudo_labels(probabilities)
        return labels, ops.cast(confident(confidence, self.threshold), "float32")


class FreeMatchConfig(StrictModel):
    momentum: float = Field(0.999, gt=0, lt=1, description="EMA momentum of the adaptive thresholds")


@METHODS.register("freematch")
class FreeMatch(SSLMethod):
    """FreeMatch's self-adaptive thresholds (Wang et al., 2023): a global threshold tracks the model's
    mean confidence (EMA, from 1/C), scaled per class by the EMA of the mean predicted distribution,
    max-normalised. Early on many pseudo-labels pass, and the bar rises as the model grows sure.
    1/C is the confidence of an untrained model: a trained one starts them at its own (``start_from``),
    else nearly every pseudo-label passes at first (99.9% in the first 200 steps from the `quick` baseline).
    FreeMatch's class-fairness loss is not part of this method."""

    config_type = FreeMatchConfig

    def __init__(self, config: FreeMatchConfig, **kwargs):
        super().__init__(**kwargs)
        self.momentum = config.momentum

    def build(self, input_shape):
        start = keras.initializers.Constant(1.0 / input_shape[-1])
        self.global_threshold = self.add_weight(shape=(), initializer=start, trainable=False, name="global_threshold")
        self.class_confidence = self.add_weight(shape=(input_shape[-1],), initializer=start, trainable=False,
                                                name="class_confidence")

    def call(self, probabilities, training=False):
        labels, confidence = hard_pseudo_labels(probabilities)
        if training:
            keep = self.momentum
            self.global_threshold.assign(keep * self.global_threshold + (1 - keep) * ops.mean(confidence))
            self.class_confidence.assign(keep * self.class_confidence + (1 - keep) * ops.mean(probabilities, axis=0))
        thresholds = self.class_confidence / ops.max(self.class_confidence) * self.global_threshold  # (C,)
        return labels, ops.cast(confident(confidence, ops.take(thresholds, labels)), "float32")

    def start_from(self, probabilities) -> None:
        self.global_threshold.assign(ops.mean(hard_pseudo_labels(probabilities)[1]))
        self.class_confidence.assign(ops.mean(probabilities, axis=0))
