"""The main job: semi-supervised learning within a wall-clock budget.

split -> baseline -> evaluate, then the preset's SSL method (``consistency.method``) continuing
from the baseline -> evaluate. Every classifier becomes a version of the registered model, whose
``champion`` alias follows validation. With ``budget.minutes`` the run keeps a wall-clock budget
counted from the command's start: ``Plan`` gives each training stage the minutes left for it, so
its learning rate follows the planned length on whatever machine runs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import flow, task

from pipelines import settings, tracking
from pipelines.config import BudgetConfig, PipelineConfig, consistency_grid, load_pipeline_config
from pipelines.engine import SEQUENTIAL
from pipelines.flow import Steps, is_transient, locate_data, pipeline_run
from stages.consistency import ConsistencyConfig
from stages.evaluate import EvaluateConfig
from stages.lib.catalog import read_metrics, split_counts
from stages.lib.errors import InvalidSetting
from stages.lib.models import resolve_precision
from stages.lib.training import TrainConfig

log = logging.getLogger(__name__)
FINISHING_MINUTES = 0.25  # the table, the registry's champion and closing the run


@dataclass
class Plan:
    """The budget as the run spends it: minutes are wall clock from ``started`` (a Unix time)."""

    budget: BudgetConfig
    started: float
    supervised_share: float  # of the training time: the budget's, or 1 with no SSL method to follow

    def minutes_spent(self) -> float:
        return (time.time() - self.started) / 60

    def minutes_left(self) -> float:
        return self.budget.minutes - self.minutes_spent()

    def supervised_minutes(self) -> float:
        """The baseline's share of the training time left, once the reserve is set aside."""
        return self._positive(self.supervised_share * (self.minutes_left() - self.budget.reserve_minutes),
                              "the supervised baseline")

    def ssl_minutes(self, overhead_minutes: float) -> float:
        """What is left, less the setup, evaluation and tracking that the baseline measured."""
        return self._positive(self.minutes_left() - overhead_minutes - FINISHING_MINUTES, "the SSL method")

    def _positive(self, minutes: float, what: str) -> float:
        if minutes <= 0:
            raise InvalidSetting(f"the budget of {self.budget.minutes:g} minutes leaves no time for {what}: "
                             "give --minutes more time")
        return round(minutes, 2)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def log_plan(parent_run_id: str, params: dict[str, Any]) -> None:
    tracking.log_params(parent_run_id, params)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def log_training_data(parent_run_id: str, split: Path) -> None:
    tracking.log_split_datasets(parent_run_id, split)


def budgeted(config: TrainConfig, minutes: float | None) -> TrainConfig:
    return config if minutes is None else config.model_copy(update={"time_budget_minutes": minutes})


@flow(name="ssl-semi-supervised", task_runner=SEQUENTIAL)
def semi_supervised_pipeline(config: PipelineConfig = load_pipeline_config(), launcher: str = "in-process",
                             data: str | None = None, started: float | None = None,
                             supervised_only: bool = False) -> dict[str, Any]:
    """The supervised baseline, then the preset's SSL method from it, both evaluated on test.

    ``data``: the path of the source ``config.split.data.source`` reads (default, for CIFAR-100: the
    archive from $CIFAR100_ARCHIVE or the download).
    ``started``: the Unix time the budget counts from (the command's start; default: the flow's).
    ``supervised_only``: the baseline alone, given the whole budget (the control of the SSL method);
    so it is too for data without unlabeled images.
    """
    started = started or time.time()
    method = consistency_grid(config.consistency, None)[0]
    with pipeline_run(config, launcher) as (steps, metrics):
        split = steps.run("split", config.split, {"data": locate_data(config, data)})
        log_training_data(steps.parent_run_id, split)
        if not supervised_only and not split_counts(split)["unlabeled"]:
            log.warning("the data has no unlabeled images: the supervised baseline alone gets the budget")
            supervised_only = True
        plan = None
        if config.budget.minutes:
            plan = Plan(config.budget, started, 1.0 if supervised_only else config.budget.supervised_share)
        rows = {"supervised": supervised_part(steps, config, split, plan)}
        if not supervised_only:
            rows[method.method] = ssl_part(steps, config, method, split, rows["supervised"], plan)
        table = [{"method": name, "test_accuracy": read_metrics(part.evaluation)["test_accuracy"],
                  "val_accuracy": read_metrics(part.model)["best_val_accuracy"], "minutes": round(part.minutes, 2)}
                 for name, part in rows.items()]
        for prefix, row in zip(("supervised", "ssl"), table):
            metrics.update({f"{prefix}_{key}": row[key] for key in ("test_accuracy", "val_accuracy", "minutes")})
        metrics["total_minutes"] = round((time.time() - started) / 60, 2)
    artifacts = {"split": str(split), **{f"{name}_{kind}": str(getattr(part, kind)) for name, part in
                                         zip(("supervised", "ssl"), rows.values()) for kind in ("model", "evaluation")}}
    return {**metrics, "table": table, "method": method.method, "mlflow_run_id": steps.parent_run_id,
            "experiment_id": steps.experiment_id, "champion": tracking.champion_uri(settings.registered_model_name()),
            "artifacts": artifacts}


