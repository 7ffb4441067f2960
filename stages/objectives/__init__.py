"""Pretraining objectives of the shared encoder: one module each, registered by name.

An objective is a ``keras.Model`` subclass built from a ``PretrainConfig``. It holds ``encoder``
(the baseline's encoder, from the shared factory) and whatever else its loss needs; its
``compute_loss`` is written in ``keras.ops`` and updates its own progress metrics, so Keras' own
``fit`` trains it on any backend. ``figures(images, path)`` draws what shows that it learned.
"""

from stages.registry import Registry

OBJECTIVES: Registry = Registry("objective")

from stages.objectives import autoencoder, simclr  # noqa: E402,F401  (they register themselves)
