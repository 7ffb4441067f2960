"""Autoencoder: reconstruct each image from the encoder's pooled features (the seed's exercise 3)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops
from pydantic import Field

from stages.lib import figures, losses
from stages.lib.config import StrictModel
from stages.lib.models import (
    PIXEL_OFFSET,
    PIXEL_SCALE,
    ArchitectureConfig,
    AugmentConfig,
    build_augmentation,
    build_decoder,
    build_encoder,
    build_scaling,
)
from stages.lib.objectives import OBJECTIVES


def reconstruction_error(target, reconstruction):
    """Mean squared error per image (N,), on the [-1, 1] scale."""
    return ops.mean(ops.square(reconstruction - target), axis=(1, 2, 3))


class AutoencoderConfig(StrictModel):
    augment: AugmentConfig = Field(AugmentConfig(), description="augmentation of the input before it is encoded")


@OBJECTIVES.register("autoencoder")
class Autoencoder(keras.Model):
    """images -> [augmentation] -> scale to [-1, 1] -> encoder -> decoder; loss: MSE to the scaled input."""

    config_type = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, architecture: ArchitectureConfig, image_shape: tuple[int, ...], precision: str,
                 seed: int, encoder: keras.Model | None = None, **kwargs):
        super().__init__(**kwargs)
        self.augmentation = build_augmentation(config.augment, seed)
        self.scale = build_scaling()
        self.encoder = encoder or build_encoder(architecture, image_shape, precision, seed)  # shared when given
        self.decoder = build_decoder(architecture, image_shape, precision, seed)
        self.reconstruction_loss = keras.metrics.Mean(name="reconstruction_loss")
        self.psnr = keras.metrics.Mean(name="psnr")

    def call(self, images, training=False):
        if self.augmentation.layers:
            images = self.augmentation(images, training=training)
        target = self.scale(images)
        return {"target": target, "reconstruction": self.decoder(self.encoder(target, training=training), training=training)}

    def unsupervised_loss(self, y_pred):
        """Mean squared reconstruction error; updates the reconstruction loss and PSNR metrics."""
        error = reconstruction_error(y_pred["target"], ops.cast(y_pred["reconstruction"], "float32"))
        mse = ops.mean(error)
        self.reconstruction_loss.update_state(mse)
        self.psnr.update_state(ops.mean(losses.psnr(error)))
        return mse

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return losses.with_regularization(self.unsupervised_loss(y_pred), self.losses)

    def figures(self, images: np.ndarray, directory: Path) -> list[Path]:
        """Originals over their reconstructions (the seed's figures 7-8)."""
        out = self(images.astype("float32"), training=False)
        reconstruction = (ops.convert_to_numpy(out["reconstruction"]).astype("float32") - PIXEL_OFFSET) / PIXEL_SCALE
        return [figures.image_pairs(images, reconstruction, ("original", "reconstruction"),
                                    directory / "reconstructions.png")]
