"""The pipeline's configuration: every stage's config under one validated model, built from a preset.

A preset (``pipelines/presets/<name>.yaml``) overrides the defaults of the stage config classes,
which are the seed study's own hyperparameters. Where one section starts from another (the
methods train the network they are meant to improve), the data says so with ``inherit``:

    consistency:
      classifier: {inherit: baseline, batch_size: 64}   # the baseline's section, then these fields

``INHERITED`` gives the sections that inherit unless a preset says otherwise (``inherit: null``
stands alone). ``resolve_inheritance`` applies the rule once, before validation, and
``ssl-pipeline config`` prints what each section took.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from pipelines.launchers import ResourcesConfig
from pipelines.presets import DEFAULT_PRESET, Preset, preset_overrides
from stages.consistency import ConsistencyConfig
from stages.evaluate import EvaluateConfig
from stages.fine_tune import EncoderFineTuneConfig
from stages.lib.config import ConfigError, StrictModel, deep_merge, flat_fields
from stages.lib.errors import InvalidSetting
from stages.lib.seed_study import EXPERIMENTS, UNLABELED_SETS
from stages.lib.training import TrainConfig
from stages.outliers import OutlierConfig
from stages.predict import PredictConfig
from stages.pretrain import PretrainConfig
from stages.self_train import SelfTrainConfig
from stages.split import SplitConfig

INHERIT = "inherit"
# section field -> the field it starts from: each method is compared with the network it improves
INHERITED = {
    "pretrain.architecture": "baseline.architecture",
    "pretrain.autoencoder.augment": "baseline.augment",
    "fine_tune.classifier": "baseline",
    "consistency.classifier": "baseline",
    "outliers.one_class_nn.architecture": "baseline.architecture",
}


class BudgetConfig(StrictModel):
    """The wall-clock budget of ``ssl-pipeline run``: from the command's start to its table, setup,
    evaluation and tracking included. The run gives the baseline ``supervised_share`` of the training
    time left once the split is made (less ``reserve_minutes`` for the stages' setup, evaluation and
    tracking), and the SSL method what is left once the baseline is evaluated, less what the baseline's
    setup and evaluation measured. Each becomes that stage's ``time_budget_minutes``."""

    minutes: float | None = Field(None, gt=0, description="the run's wall-clock budget; None = the stages' own epochs")
    supervised_share: float = Field(0.4, gt=0, lt=1, description="share of the training time for the supervised baseline")
    reserve_minutes: float = Field(1.5, ge=0, description="kept for setup, evaluation and tracking until they are measured")

    @model_validator(mode="after")
    def _room_to_train(self) -> BudgetConfig:
        if self.minutes is not None and self.minutes <= self.reserve_minutes:
            raise ValueError(f"a budget of {self.minutes:g} minutes leaves nothing to train once reserve_minutes "
                             f"({self.reserve_minutes:g}) are set aside: give more minutes")
        return self


class PipelineConfig(StrictModel):
    """Every stage's config; each flow reads the sections of the stages it runs."""

    preset: Preset = Field(description="name of the preset this config started from (what ssl.overrides compares with)")
    budget: BudgetConfig = BudgetConfig()
    resources: ResourcesConfig = ResourcesConfig()
    split: SplitConfig = SplitConfig()
    baseline: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    self_training: SelfTrainConfig = SelfTrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    fine_tune: EncoderFineTuneConfig = EncoderFineTuneConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    outliers: OutlierConfig = OutlierConfig()
    predict: PredictConfig = PredictConfig()


def resolve_inheritance(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, list[str]]]]:
    """``data`` with every ``inherit`` replaced by the resolved values of the field it names (the preset's
    and the defaults), merged under the fields set beside it; and, per inheriting field, (its source,
    the dotted fields it sets itself). Raises ``ValidationError`` where a source section is invalid."""
    data = copy.deepcopy(dict(data))
    for target, source in INHERITED.items():
        if (node := _node(data, target, create=True)) is not None:  # else validation names the bad section
            node.setdefault(INHERIT, source)
    targets = _inheriting(data)
    for target in targets:
        source = _node(data, target)[INHERIT]
        if source is not None and any(f"{source}.".startswith(f"{other}.") for other in targets):
            raise InvalidSetting(f"{target}.{INHERIT}: {source} inherits too: name a section that holds its own values")
    without_targets = copy.deepcopy(data)
    for target in targets:
        parent, _, leaf = target.rpartition(".")
        (_node(without_targets, parent) if parent else without_targets).pop(leaf)
    resolved = PipelineConfig.model_validate(without_targets).model_dump(mode="json")
    taken: dict[str, tuple[str, list[str]]] = {}
    for target in targets:
        node = _node(data, target)
        source = node.pop(INHERIT)
        if source is None:
            continue
        if _node(resolved, source) is None:
            raise InvalidSetting(f"{target}.{INHERIT}: {source!r} is not a section of the configuration; name one such "
                             "as baseline or baseline.architecture")
        taken[target] = (source, sorted(flat_fields(node)))
        merged = deep_merge(_node(resolved, source), node)
        node.clear()
        node.update(merged)
    return data, taken


