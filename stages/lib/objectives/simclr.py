"""SimCLR: two random views of every image must find each other among the batch (the seed's exercise 6).

Why it trains here where the seed's did not: the loss works on L2-normalised projections with a
temperature (so logits are bounded by 1/temperature), gradients are clipped (``clipnorm``), the
encoder has BatchNorm, and 2 x batch_size views of 32x32 images fit in memory on 2 CPU cores at
batch 512 and on one GPU at 1024+: no gradient accumulation is needed (it would not help a
contrastive loss, whose negatives are the other images of the same step).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers, ops
from pydantic import Field

from stages.lib import figures, losses
from stages.lib.config import StrictModel
from stages.lib.models import ArchitectureConfig, build_encoder, build_projection_head, build_scaling, compiled_under_jax
from stages.lib.objectives import OBJECTIVES


class ViewAugmentConfig(StrictModel):
    """SimCLR's views of an image: random crop-resize, flip, colour jitter, grayscale, blur."""

    crop_area: float = Field(0.2, gt=0, le=1, description="smallest crop, as a fraction of the image area")
    jitter: float = Field(0.4, ge=0, le=1, description="brightness, contrast and saturation jitter; hue = jitter / 4")
    grayscale: float = Field(0.2, ge=0, le=1, description="probability that a view is grayscale")
    blur_sigma: float = Field(0.0, ge=0, description="max Gaussian blur sigma, pixels; 0 = off (CIFAR is 32 px)")


class SimCLRConfig(StrictModel):
    views: ViewAugmentConfig = Field(ViewAugmentConfig(), description="how each of the two views is made")
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature")
    projection_units: int = Field(256, ge=1, description="projection head hidden width")
    projection_dim: int = Field(128, ge=1, description="embedding size the loss compares")


def build_views(config: ViewAugmentConfig, seed: int) -> keras.Sequential:
    """One random view of raw 0..255 images: crop-resize (zoom in + shift), flip, colour jitter,
    grayscale and optional blur, each drawn per image."""
    zoom = 1.0 - config.crop_area**0.5  # a crop of area A has sides sqrt(A) of the image's
    steps = [
        layers.RandomZoom((-zoom, 0.0), fill_mode="reflect", seed=seed),
        layers.RandomTranslation(zoom / 2, zoom / 2, fill_mode="reflect", seed=seed + 1),
        layers.RandomFlip("horizontal", seed=seed + 2),
    ]
    if config.jitter:
        steps.append(layers.RandomColorJitter(value_range=(0, 255), brightness_factor=config.jitter,
                                              contrast_factor=config.jitter, saturation_factor=config.jitter,
                                              hue_factor=config.jitter / 4, seed=seed + 3))
    if config.grayscale:
        steps.append(layers.RandomGrayscale(config.grayscale, seed=seed + 4))
    if config.blur_sigma:
        steps.append(layers.RandomGaussianBlur(factor=0.5, sigma=config.blur_sigma, value_range=(0, 255), seed=seed + 5))
    return compiled_under_jax(keras.Sequential(steps, name="views"))


@OBJECTIVES.register("simclr")
class SimCLR(keras.Model):
    """images -> two views -> scale -> encoder -> projection head; loss: NT-Xent between the views."""

    config_type = SimCLRConfig

    def __init__(self, config: SimCLRConfig, architecture: ArchitectureConfig, image_shape: tuple[int, ...], precision: str,
                 seed: int, encoder: keras.Model | None = None, **kwargs):
        super().__init__(**kwargs)
        self.temperature = config.temperature
        self.views = build_views(config.views, seed)
        self.scale = build_scaling()
        self.encoder = encoder or build_encoder(architecture, image_shape, precision, seed)  # shared when given
        self.projector = build_projection_head(architecture.filters[-1], config.projection_units,
                                               config.projection_dim, precision, seed)
        self.contrastive_loss = keras.metrics.Mean(name="contrastive_loss")
        self.pair_accuracy = keras.metrics.Mean(name="pair_accuracy")  # positive found first among 2N - 1

    def embed(self, images, training=False):
        return self.projector(self.encoder(self.scale(images), training=training), training=training)

    def call(self, images, training=False):
        # the views are drawn whenever the loss is computed: it compares two views by definition
        return {"z1": self.embed(self.views(images, training=True), training),
                "z2": self.embed(self.views(images, training=True), training)}

    def unsupervised_loss(self, y_pred):
        """NT-Xent between the two views; updates the contrastive loss and pair accuracy metrics."""
        z1, z2 = ops.cast(y_pred["z1"], "float32"), ops.cast(y_pred["z2"], "float32")
        loss = losses.nt_xent(z1, z2, self.temperature)
        self.contrastive_loss.update_state(loss)
        self.pair_accuracy.update_state(losses.positive_pair_accuracy(z1, z2))
        return loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return losses.with_regularization(self.unsupervised_loss(y_pred), self.losses)

    def figures(self, images: np.ndarray, directory: Path) -> list[Path]:
        """The cosine similarity matrix of a batch of view pairs (the seed's figure 10)."""
        out = self(images.astype("float32"), training=False)
        z, _ = losses.paired(ops.cast(out["z1"], "float32"), ops.cast(out["z2"], "float32"))
        similarity = ops.convert_to_numpy(ops.matmul(z, ops.transpose(z)))
        return [figures.similarity_matrix(similarity, directory / "similarity_matrix.png")]
