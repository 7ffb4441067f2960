"""Validated configuration: one frozen pydantic model per stage, presets as YAML data.

Field defaults are the seed study's own hyperparameters (``../shared/SEED.md``, exercise 1), so
the ``seed`` preset is the default and every other preset is a small override of it.
Infrastructure (paths, tracking URI, launcher, image names) never lives here: it comes from the
environment. What a run asks of the machine (GPUs, CPUs, memory) does: a preset that needs a GPU
says so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NUM_CLASSES = 100
TRAIN_IMAGES_PER_CLASS = 500  # CIFAR-100's official training set


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(StrictModel):
    labels_per_class: int = Field(90, ge=1, description="labeled training images per class")
    val_per_class: int = Field(10, ge=1, description="labeled validation images per class")
    unlabeled_per_class: int | None = Field(
        None, ge=0, description="unlabeled images per class; None = every image left over"
    )
    test_per_class: int | None = Field(
        None, ge=1, le=100, description="test images per class; None = the whole official test set"
    )
    seed: int = Field(0, description="seed of the per-class shuffle")

    @model_validator(mode="after")
    def _fits_in_cifar(self) -> SplitConfig:
        used = self.labels_per_class + self.val_per_class + (self.unlabeled_per_class or 0)
        if used > TRAIN_IMAGES_PER_CLASS:
            raise ValueError(
                f"labels_per_class + val_per_class + unlabeled_per_class = {used}, but CIFAR-100 "
                f"has {TRAIN_IMAGES_PER_CLASS} training images per class: lower one of them"
            )
        return self


class AugmentConfig(StrictModel):
    """Augmentation as Keras layers at the model input; active in training only."""

    flip: bool = Field(True, description="random horizontal flip")
    rotation: float = Field(0.05, ge=0, le=0.5, description="max rotation, fraction of a full turn")
    zoom: float = Field(0.1, ge=0, lt=1, description="max zoom in or out, fraction of the side")
    translation: float = Field(0.1, ge=0, lt=1, description="max shift, fraction of the side")
    blur_sigma: float = Field(0.5, ge=0, description="max Gaussian blur sigma, pixels; 0 = off")


class ArchitectureConfig(StrictModel):
    """``vgg``: blocks of ``convs_per_block`` (3x3 conv, BatchNorm, ReLU) and a max-pool. ``wrn``: a
    wide ResNet, one group of ``convs_per_block`` residual blocks per entry of ``filters``
    (WRN-28-2: filters (32, 64, 128), 4 blocks per group)."""

    name: Literal["vgg", "wrn"] = Field("vgg", description="key in stages.models.ARCHITECTURES")
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


class Schedule(StrictModel):
    """A config with ``epochs`` and ``warmup_epochs``: the warm-up must end inside the schedule."""

    @model_validator(mode="after")
    def _warmup_inside_schedule(self) -> Schedule:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


class TrainConfig(Schedule):
    architecture: ArchitectureConfig = ArchitectureConfig()
    augment: AugmentConfig = AugmentConfig()
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(100, ge=1, description="maximum epochs; the cosine decay spans all of them")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="sgd = Nesterov momentum 0.9 (FixMatch's)")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up to the peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled weight decay on every weight: each step "
                                "multiplies it by 1 - learning_rate * weight_decay, which SGD's momentum does not "
                                "amplify (PyTorch's coupled weight_decay is architecture.l2)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping_patience: int | None = Field(
        4, ge=1, description="epochs without val improvement before stopping; None = never stop"
    )
    select_on: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="validation metric that picks the epoch whose weights are kept"
    )
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    seed: int = Field(0, description="seed of initialisation, shuffling and augmentation")


class EvaluateConfig(StrictModel):
    batch_size: int = Field(500, ge=1, description="inference batch size")
    # +0.40 to +0.61 pts top-1 on the 40,000 unlabeled images for each of four quick-preset models that
    # never saw them, where 1,000 validation images cannot resolve it (bench/results/flip-average-quick.md)
    flip_average: bool = Field(True, description="predict the mean of the softmax of each image and of its mirror "
                               "image (for models trained with random flips; off for the single view alone)")


class PseudoLabelConfig(StrictModel):
    """Which predictions on the unlabeled set become pseudo-labels."""

    threshold: float = Field(0.85, gt=0, le=1, description="keep predictions whose confidence is at least this")
    max_per_class: int | None = Field(
        None, ge=1, description="keep at most this many per predicted class, the most confident; None = no cap"
    )
    batch_size: int = Field(500, ge=1, description="inference batch size")


class FineTuneConfig(Schedule):
    """How each self-training iteration retrains the previous model; everything not named here
    (architecture, augmentation, batch size, weight decay, precision, ...) is the input model's own."""

    epochs: int = Field(10, ge=1, description="epochs per iteration; the cosine decay spans them")
    learning_rate: float = Field(5e-4, gt=0, description="peak learning rate, below the baseline's")
    warmup_epochs: int = Field(0, ge=0)
    dropout_increase: float = Field(0.05, ge=0, lt=1, description="added to every dropout rate of the model")
    l2_increase: float = Field(0.001, ge=0, description="added to the L2 penalty of the model")
    early_stopping_patience: int | None = Field(
        4, ge=1, description="epochs without val improvement before the iteration stops; None = never"
    )


