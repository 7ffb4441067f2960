"""Pretraining objectives of the shared encoder: one module each, registered by name.

An objective is a ``keras.Model`` subclass built from its own config (``config_type``), the
encoder's architecture and image shape, a precision and a seed (and optionally an encoder to share, for joint
training). It holds ``encoder`` (the baseline's encoder, from the shared factory) and whatever else
its loss needs. ``unsupervised_loss(y_pred)`` is the objective in ``keras.ops`` and updates its
progress metrics; ``compute_loss`` adds the weight penalties, so Keras' own ``fit`` trains it on
any backend. ``figures(images, directory)`` draws the evidence that it learned. The pretrain
stage's config holds one section per registered objective, named as registered.
"""

from __future__ import annotations

from typing import Any

import keras

from stages.lib.config import StrictModel
from stages.lib.models import ArchitectureConfig, Precision, resolve_precision
from stages.lib.registry import Registry

OBJECTIVES: Registry = Registry("objective")
ObjectiveName = OBJECTIVES.name_type()


class ObjectiveSetup(StrictModel):
    """What builds an objective's network again: the pretrain stage writes it beside the network's
    weights, and joint fine-tuning rebuilds the network from it to load them."""

    name: str
    settings: dict[str, Any]  # the objective's own config
    architecture: ArchitectureConfig
    image_shape: tuple[int, int, int]  # (H, W, 3) of the split it pretrained on
    precision: Precision
    seed: int


def build_objective(setup: ObjectiveSetup, encoder: keras.Model | None = None) -> keras.Model:
    """The objective's network; ``encoder``, when given, is shared instead of a fresh one."""
    objective = OBJECTIVES[setup.name]
    return objective(objective.config_type.model_validate(setup.settings), setup.architecture, setup.image_shape,
                     resolve_precision(setup.precision), setup.seed, encoder=encoder)


from stages.lib.objectives import autoencoder, simclr  # noqa: E402,F401  (they register themselves)