@dataclass(frozen=True)
class Trained:
    """A training stage's classifier, its evaluation on test, and the wall minutes of both."""

    model: Path
    evaluation: Path
    minutes: float  # the training stage with its tracking
    overhead_minutes: float  # all but the epochs: loading, building, saving, tracking, evaluating


def train_and_evaluate(steps: Steps, stage: str, config, inputs: dict[str, Path], evaluate: EvaluateConfig,
                       name: str) -> Trained:
    """Run a training stage and evaluate its classifier (the evaluation's MLflow run named after ``name``)."""
    started = time.perf_counter()
    model = steps.run(stage, config, inputs)
    trained = time.perf_counter()
    evaluation = replace(steps, label=name).run("evaluate", evaluate, {"split": inputs["split"], "model": model})
    # a model from the cache took its training time in another run
    overhead = max(time.perf_counter() - started - read_metrics(model)["train_seconds"], 0.0)
    return Trained(model, evaluation, (trained - started) / 60, overhead / 60)


def supervised_part(steps: Steps, config: PipelineConfig, split: Path, plan: Plan | None) -> Trained:
    minutes = plan.supervised_minutes() if plan else None
    if plan:
        precision = resolve_precision(config.baseline.precision)
        log.info("budget %.1f min: %.1f spent on setup and the split; the baseline gets %.1f (%s)", plan.budget.minutes,
                 plan.minutes_spent(), minutes, precision)
        log_plan(steps.parent_run_id, {"plan.budget_minutes": plan.budget.minutes, "plan.precision": precision,
                                       "plan.setup_minutes": round(plan.minutes_spent(), 2), "plan.supervised_minutes": minutes})
    return train_and_evaluate(steps, "baseline", budgeted(config.baseline, minutes), {"split": split}, config.evaluate,
                              "supervised")


def ssl_part(steps: Steps, config: PipelineConfig, method: ConsistencyConfig, split: Path, baseline: Trained,
             plan: Plan | None) -> Trained:
    minutes = plan.ssl_minutes(baseline.overhead_minutes) if plan else None
    if plan:
        speed = read_metrics(baseline.model)["images_per_second"]
        log.info("baseline: %.0f images/s, %.1f min of setup, evaluation and tracking; %s gets %.1f min",
                 speed, baseline.overhead_minutes, method.method, minutes)
        log_plan(steps.parent_run_id, {"plan.ssl_minutes": minutes,
                                       "plan.measured_overhead_minutes": round(baseline.overhead_minutes, 2),
                                       "plan.measured_baseline_images_per_second": speed})
    inputs = {"split": split, **({"model": baseline.model} if method.warm_start else {})}
    budgeted_method = method.model_copy(update={"classifier": budgeted(method.classifier, minutes)})
    return train_and_evaluate(steps, "consistency", budgeted_method, inputs, config.evaluate, method.method)
