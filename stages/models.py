"""Network factories shared by every stage: augmentation, encoders, classifier heads.

``build_encoder`` is registered per architecture name; ``build_classifier`` puts the shared
augmentation and input scaling in front of it and a dense head behind it. Models take raw
uint8-valued images (N, 32, 32, 3) so the served model needs no preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from stages.config import NUM_CLASSES, ArchitectureConfig, AugmentConfig, TrainConfig
from stages.data import IMAGE_SHAPE
from stages.registry import Registry

EncoderFactory = Callable[[ArchitectureConfig, str], keras.Model]
PIXEL_SCALE, PIXEL_OFFSET = 1 / 127.5, -1.0  # uint8 values 0..255 -> the encoder's [-1, 1]
ARCHITECTURES: Registry[EncoderFactory] = Registry("architecture")


def build_augmentation(config: AugmentConfig, seed: int) -> keras.Sequential:
    """The seed's light augmentation; every layer is the identity at inference."""
    steps: list[layers.Layer] = []
    if config.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        steps.append(layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        steps.append(layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.translation:
        steps.append(layers.RandomTranslation(config.translation, config.translation, fill_mode="reflect", seed=seed + 3))
    if config.blur_sigma:
        steps.append(layers.RandomGaussianBlur(factor=0.5, sigma=config.blur_sigma, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(steps, name="augmentation")


@ARCHITECTURES.register("vgg")
def build_vgg_encoder(config: ArchitectureConfig, dtype: str) -> keras.Model:
    """VGG blocks of (3x3 conv, BatchNorm, ReLU) x convs_per_block, max-pool, dropout; then GAP."""
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    inputs = keras.Input(IMAGE_SHAPE, name="scaled_image")
    x = inputs
    for block, (filters, rate) in enumerate(zip(config.filters, config.block_dropout), start=1):
        for conv in range(1, config.convs_per_block + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=regularizer,
                              dtype=dtype, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(dtype=dtype, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(dtype=dtype, name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(dtype=dtype, name=f"block{block}_pool")(x)
        if rate:
            x = layers.Dropout(rate, dtype=dtype, name=f"block{block}_dropout")(x)
    features = layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)  # (N, filters[-1])
    return keras.Model(inputs, features, name=f"{config.name}_encoder")


def build_encoder(config: ArchitectureConfig, dtype: str = "float32") -> keras.Model:
    return ARCHITECTURES[config.name](config, dtype)


def build_decoder(config: ArchitectureConfig, dtype: str = "float32") -> keras.Model:
    """The encoder mirrored: features (N, filters[-1]) -> dense -> (s, s, filters[-1]) -> per block,
    last first: up-sample, (3x3 conv, BatchNorm, ReLU) x convs_per_block -> 3x3 conv to an image
    in the encoder's [-1, 1] input scale (N, 32, 32, 3)."""
    side = IMAGE_SHAPE[0] // 2 ** len(config.filters)  # the encoder halves the side once per block
    features = keras.Input((config.filters[-1],), name="features")
    x = layers.Dense(side * side * config.filters[-1], activation="relu", dtype=dtype, name="expand")(features)
    x = layers.Reshape((side, side, config.filters[-1]), name="to_map")(x)
    for block, filters in enumerate(reversed(config.filters), start=1):
        x = layers.UpSampling2D(dtype=dtype, name=f"up{block}")(x)
        for conv in range(1, config.convs_per_block + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=dtype, name=f"up{block}_conv{conv}")(x)
            x = layers.BatchNormalization(dtype=dtype, name=f"up{block}_bn{conv}")(x)
            x = layers.ReLU(dtype=dtype, name=f"up{block}_relu{conv}")(x)
    image = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype="float32", name="reconstruction")(x)
    return keras.Model(features, image, name="decoder")


def build_projection_head(width: int, units: int, output_dim: int, dtype: str = "float32") -> keras.Model:
    """SimCLR's projection: dense -> BatchNorm -> ReLU -> dense, features (N, width) -> (N, output_dim)."""
    features = keras.Input((width,), name="features")
    x = layers.Dense(units, use_bias=False, dtype=dtype, name="projection_hidden")(features)
    x = layers.BatchNormalization(dtype=dtype, name="projection_bn")(x)
    x = layers.ReLU(dtype=dtype, name="projection_relu")(x)
    projection = layers.Dense(output_dim, dtype="float32", name="projection")(x)
    return keras.Model(features, projection, name="projection_head")


def build_scaling() -> layers.Rescaling:
    """The layer in front of every encoder: 0..255 pixel values to [-1, 1]."""
    return layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="scale")


def build_classifier(config: TrainConfig, num_classes: int = NUM_CLASSES) -> keras.Model:
    """augmentation -> scale to [-1, 1] -> encoder -> dense -> dropout -> softmax (float32)."""
    arch, dtype = config.architecture, config.precision
    regularizer = keras.regularizers.L2(arch.l2) if arch.l2 else None
    images = keras.Input(IMAGE_SHAPE, name="image")  # uint8 values, passed as float32
    augmentation = build_augmentation(config.augment, config.seed)
    x = augmentation(images) if augmentation.layers else images
    x = build_scaling()(x)
    x = build_encoder(arch, dtype)(x)
    x = layers.Dense(arch.dense_units, activation="relu", kernel_regularizer=regularizer, dtype=dtype, name="dense")(x)
    if arch.head_dropout:
        x = layers.Dropout(arch.head_dropout, dtype=dtype, name="head_dropout")(x)
    # the output layer stays float32 so the softmax and the loss are computed at full precision
    probabilities = layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer,
                                 dtype="float32", name="probabilities")(x)
    return keras.Model(images, probabilities, name=f"{arch.name}_classifier")
