"""Network factories shared by every stage: augmentation, encoders, classifier heads.

``build_encoder`` is registered per architecture name; ``build_classifier`` puts the shared
augmentation and input scaling in front of it and a dense head behind it. Models take raw
uint8-valued images (N, 32, 32, 3) so the served model needs no preprocessing.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Literal

import keras
import numpy as np
from keras import layers
from pydantic import Field, model_validator

from stages.lib.config import StrictModel
from stages.lib.machine import has_bfloat16
from stages.lib.registry import Registry

# Keras dtype policies, or "auto": mixed_bfloat16 where the CPU multiplies bfloat16 natively, else float32
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]


def resolve_precision(precision: Precision) -> str:
    """The Keras dtype policy that ``precision`` names on this machine."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if has_bfloat16() else "float32"


PIXEL_SCALE, PIXEL_OFFSET = 1 / 127.5, -1.0  # uint8 values 0..255 -> the encoder's [-1, 1]
INFERENCE_BATCH = 500  # images per predict call where no config sets it: memory depends on it, results do not


class WeightSeeds:
    """Initializers of one network, seeded from a generator of its own.

    Keras seeds an initializer given no seed from Python's global ``random``, which other threads
    of a flow process (Prefect's client) draw from too: flows running side by side then started the
    same configuration from different weights (measured: tests/test_faults.py).
    """

    def __init__(self, seed: int, network: str):
        self._rng = np.random.default_rng([seed, zlib.crc32(network.encode())])  # other networks, other streams

    def __call__(self, kind: type = keras.initializers.GlorotUniform, **options) -> keras.initializers.Initializer:
        return kind(seed=int(self._rng.integers(2**31)), **options)


EncoderFactory = Callable[["ArchitectureConfig", str, WeightSeeds], keras.Model]
ARCHITECTURES: Registry[EncoderFactory] = Registry("architecture")
ArchitectureName = ARCHITECTURES.name_type()


class ArchitectureConfig(StrictModel):
    """``vgg``: blocks of ``convs_per_block`` (3x3 conv, BatchNorm, ReLU) and a max-pool. ``wrn``: a
    wide ResNet, one group of ``convs_per_block`` residual blocks per entry of ``filters``
    (WRN-28-2: filters (32, 64, 128), 4 blocks per group)."""

    name: ArchitectureName = Field("vgg", description="key in ARCHITECTURES (stages/lib/models.py)")
    filters: tuple[int, ...] = Field((96, 192, 256), min_length=1, description="conv filters per block (wrn: per group)")
    convs_per_block: int = Field(2, ge=1, description="vgg: conv layers per block; wrn: residual blocks per group")
    block_dropout: tuple[float, ...] = Field(
        (0.15, 0.2, 0.25), description="dropout after each block's max-pool (wrn: inside each residual block)"
    )
    dense_units: int = Field(256, ge=0, description="width of the hidden dense layer of the head; 0 = none")
    head_dropout: float = Field(0.3, ge=0, lt=1, description="dropout before the output layer")
    l2: float = Field(0.003, ge=0, description="L2 penalty l2 * sum(w**2) on conv and dense kernels: its gradient "
                      "is 2 * l2 * w, so PyTorch SGD's weight_decay=w (USB, FixMatch) is l2 = w / 2")

    @model_validator(mode="after")
    def _one_dropout_per_block(self) -> ArchitectureConfig:
        if len(self.block_dropout) != len(self.filters):
            raise ValueError(
                f"block_dropout has {len(self.block_dropout)} entries but filters has "
                f"{len(self.filters)}: give one dropout rate per block"
            )
        if not all(0 <= rate < 1 for rate in self.block_dropout):
            raise ValueError("block_dropout rates must lie in [0, 1)")
        return self


class AugmentConfig(StrictModel):
    """Augmentation as Keras layers at the model input; active in training only."""

    flip: bool = Field(True, description="random horizontal flip")
    rotation: float = Field(0.05, ge=0, le=0.5, description="max rotation, fraction of a full turn")
    zoom: float = Field(0.1, ge=0, lt=1, description="max zoom in or out, fraction of the side")
    translation: float = Field(0.1, ge=0, lt=1, description="max shift, fraction of the side")
    blur_sigma: float = Field(0.5, ge=0, description="max Gaussian blur sigma, pixels; 0 = off")


