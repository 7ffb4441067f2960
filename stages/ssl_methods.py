"""Pseudo-labels and masks of consistency SSL: which weak-view predictions become targets.

``hard_pseudo_labels`` and ``confident`` are the rule the self-training stage applies to the whole
unlabeled set; a method of the registry applies it per batch, with a fixed threshold (FixMatch) or
thresholds it adapts as the model learns (FreeMatch). A new method is one class here: a Keras layer
mapping weak-view probabilities (N, C) to (pseudo-labels (N,), mask (N,) of 0/1 float32), whose
state, if any, lives in non-trainable weights updated in ``call`` (so it trains on every backend).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from stages.config import ConsistencyConfig
from stages.registry import Registry

METHODS: Registry[type[layers.Layer]] = Registry("SSL method")


def hard_pseudo_labels(probabilities):
    """The predicted class of each row of probabilities (N, C) and its probability: (labels, confidence)."""
    return ops.argmax(probabilities, axis=-1), ops.max(probabilities, axis=-1)


def confident(confidence, threshold):
    """The selection rule: a prediction is trusted when its confidence reaches the threshold (a scalar or
    one per row)."""
    return confidence >= threshold


@METHODS.register("fixmatch")
class FixMatch(layers.Layer):
    """FixMatch (Sohn et al., 2020): a weak-view prediction is a target when its confidence reaches a
    fixed threshold (0.95 in the paper)."""

    def __init__(self, config: ConsistencyConfig, **kwargs):
        super().__init__(**kwargs)
        self.threshold = config.threshold

    def call(self, probabilities, training=False):
        labels, confidence = hard_pseudo_labels(probabilities)
        return labels, ops.cast(confident(confidence, self.threshold), "float32")


@METHODS.register("freematch")
class FreeMatch(layers.Layer):
    """FreeMatch's self-adaptive thresholds (Wang et al., 2023): a global threshold tracks the model's
    mean confidence (EMA, from 1/C), scaled per class by the EMA of the mean predicted distribution,
    max-normalised. Early on many pseudo-labels pass, and the bar rises as the model grows sure.
    FreeMatch's class-fairness loss is not part of this method."""

    def __init__(self, config: ConsistencyConfig, **kwargs):
        super().__init__(**kwargs)
        self.momentum = config.adaptive_momentum

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
