"""Objectives in ``keras.ops`` only, so they run unchanged on the TensorFlow and JAX backends."""

from __future__ import annotations

import math

from keras import ops

PIXEL_RANGE = 2.0  # images are scaled to [-1, 1] before the encoder


def nt_xent(z1, z2, temperature: float):
    """SimCLR's normalized-temperature cross-entropy over a batch of view pairs.

    ``z1``, ``z2``: (N, D) embeddings of two views of the same N images. Each of the 2N embeddings
    must pick its partner among the other 2N - 1 by cosine similarity / temperature; the loss is
    the mean cross-entropy of that choice (minimum 0, and log(2N - 1) when all are alike).
    """
    z, partners = paired(z1, z2)
    log_probabilities = ops.log_softmax(similarity_logits(z, temperature), axis=1)
    chosen = ops.take_along_axis(log_probabilities, ops.expand_dims(partners, 1), axis=1)
    return -ops.mean(chosen)


def paired(z1, z2):
    """Both views' embeddings as unit rows (2N, D), and each row's partner index (2N,)."""
    z = ops.concatenate([z1, z2], axis=0)
    z = z / ops.sqrt(ops.maximum(ops.sum(z * z, axis=1, keepdims=True), 1e-12))
    n = ops.shape(z1)[0]
    return z, ops.concatenate([ops.arange(n) + n, ops.arange(n)], axis=0)


def similarity_logits(z, temperature: float):
    """(2N, 2N) cosine similarities / temperature of unit rows ``z``, each row's own entry masked out."""
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    return logits - 1e9 * ops.eye(ops.shape(z)[0], dtype=logits.dtype)


def positive_pair_accuracy(z1, z2):
    """Fraction of the 2N embeddings whose most similar other embedding is their own partner."""
    z, partners = paired(z1, z2)
    nearest = ops.argmax(similarity_logits(z, 1.0), axis=1)
    return ops.mean(ops.cast(ops.equal(nearest, partners), "float32"))


def psnr(mse):
    """Peak signal-to-noise ratio in dB of a mean squared error on [-1, 1] images."""
    return 10.0 * ops.log(PIXEL_RANGE**2 / ops.maximum(mse, 1e-10)) / math.log(10.0)


def joint_loss(classification, unsupervised, a: float):
    """The seed's joint objective: ``(1 - a) * classification + (1 + a) * unsupervised``, a in [-1, 1]."""
    if not -1.0 <= a <= 1.0:
        raise ValueError(f"joint weight a = {a} lies outside [-1, 1]: (1 - a) and (1 + a) must not be negative")
    return (1.0 - a) * classification + (1.0 + a) * unsupervised


def with_regularization(loss, layer_losses):
    """``loss`` plus the layers' penalties (``model.losses``: L2 on kernels), as Keras' own compute_loss adds them."""
    return loss + ops.sum(ops.stack(layer_losses)) if layer_losses else loss