class StrongAugmentConfig(StrictModel):
    """FixMatch's strong view: RandAugment (ops drawn per image) then Cutout, on top of the weak one."""

    num_ops: int = Field(2, ge=0, description="RandAugment operations per image")
    magnitude: float = Field(0.5, ge=0, le=1, description="RandAugment strength, 0..1 (magnitudes drawn up to it)")
    cutout: float = Field(0.5, ge=0, lt=1, description="largest erased square side, fraction of the image; 0 = off")


def compiled_under_jax(augmentation: keras.Sequential) -> keras.Sequential:
    """Lets XLA compile a model holding ``augmentation`` on the JAX backend.

    Keras marks its geometric layers (translation, rotation, zoom, shear) unfit for XLA because their
    TensorFlow kernel has none, and one such layer turns XLA off for the whole model, even when
    ``jit_compile=True`` is asked for. Under JAX they are plain ``jax.numpy`` and compile; left
    un-jitted, a JAX train step runs op by op: a FixMatch WRN-28-2 step took more than 1 s on an H200,
    and 21 ms jitted (``bench/results/gpu-ssl-gpu.md``). TensorFlow keeps Keras' choice: its XLA is
    2-5x slower on this CPU."""
    if keras.backend.backend() == "jax":
        for layer in augmentation._flatten_layers():  # RandAugment's own sub-layers included
            layer.supports_jit = True
    return augmentation


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
    return compiled_under_jax(keras.Sequential(steps, name="augmentation"))


class PerImageRandAugment(layers.RandAugment):
    """RandAugment as FixMatch uses it: ``num_ops`` operations per image, each with its own
    magnitude. Keras' RandAugment draws the operations once per batch and computes every operation
    on the whole batch, each round; here each round shuffles the batch into one equal group per
    operation, so an image gets one operation a round and the round costs about one operation's
    work on the batch, not all ten: a quick preset's strong view (192 images) took 18 ms instead of
    137 ms on the 2-core CPU (TensorFlow, graph mode).

    Without equalization: Keras' JAX version builds one histogram of the whole batch (not per image)
    in a 256-step loop: 0.83 s per 448 images jitted on the 2-core CPU, 23 s to compile
    (``bench/results/gpu-ssl-gpu.md``)."""

    _AUGMENT_LAYERS = [name for name in layers.RandAugment._AUGMENT_LAYERS if name != "equalization"]

    def get_random_transformation(self, data, training=True, seed=None):
        # the parent's call also points the sub-layers at TensorFlow inside tf.data; its draws are unused
        if super().get_random_transformation(data, training, seed) is None:
            return None
        order = self.backend.numpy.arange(self.backend.core.shape(data)[0])
        return {"permutations": [self.backend.random.shuffle(order, seed=self._get_seed_generator(self.backend._backend))
                                 for _ in range(self.num_ops)]}

    def transform_images(self, images, transformation, training=True):
        images = self.backend.cast(images, self.compute_dtype)
        if not training:
            return images
        for permutation in transformation["permutations"]:
            images = self._one_operation_each(images, permutation)
        return self.backend.numpy.clip(images, *self.value_range)  # some operations overshoot by float error (255.00002)

    def _one_operation_each(self, images, permutation):
        """Slot i of ``operations x size`` slots holds image ``permutation[i % n]``; operation k
        transforms slots ``[k * size, (k + 1) * size)``; each image takes the result of its first slot
        (slots past n repeat images to fill the last groups and are dropped)."""
        numpy = self.backend.numpy
        count, operations = self.backend.core.shape(images)[0], len(self._AUGMENT_LAYERS)
        size = (count + operations - 1) // operations
        slots = numpy.take(images, numpy.take(permutation, numpy.arange(operations * size) % count), axis=0)
        done = []
        for k, name in enumerate(self._AUGMENT_LAYERS):
            layer, group = getattr(self, name), slots[k * size:(k + 1) * size]
            values = layer.get_random_transformation(group, training=True, seed=self._get_seed_generator(self.backend._backend))
            done.append(layer.transform_images(group, values, training=True))
        return numpy.take(numpy.concatenate(done, axis=0), numpy.argsort(permutation), axis=0)


