"""The encoder-pretraining flow: each objective's encoder, fine-tuned each way, beside the baseline.

split -> baseline -> evaluate, then for each objective (autoencoder, simclr) and mode (two_step,
joint): pretrain -> fine_tune -> evaluate under one MLflow run per configuration. The pretrain
stage is cached, so the second mode of an objective reuses its encoder.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow

from pipelines.flow import baseline_steps, configuration_run, log_comparison, metrics_of, pipeline_run
from stages.config import PipelineConfig, pretraining_grid

log = logging.getLogger(__name__)


@flow(name="ssl-pretraining")
def pretraining_pipeline(config: PipelineConfig = PipelineConfig(), objectives: list[str] | None = None,
                         modes: list[str] | None = None, launcher: str = "in-process",
                         archive: str | None = None) -> dict[str, Any]:
    """Pretrain the baseline's encoder with each objective and fine-tune it each way; compare on test."""
    grid = pretraining_grid(config, objectives, modes)  # a bad grid fails before any work
    rows = []
    with pipeline_run(config, launcher) as (steps, metrics):
        split, model = baseline_steps(steps, config, archive)
        baseline_test = metrics_of(steps.run("evaluate", config.evaluate, {"split": split, "model": model}))["test_accuracy"]
        for pretrain, fine_tune in grid:
            name = f"{pretrain.objective} {fine_tune.mode}"
            params = {"preset": config.preset, "pretrain": pretrain.model_dump(), "fine_tune": fine_tune.model_dump()}
            with configuration_run(steps, name, params) as (nested, run_metrics):
                encoder = nested.run("pretrain", pretrain, {"split": split})
                tuned = nested.run("fine_tune", fine_tune, {"split": split, "encoder": encoder})
                evaluation = nested.run("evaluate", config.evaluate, {"split": split, "model": tuned})
                run_metrics.update({**metrics_of(tuned), **metrics_of(evaluation)})
            rows.append({"objective": pretrain.objective, "mode": fine_tune.mode,
                         "probe_accuracy": metrics_of(encoder).get("final_probe_accuracy"),
                         "val_accuracy": run_metrics["best_val_accuracy"], "test_accuracy": run_metrics["test_accuracy"],
                         "vs_baseline_pts": round(100 * (run_metrics["test_accuracy"] - baseline_test), 2)})
        log_comparison(steps.parent_run_id, rows)
        metrics.update({"baseline_test_accuracy": baseline_test,
                        **{f"{row['objective']}_{row['mode']}_test_accuracy": row["test_accuracy"] for row in rows}})
    return {**metrics, "mlflow_run_id": steps.parent_run_id, "table": rows}
