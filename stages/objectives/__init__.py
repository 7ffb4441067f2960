"""Pretraining objectives of the shared encoder: one module each, registered by name.

An objective is a ``keras.Model`` subclass built from a ``PretrainConfig`` (and optionally an
encoder to share, for joint training). It holds ``encoder`` (the baseline's encoder, from the
shared factory) and whatever else its loss needs. ``unsupervised_loss(y_pred)`` is the objective
in ``keras.ops`` and updates its progress metrics; ``compute_loss`` adds the weight penalties, so
Keras' own ``fit`` trains it on any backend. ``figures(images, directory)`` draws the evidence
that it learned.
"""

from stages.registry import Registry

OBJECTIVES: Registry = Registry("objective")

from stages.objectives import autoencoder, simclr  # noqa: E402,F401  (they register themselves)