def build_strong_augmentation(config: StrongAugmentConfig, seed: int) -> keras.Sequential:
    """FixMatch's strong view of raw 0..255 images: RandAugment, then a grey Cutout square."""
    steps: list[layers.Layer] = []
    if config.num_ops:
        steps.append(PerImageRandAugment(value_range=(0, 255), num_ops=config.num_ops, factor=config.magnitude, seed=seed))
    if config.cutout:
        # RandomErasing draws each side as sqrt(uniform(scale)) of the image's
        steps.append(layers.RandomErasing(factor=(1.0, 1.0), scale=(0.0, config.cutout**2), fill_value=127.5,
                                          value_range=(0, 255), seed=seed + 1))
    return compiled_under_jax(keras.Sequential(steps, name="strong_augmentation"))


@ARCHITECTURES.register("vgg")
def build_vgg_encoder(config: ArchitectureConfig, image_shape: tuple[int, ...], dtype: str, seeds: WeightSeeds) -> keras.Model:
    """VGG blocks of (3x3 conv, BatchNorm, ReLU) x convs_per_block, max-pool, dropout; then GAP."""
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    inputs = keras.Input(image_shape, name="scaled_image")
    x = inputs
    for block, (filters, rate) in enumerate(zip(config.filters, config.block_dropout), start=1):
        for conv in range(1, config.convs_per_block + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=seeds(),
                              kernel_regularizer=regularizer, dtype=dtype, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(dtype=dtype, name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(dtype=dtype, name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(dtype=dtype, name=f"block{block}_pool")(x)
        if rate:
            x = layers.Dropout(rate, dtype=dtype, name=f"block{block}_dropout")(x)
    features = layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)  # (N, filters[-1])
    return keras.Model(inputs, features, name=f"{config.name}_encoder")


@ARCHITECTURES.register("wrn")
def build_wide_resnet_encoder(config: ArchitectureConfig, image_shape: tuple[int, ...], dtype: str,
                              seeds: WeightSeeds) -> keras.Model:
    """Wide ResNet as in FixMatch and USB: 3x3 conv (16) -> per group, ``convs_per_block`` pre-activation
    residual blocks (the first of each later group halves the side) -> BatchNorm, LeakyReLU(0.1), GAP.
    Convolutions are He-initialised on fan-out, as in USB."""
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None

    def conv(x, filters, size, stride, name):
        init = seeds(keras.initializers.VarianceScaling, scale=2.0, mode="fan_out", distribution="untruncated_normal")
        return layers.Conv2D(filters, size, strides=stride, padding="same", use_bias=False, kernel_initializer=init,
                             kernel_regularizer=regularizer, dtype=dtype, name=name)(x)

    def activate(x, name):
        x = layers.BatchNormalization(momentum=0.999, dtype=dtype, name=f"{name}_bn")(x)
        return layers.LeakyReLU(0.1, dtype=dtype, name=f"{name}_relu")(x)

    inputs = keras.Input(image_shape, name="scaled_image")
    x = conv(inputs, 16, 3, 1, "stem")
    for group, (filters, rate) in enumerate(zip(config.filters, config.block_dropout), start=1):
        for block in range(1, config.convs_per_block + 1):
            name, stride = f"group{group}_block{block}", 2 if group > 1 and block == 1 else 1
            h = activate(x, f"{name}_in")
            shortcut = x if x.shape[-1] == filters and stride == 1 else conv(h, filters, 1, stride, f"{name}_shortcut")
            h = activate(conv(h, filters, 3, stride, f"{name}_conv1"), f"{name}_mid")
            if rate:
                h = layers.Dropout(rate, dtype=dtype, name=f"{name}_dropout")(h)
            x = layers.Add(dtype=dtype, name=f"{name}_add")([shortcut, conv(h, filters, 3, 1, f"{name}_conv2")])
    features = layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(activate(x, "final"))  # (N, filters[-1])
    return keras.Model(inputs, features, name=f"{config.name}_encoder")


def build_encoder(config: ArchitectureConfig, image_shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> keras.Model:
    """``config``'s encoder of (H, W, 3) images scaled to [-1, 1]: images (N, H, W, 3) -> features (N, filters[-1])."""
    return ARCHITECTURES[config.name](config, tuple(image_shape), dtype, WeightSeeds(seed, "encoder"))


def build_decoder(config: ArchitectureConfig, image_shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> keras.Model:
    """The encoder mirrored: features (N, filters[-1]) -> dense -> (s, s, filters[-1]) -> per block,
    last first: up-sample, (3x3 conv, BatchNorm, ReLU) x convs_per_block -> 3x3 conv to an image
    in the encoder's [-1, 1] input scale (N, H, W, 3)."""
    seeds = WeightSeeds(seed, "decoder")
    reduction = 2 ** len(config.filters)  # the encoder halves the side once per block
    if image_shape[0] != image_shape[1] or image_shape[0] % reduction:
        raise ValueError(f"the decoder rebuilds square images whose side divides by {reduction} (2 per block of "
                         f"architecture.filters), but the images are {tuple(image_shape)}: set split.data.image_size "
                         f"to a multiple of {reduction}")
    side = image_shape[0] // reduction
    features = keras.Input((config.filters[-1],), name="features")
    x = layers.Dense(side * side * config.filters[-1], activation="relu", kernel_initializer=seeds(), dtype=dtype,
                     name="expand")(features)
    x = layers.Reshape((side, side, config.filters[-1]), name="to_map")(x)
    for block, filters in enumerate(reversed(config.filters), start=1):
        x = layers.UpSampling2D(dtype=dtype, name=f"up{block}")(x)
        for conv in range(1, config.convs_per_block + 1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=seeds(), dtype=dtype,
                              name=f"up{block}_conv{conv}")(x)
            x = layers.BatchNormalization(dtype=dtype, name=f"up{block}_bn{conv}")(x)
            x = layers.ReLU(dtype=dtype, name=f"up{block}_relu{conv}")(x)
    image = layers.Conv2D(3, 3, padding="same", activation="tanh", kernel_initializer=seeds(), dtype="float32",
                          name="reconstruction")(x)
    return keras.Model(features, image, name="decoder")


def build_projection_head(width: int, units: int, output_dim: int, dtype: str = "float32", seed: int = 0) -> keras.Model:
    """SimCLR's projection: dense -> BatchNorm -> ReLU -> dense, features (N, width) -> (N, output_dim)."""
    seeds = WeightSeeds(seed, "projection")
    features = keras.Input((width,), name="features")
    x = layers.Dense(units, use_bias=False, kernel_initializer=seeds(), dtype=dtype, name="projection_hidden")(features)
    x = layers.BatchNormalization(dtype=dtype, name="projection_bn")(x)
    x = layers.ReLU(dtype=dtype, name="projection_relu")(x)
    projection = layers.Dense(output_dim, kernel_initializer=seeds(), dtype="float32", name="projection")(x)
    return keras.Model(features, projection, name="projection_head")


def build_scaling() -> layers.Rescaling:
    """The layer in front of every encoder: 0..255 pixel values to [-1, 1]."""
    return layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="scale")


def encoder_of(classifier: keras.Model) -> keras.Model:
    """The encoder inside a classifier ``build_classifier`` made: ``<arch>_classifier`` holds ``<arch>_encoder``."""
    return classifier.get_layer(classifier.name.removesuffix("_classifier") + "_encoder")


def encode_with(encoder: keras.Model, batch_size: int = INFERENCE_BATCH):
    """images (N, H, W, 3) 0..255 -> the encoder's features (N, C), in inference mode."""
    def encode(images: np.ndarray) -> np.ndarray:
        scaled = images.astype("float32") * PIXEL_SCALE + PIXEL_OFFSET
        return np.asarray(encoder.predict(scaled, batch_size=batch_size, verbose=0), dtype="float32")
    return encode