class SelfTrainConfig(StrictModel):
    """Self-training: pseudo-label -> retrain on labeled + selected -> validate, ``iterations`` times."""

    iterations: int = Field(4, ge=1, description="pseudo-label/retrain rounds")
    selection: PseudoLabelConfig = PseudoLabelConfig()
    labeled_weight: float = Field(2.0, gt=0, description="sample weight of every labeled image")
    pseudo_weight: Literal["confidence", "one"] = Field(
        "confidence", description="sample weight of a pseudo-labeled image: its confidence, or 1"
    )
    fine_tune: FineTuneConfig = FineTuneConfig()


class ViewAugmentConfig(StrictModel):
    """SimCLR's views of an image: random crop-resize, flip, colour jitter, grayscale, blur."""

    crop_area: float = Field(0.2, gt=0, le=1, description="smallest crop, as a fraction of the image area")
    jitter: float = Field(0.4, ge=0, le=1, description="brightness, contrast and saturation jitter; hue = jitter / 4")
    grayscale: float = Field(0.2, ge=0, le=1, description="probability that a view is grayscale")
    blur_sigma: float = Field(0.0, ge=0, description="max Gaussian blur sigma, pixels; 0 = off (CIFAR is 32 px)")


class PretrainConfig(Schedule):
    """Unsupervised pretraining of the shared encoder on labeled + unlabeled images."""

    objective: Literal["autoencoder", "simclr"] = Field("autoencoder", description="key in stages.objectives.OBJECTIVES")
    architecture: ArchitectureConfig = ArchitectureConfig()
    augment: AugmentConfig = Field(AugmentConfig(), description="autoencoder: the input augmentation")
    views: ViewAugmentConfig = Field(ViewAugmentConfig(), description="simclr: how each of the two views is made")
    batch_size: int = Field(512, ge=2, description="images per step (simclr: 2x as many views)")
    epochs: int = Field(15, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    warmup_epochs: int = Field(0, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    clipnorm: float | None = Field(1.0, gt=0, description="gradient norm clip; None = no clipping")
    temperature: float = Field(0.2, gt=0, description="simclr: NT-Xent temperature")
    projection_units: int = Field(256, ge=1, description="simclr: projection head hidden width")
    projection_dim: int = Field(128, ge=1, description="simclr: embedding size the loss compares")
    probe_every: int = Field(1, ge=0, description="k-NN probe of validation accuracy every N epochs; 0 = never")
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    seed: int = 0


class EncoderFineTuneConfig(StrictModel):
    """A classifier on a pretrained encoder.

    ``two_step``: the dense head on the frozen encoder (``classifier``'s schedule), then optionally
    every layer for ``unfreeze_epochs`` at ``unfreeze_learning_rate``. ``joint``: classification on
    labeled batches plus the encoder's pretraining objective on batches of all images,
    ``(1 - joint_weight) * classification + (1 + joint_weight) * unsupervised``, from the
    pretrained weights or (``from_scratch``) from a fresh network.
    """

    mode: Literal["two_step", "joint"] = "two_step"
    classifier: TrainConfig = TrainConfig()
    unfreeze_epochs: int = Field(0, ge=0, description="two_step: epochs training every layer after the head")
    unfreeze_learning_rate: float = Field(1e-4, gt=0, description="two_step: peak learning rate once unfrozen")
    joint_weight: float = Field(0.5, ge=-1, le=1, description="joint: a; the seed used 0.5")
    unlabeled_batch_size: int = Field(256, ge=2, description="joint: images per step for the unsupervised term")
    from_scratch: bool = Field(False, description="joint: ignore the pretrained weights")
    recalibrate_batchnorm: bool = Field(
        True, description="joint: before each validation, re-estimate BatchNorm's statistics on the labeled images "
                          "(the moving ones also average the objective's augmented views)")


class StrongAugmentConfig(StrictModel):
    """FixMatch's strong view: RandAugment (ops drawn per image) then Cutout, on top of the weak one."""

    num_ops: int = Field(2, ge=0, description="RandAugment operations per image")
    magnitude: float = Field(0.5, ge=0, le=1, description="RandAugment strength, 0..1 (magnitudes drawn up to it)")
    cutout: float = Field(0.5, ge=0, lt=1, description="largest erased square side, fraction of the image; 0 = off")


class ConsistencyConfig(StrictModel):
    """Consistency SSL (FixMatch family): per step a labeled batch and ``unlabeled_ratio`` times as
    many unlabeled images; the prediction on a weak view, where the method trusts it, is the target
    of the prediction on a strong view. Evaluated and kept with the optimizer's EMA weights.

    ``classifier`` gives the network, the weak augmentation, the labeled batch size and the
    optimizer; an epoch is ``steps_per_epoch`` steps. ``warm_start`` continues from a trained
    classifier of that network (the flows pass the baseline's) instead of fresh weights.
    """

    method: Literal["fixmatch", "freematch"] = Field("fixmatch", description="key in stages.ssl_methods.METHODS")
    classifier: TrainConfig = TrainConfig()
    warm_start: bool = Field(False, description="start from the weights of the input model instead of fresh ones")
    steps_per_epoch: int = Field(256, ge=1, description="training steps between two validations")
    unlabeled_ratio: int = Field(7, ge=1, description="mu: unlabeled images per labeled image in a step")
    unlabeled_weight: float = Field(1.0, ge=0, description="lambda_u: weight of the unlabeled loss")
    threshold: float = Field(0.95, gt=0, le=1, description="fixmatch: confidence a pseudo-label needs")
    adaptive_momentum: float = Field(0.999, gt=0, lt=1, description="freematch: EMA momentum of its thresholds")
    ema_momentum: float = Field(0.999, gt=0, lt=1, description="EMA of the weights that are evaluated and kept")
    concatenate_views: bool = Field(
        True, description="one training-mode pass over the labeled, weak and strong views, so BatchNorm normalises them "
                          "together (USB's use_cat); false: the weak view in a pass of its own outside the gradient, "
                          "which spares its backward pass")
    target_view: Literal["weak", "clean"] = Field(
        "weak", description="what the targets are predicted from. weak: the weak view (the classifier's flip and shift) "
                            "in a training-mode pass, FixMatch as published; clean: the images as they are, in an "
                            "inference-mode pass (no dropout, BatchNorm's moving statistics), as self-training labels "
                            "the unlabeled set, so the classifier can keep its dropout without blurring the targets. "
                            "Needs concatenate_views false")
    strong_fraction: float = Field(
        1.0, gt=0, le=1, description="share of each unlabeled batch given a strong view: the images with a target "
                                     "first, the surest first. 1 = all (FixMatch as published); below the mask rate, "
                                     "targets go unused (the capped_rate metric). Needs concatenate_views false")
    strong: StrongAugmentConfig = StrongAugmentConfig()
    time_budget_minutes: float | None = Field(
        None, gt=0, description="stop before an epoch would overrun this; the learning rate then follows the "
                                "budget's clock instead of the step count. None = run every epoch"
    )

    @model_validator(mode="after")
    def _strong_share_after_the_weak_pass(self) -> ConsistencyConfig:
        if self.strong_fraction < 1 and self.concatenate_views:
            raise ValueError(f"strong_fraction {self.strong_fraction} picks the strong views from the weak view's "
                             "predictions, which a shared pass gives too late: set concatenate_views to false, "
                             "or strong_fraction to 1")
        if self.target_view == "clean" and self.concatenate_views:
            raise ValueError("target_view clean predicts the targets in an inference-mode pass of their own, which a "
                             "shared training-mode pass cannot give: set concatenate_views to false, or target_view to weak")
        return self


class OutlierConfig(Schedule):
    """Which unlabeled images are atypical of the labeled ones (the seed's exercise 5).

    ``one_class_nn``: soft-boundary Deep SVDD on the shared encoder (``architecture``, fresh
    weights) trained on the labeled images: features are pulled into a sphere around their initial
    mean whose radius leaves a fraction ``nu`` of the labeled images outside. Its BatchNorm layers
    stay frozen at their initial identity, so the network has no bias term to collapse every image
    onto the centre with. ``one_class_svm``: scikit-learn's OneClassSVM (RBF) on the frozen
    encoder features of the input ``model``, the reference. In both, ``nu`` is the fraction of the
    labeled images outside the boundary, and an unlabeled image is kept when it falls inside.
    """

    scorer: Literal["one_class_nn", "one_class_svm"] = Field("one_class_nn", description="key in stages.outliers.SCORERS")
    nu: float = Field(0.1, gt=0, le=1, description="fraction of the labeled images left outside the boundary; the seed's "
                                                   "v = 0.9 kept 89.8%, so it counted the inside (see README)")
    architecture: ArchitectureConfig = ArchitectureConfig()
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(10, ge=1, description="one_class_nn: epochs over the labeled images")
    learning_rate: float = Field(1e-3, gt=0, description="one_class_nn: peak AdamW learning rate")
    warmup_epochs: int = Field(0, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


class ResourcesConfig(StrictModel):
    """What each stage container asks of the engine; the in-process and subprocess launchers run
    with whatever their process has. Not part of any cache key: results do not depend on it."""

    gpus: int = Field(0, ge=0, description="GPUs reserved per stage container")
    cpus: float | None = Field(None, gt=0, description="CPU limit per stage container; None = no limit")
    memory_gb: float | None = Field(None, gt=0, description="memory limit per stage container, GiB")


Preset = Literal["smoke", "quick", "seed", "gpu", "ssl-gpu"]  # the files in stages/presets/


class PipelineConfig(StrictModel):
    """Every stage's config; each flow reads the sections of the stages it runs."""

    preset: Preset = Field("seed", description="name of the preset this config started from (what ssl.overrides compares with)")
    resources: ResourcesConfig = ResourcesConfig()
    split: SplitConfig = SplitConfig()
    baseline: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    self_training: SelfTrainConfig = SelfTrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    fine_tune: EncoderFineTuneConfig = EncoderFineTuneConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    outliers: OutlierConfig = OutlierConfig()

    @model_validator(mode="before")
    @classmethod
    def _encoder_follows_the_baseline(cls, data: Any) -> Any:
        """Unless set, the pretrained encoder (architecture and augmentation) and the one-class network
        (architecture) are the baseline's, and the fine-tuned and consistency-trained classifiers train
        like it, so each method is compared with the network it is meant to improve."""
        if not isinstance(data, dict) or not isinstance(data.get("baseline", {}), dict):
            return data
        baseline = data.get("baseline", {})
        pretrain = dict(data.get("pretrain", {}))
        pretrain.setdefault("architecture", baseline.get("architecture", {}))
        pretrain.setdefault("augment", baseline.get("augment", {}))
        outliers = dict(data.get("outliers", {}))
        outliers.setdefault("architecture", baseline.get("architecture", {}))
        followers = {name: dict(data.get(name, {})) for name in ("fine_tune", "consistency")}
        for section in followers.values():
            section["classifier"] = deep_merge(baseline, section.get("classifier", {}))
        return {**data, "pretrain": pretrain, "outliers": outliers, **followers}


PRESETS = get_args(Preset)


def preset_overrides(name: str) -> dict[str, Any]:
    """The override dict of a preset, as stored in ``stages/presets/<name>.yaml``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("stages.presets").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def flat_fields(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a nested config by dotted field name (as ``--set`` and MLflow params name them)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flat_fields(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def preset_differences(config: PipelineConfig) -> dict[str, Any]:
    """The fields whose values ``config`` changed from its preset's (what ``--config`` and ``--set`` did),
    by dotted name, with this config's values."""
    preset = flat_fields(load_pipeline_config(config.preset).model_dump(mode="json"))
    return {key: value for key, value in flat_fields(config.model_dump(mode="json")).items() if preset.get(key) != value}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignment(text: str) -> dict[str, Any]:
    """``"baseline.seed=1"`` -> ``{"baseline": {"seed": 1}}`` (the value is parsed as YAML)."""
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise ValueError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. baseline.seed=1")
    nested: dict[str, Any] = {}
    node = nested
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    return nested


def load_pipeline_config(
    preset: str, overrides: list[dict[str, Any]] | None = None, source: str = "overrides"
) -> PipelineConfig:
    """Build a config from a preset and override dicts; errors name the field and the fix."""
    data = {"preset": preset, **preset_overrides(preset)}
    for override in overrides or []:
        data = deep_merge(data, override)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, error) from None


def sweep_grid(config: SelfTrainConfig, thresholds: list[float] | None,
               iterations: list[int] | None) -> list[SelfTrainConfig]:
    """One validated config per (threshold, iterations); a missing axis keeps the config's value."""
    return [
        _grid_point(SelfTrainConfig, config, {"iterations": count, "selection": {"threshold": threshold}},
                    f"the sweep grid (threshold {threshold}, iterations {count})")
        for threshold in thresholds or [config.selection.threshold]
        for count in iterations or [config.iterations]
    ]


def pretraining_grid(config: PipelineConfig, objectives: list[str] | None,
                     modes: list[str] | None) -> list[tuple[PretrainConfig, EncoderFineTuneConfig]]:
    """One validated (pretrain, fine_tune) pair per (objective, mode); a missing axis keeps the config's."""
    return [
        (_grid_point(PretrainConfig, config.pretrain, {"objective": objective}, f"the pretraining grid (objective {objective})"),
         _grid_point(EncoderFineTuneConfig, config.fine_tune, {"mode": mode}, f"the pretraining grid (mode {mode})"))
        for objective in objectives or [config.pretrain.objective]
        for mode in modes or [config.fine_tune.mode]
    ]


def consistency_grid(config: ConsistencyConfig, methods: list[str] | None) -> list[ConsistencyConfig]:
    """One validated config per SSL method; none given keeps the config's."""
    return [_grid_point(ConsistencyConfig, config, {"method": method}, f"the consistency methods ({method})")
            for method in methods or [config.method]]


# the seed study's experiments (../shared/SEED.md, exercises 1-4 and 6), as the study flow names them
EXPERIMENTS = ("baseline", "self_training", "autoencoder_two_step", "autoencoder_joint", "simclr_two_step", "simclr_joint")
UNLABELED_SETS = ("all", "filtered")  # every unlabeled image, or those the outlier stage keeps


def study_grid(config: PipelineConfig, seeds: list[int] | None, experiments: list[str] | None,
               unlabeled: list[str] | None) -> tuple[list[int], list[str], list[str]]:
    """The study's training seeds, experiments and unlabeled sets, checked; none given = the config's
    seed, every experiment, both sets."""
    experiments, unlabeled = experiments or list(EXPERIMENTS), unlabeled or list(UNLABELED_SETS)
    for given, known, what in ((experiments, EXPERIMENTS, "experiment"), (unlabeled, UNLABELED_SETS, "unlabeled set")):
        unknown = [name for name in given if name not in known]
        if unknown:
            raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))} in the study grid; choose from {', '.join(known)}")
    return seeds or [config.baseline.seed], experiments, unlabeled


def with_training_seed(config: PipelineConfig, seed: int) -> PipelineConfig:
    """``config`` with every training seed set to ``seed`` (the split's own seed stays)."""
    return PipelineConfig.model_validate(deep_merge(config.model_dump(), {
        "baseline": {"seed": seed}, "pretrain": {"seed": seed}, "outliers": {"seed": seed},
        "fine_tune": {"classifier": {"seed": seed}}, "consistency": {"classifier": {"seed": seed}}}))


def _grid_point(config_type: type[StrictModel], base: StrictModel, override: dict[str, Any], source: str):
    try:
        return config_type.model_validate(deep_merge(base.model_dump(), override))
    except ValidationError as error:
        raise ConfigError(source, error) from None


class ConfigError(ValueError):
    """A configuration that failed validation, with one line per bad field."""

    def __init__(self, source: str, error: ValidationError):
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            + ("not a field here: remove it or correct its spelling" if e["type"] == "extra_forbidden" else e["msg"])
            + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in error.errors()
        ]
        super().__init__(f"invalid configuration in {source}:\n" + "\n".join(lines)
                         + "\n`ssl-pipeline config --preset NAME` prints every field with its valid value")
