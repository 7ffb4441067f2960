"""The self-training flow: one split and baseline, then a grid of self-training configurations.

split -> baseline -> evaluate, then for each (threshold, iterations) of the grid:
pseudo_label -> self_train -> evaluate, each configuration under its own MLflow run nested in
the flow's. Split, baseline and every pseudo_label of a threshold are cached stages, so the grid
pays for them once, and a rerun with one more grid point trains only that point. Every run of one
flow run carries the tag ``ssl.sweep``: ``tags.ssl.sweep = '<value>'`` lists them side by side.
The comparison table and figures land in ``<artifact root>/sweeps/<sweep>`` and the parent run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task
from prefect.runtime import flow_run

from pipelines import settings, tracking
from pipelines.config import PipelineConfig, load_pipeline_config, sweep_grid
from pipelines.engine import SEQUENTIAL
from pipelines.flow import (
    Configuration,
    StageRun,
    Steps,
    baseline_steps,
    configuration_steps,
    finish_all,
    is_transient,
    pipeline_run,
)
from stages.lib.artifacts import staged_output
from stages.lib.catalog import read_metrics
from stages.lib.reports import write_self_training_report
from stages.self_train import SelfTrainConfig

log = logging.getLogger(__name__)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def log_report(parent_run_id: str, report: Path) -> None:
    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_artifacts(str(report), "comparison")


def self_train_configuration(steps: Steps, config: SelfTrainConfig, pipeline: PipelineConfig, split: Path,
                             model: Path | StageRun, label: str = "") -> Configuration:
    """pseudo_label -> self_train -> evaluate under one nested run, submitted."""
    nested = configuration_steps(steps, f"{label}threshold={config.selection.threshold} iterations={config.iterations}",
                                 {"preset": pipeline.preset, "self_training": config.model_dump()})
    labels = nested.submit("pseudo_label", config.selection, {"split": split, "model": model})
    trained = nested.submit("self_train", config, {"split": split, "model": model, "pseudo_labels": labels})
    return Configuration(nested, trained, nested.submit("evaluate", pipeline.evaluate, {"split": split, "model": trained}))


@flow(name="ssl-self-training", task_runner=SEQUENTIAL)
def self_training_pipeline(config: PipelineConfig = load_pipeline_config(), thresholds: list[float] | None = None,
                           iterations: list[int] | None = None, launcher: str = "in-process",
                           data: str | None = None, start_model: str | None = None) -> dict[str, Any]:
    """Self-training over thresholds x iterations from one split and baseline; writes their comparison.

    ``start_model``: a finished baseline artifact to start from instead of training one (its split
    is the one recorded in its manifest).
    """
    grid = sweep_grid(config.self_training, thresholds, iterations)  # a bad grid fails before any work
    sweep = f"{flow_run.name}-{str(flow_run.id)[:8]}"
    report = settings.artifact_root() / "sweeps" / sweep
    with pipeline_run(config, launcher, {tracking.TAG_SWEEP: sweep}) as (steps, metrics):
        split, model = baseline_steps(steps, config, data, start_model)
        baseline_evaluation = steps.submit("evaluate", config.evaluate, {"split": split, "model": model})
        configurations = [self_train_configuration(steps, point, config, split, model) for point in grid]
        done = finish_all(configurations)
        baseline_evaluation = baseline_evaluation.artifact()
        with staged_output(report) as tmp:
            table = write_self_training_report(tmp, [st for st, _, _ in done], [ev for _, ev, _ in done], baseline_evaluation)
        log_report(steps.parent_run_id, report)
        best = table.loc[table["val_accuracy"].idxmax()]  # chosen on validation, never on test
        metrics.update({"baseline_test_accuracy": read_metrics(baseline_evaluation)["test_accuracy"],
                        "best_threshold": float(best["threshold"]), "best_iterations": int(best["iterations"]),
                        "best_val_accuracy": float(best["val_accuracy"]), "test_accuracy": float(best["test_accuracy"])})
    log.info("sweep %s: comparison in %s", sweep, report)
    return {**metrics, "sweep": sweep, "mlflow_run_id": steps.parent_run_id, "report": str(report),
            "table": table.to_dict("records")}
