"""The consistency-training flow: FixMatch-family methods beside the baseline they start from.

split -> baseline -> evaluate, then for each method of the SSL registry (fixmatch, freematch):
consistency -> evaluate under one MLflow run per method. With ``consistency.warm_start`` each
method continues from the baseline's weights (the baseline artifact is the stage's ``model``
input); otherwise it trains a fresh network. The comparison table lands in the parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from pipelines.config import PipelineConfig, consistency_grid, load_pipeline_config
from pipelines.flow import baseline_steps, configuration_run, log_comparison, pipeline_run, train_minutes
from stages.lib.catalog import read_metrics


@flow(name="ssl-consistency")
def consistency_pipeline(config: PipelineConfig = load_pipeline_config(), methods: list[str] | None = None,
                         launcher: str = "in-process", data: str | None = None,
                         start_model: str | None = None) -> dict[str, Any]:
    """Train each consistency method, evaluate it on test, and compare it with the baseline.

    ``start_model``: a finished baseline artifact to use instead of training one (its split is the
    one recorded in its manifest).
    """
    grid = consistency_grid(config.consistency, methods)  # a bad grid fails before any work
    rows = []
    with pipeline_run(config, launcher) as (steps, metrics):
        split, model = baseline_steps(steps, config, data, start_model)
        baseline_test = read_metrics(steps.run("evaluate", config.evaluate, {"split": split, "model": model}))["test_accuracy"]
        for method in grid:
            inputs: dict[str, Path] = {"split": split, **({"model": model} if method.warm_start else {})}
            with configuration_run(steps, method.method, {"preset": config.preset, "consistency": method.model_dump()}) as (
                    nested, run_metrics):
                trained = nested.run("consistency", method, inputs)
                evaluation = nested.run("evaluate", config.evaluate, {"split": split, "model": trained})
                run_metrics.update({**read_metrics(trained), **read_metrics(evaluation), "train_minutes": train_minutes(trained)})
            rows.append({"method": method.method, "warm_start": method.warm_start, "steps": run_metrics["steps"],
                         "images_per_second": run_metrics["images_per_second"],
                         "val_accuracy": run_metrics["best_val_accuracy"], "test_accuracy": run_metrics["test_accuracy"],
                         "vs_baseline_pts": round(100 * (run_metrics["test_accuracy"] - baseline_test), 2)})
        log_comparison(steps.parent_run_id, rows)
        metrics.update({"baseline_test_accuracy": baseline_test,
                        **{f"{row['method']}_test_accuracy": row["test_accuracy"] for row in rows}})
    return {**metrics, "mlflow_run_id": steps.parent_run_id, "table": rows}
