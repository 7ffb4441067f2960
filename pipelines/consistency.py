"""The consistency-training flow: FixMatch-family methods beside the baseline they start from.

split -> baseline -> evaluate, then for each method of the SSL registry (fixmatch, freematch):
consistency -> evaluate under one MLflow run per method. With ``consistency.warm_start`` each
method continues from the baseline's weights (the baseline artifact is the stage's ``model``
input); otherwise it trains a fresh network. The comparison table lands in the parent run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from pipelines.config import PipelineConfig, consistency_grid, load_pipeline_config
from pipelines.engine import SEQUENTIAL
from pipelines.flow import Configuration, baseline_steps, configuration_steps, finish_all, log_comparison, pipeline_run
from stages.lib.catalog import read_metrics


@flow(name="ssl-consistency", task_runner=SEQUENTIAL)
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
        baseline_evaluation = steps.submit("evaluate", config.evaluate, {"split": split, "model": model})
        configurations = []
        for method in grid:
            nested = configuration_steps(steps, method.method, {"preset": config.preset, "consistency": method.model_dump()})
            trained = nested.submit("consistency", method, {"split": split, **({"model": model} if method.warm_start else {})})
            configurations.append(Configuration(nested, trained, nested.submit("evaluate", config.evaluate,
                                                                               {"split": split, "model": trained})))
        baseline_test = read_metrics(baseline_evaluation.artifact())["test_accuracy"]
        for method, (_, _, run_metrics) in zip(grid, finish_all(configurations), strict=True):
            rows.append({"method": method.method, "warm_start": method.warm_start, "steps": run_metrics["steps"],
                         "images_per_second": run_metrics["images_per_second"],
                         "val_accuracy": run_metrics["best_val_accuracy"], "test_accuracy": run_metrics["test_accuracy"],
                         "vs_baseline_pts": round(100 * (run_metrics["test_accuracy"] - baseline_test), 2)})
        log_comparison(steps.parent_run_id, rows)
        metrics.update({"baseline_test_accuracy": baseline_test,
                        **{f"{row['method']}_test_accuracy": row["test_accuracy"] for row in rows}})
    return {**metrics, "mlflow_run_id": steps.parent_run_id, "table": rows}