def _inheriting(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of the sections that hold an ``inherit`` key."""
    found = [prefix.rstrip(".")] if INHERIT in data else []
    for key, value in data.items():
        if isinstance(value, dict):
            found += _inheriting(value, f"{prefix}{key}.")
    return found


def _node(data: dict[str, Any], path: str, create: bool = False) -> dict[str, Any] | None:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        if part not in node and create:
            node[part] = {}
        node = node.get(part)
    return node if isinstance(node, dict) else None


def preset_differences(config: PipelineConfig) -> dict[str, Any]:
    """The fields whose values ``config`` changed from its preset's (what ``--config`` and ``--set`` did),
    by dotted name, with this config's values."""
    preset = flat_fields(load_pipeline_config(config.preset).model_dump(mode="json"))
    return {key: value for key, value in flat_fields(config.model_dump(mode="json")).items() if preset.get(key) != value}


def parse_assignment(text: str) -> dict[str, Any]:
    """``"baseline.seed=1"`` -> ``{"baseline": {"seed": 1}}`` (the value is parsed as YAML)."""
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise InvalidSetting(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. baseline.seed=1")
    nested: dict[str, Any] = {}
    node = nested
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    return nested


def pipeline_data(preset: str, overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A preset's data with the overrides merged in, before inheritance and validation."""
    data = {"preset": preset, **preset_overrides(preset)}
    for override in overrides or []:
        data = deep_merge(data, override)
    return data


def load_pipeline_config(
    preset: str = DEFAULT_PRESET, overrides: list[dict[str, Any]] | None = None, source: str = "overrides"
) -> PipelineConfig:
    """Build a config from a preset and override dicts; errors name the field and the fix."""
    return resolve_pipeline_config(preset, overrides, source)[0]


def resolve_pipeline_config(
    preset: str, overrides: list[dict[str, Any]] | None, source: str
) -> tuple[PipelineConfig, dict[str, tuple[str, list[str]]]]:
    """``load_pipeline_config``'s config, and what each inheriting section took (``resolve_inheritance``)."""
    try:
        resolved, taken = resolve_inheritance(pipeline_data(preset, overrides))
        return PipelineConfig.model_validate(resolved), taken
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


def study_grid(config: PipelineConfig, seeds: list[int] | None, experiments: list[str] | None,
               unlabeled: list[str] | None) -> tuple[list[int], list[str], list[str]]:
    """The study's training seeds, experiments and unlabeled sets, checked; none given = the config's
    seed, every experiment, both sets."""
    experiments, unlabeled = experiments or list(EXPERIMENTS), unlabeled or list(UNLABELED_SETS)
    for given, known, what in ((experiments, EXPERIMENTS, "experiment"), (unlabeled, UNLABELED_SETS, "unlabeled set")):
        unknown = [name for name in given if name not in known]
        if unknown:
            raise InvalidSetting(f"unknown {what} {', '.join(map(repr, unknown))} in the study grid; choose from {', '.join(known)}")
    return seeds or [config.baseline.seed], experiments, unlabeled


def with_training_seed(config: PipelineConfig, seed: int) -> PipelineConfig:
    """``config`` with every training seed set to ``seed`` (the split's own seed stays)."""
    return PipelineConfig.model_validate(deep_merge(config.model_dump(), {
        "baseline": {"seed": seed}, "pretrain": {"seed": seed}, "outliers": {"one_class_nn": {"seed": seed}},
        "fine_tune": {"classifier": {"seed": seed}}, "consistency": {"classifier": {"seed": seed}}}))


def _grid_point(config_type: type[StrictModel], base: StrictModel, override: dict[str, Any], source: str):
    try:
        return config_type.model_validate(deep_merge(base.model_dump(), override))
    except ValidationError as error:
        raise ConfigError(source, error) from None
