"""The encoder-pretraining flow: each objective's encoder, fine-tuned each way, beside the baseline.

split -> baseline -> evaluate, then for each objective (autoencoder, simclr) and mode (two_step,
joint): pretrain -> fine_tune -> evaluate under one MLflow run per configuration. The pretrain
stage is cached, so the second mode of an objective reuses its encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow

from pipelines.config import PipelineConfig, load_pipeline_config, pretraining_grid
from pipelines.flow import Steps, baseline_steps, configuration_run, log_comparison, pipeline_run, train_minutes
from stages.fine_tune import EncoderFineTuneConfig
from stages.lib.catalog import read_metrics
from stages.pretrain import PretrainConfig

log = logging.getLogger(__name__)


def pretrain_configuration(steps: Steps, pretrain: PretrainConfig, fine_tune: EncoderFineTuneConfig,
                           pipeline: PipelineConfig, split: Path, label: str = "") -> tuple[Path, Path, dict[str, Any]]:
    """pretrain -> fine_tune -> evaluate under one nested run; the fine_tune and evaluate artifacts and
    the configuration's metrics, with the encoder's final probe accuracy."""
    name = f"{label}{pretrain.objective} {fine_tune.mode}"
    params = {"preset": pipeline.preset, "pretrain": pretrain.model_dump(), "fine_tune": fine_tune.model_dump()}
    with configuration_run(steps, name, params) as (nested, metrics):
        encoder = nested.run("pretrain", pretrain, {"split": split})
        tuned = nested.run("fine_tune", fine_tune, {"split": split, "encoder": encoder})
        evaluation = nested.run("evaluate", pipeline.evaluate, {"split": split, "model": tuned})
        metrics.update({**read_metrics(tuned), **read_metrics(evaluation), "train_minutes": train_minutes(tuned)})
    return tuned, evaluation, {**metrics, "probe_accuracy": read_metrics(encoder).get("final_probe_accuracy")}


@flow(name="ssl-pretraining")
def pretraining_pipeline(config: PipelineConfig = load_pipeline_config(), objectives: list[str] | None = None,
                         modes: list[str] | None = None, launcher: str = "in-process",
                         data: str | None = None) -> dict[str, Any]:
    """Pretrain the baseline's encoder with each objective and fine-tune it each way; compare on test."""
    grid = pretraining_grid(config, objectives, modes)  # a bad grid fails before any work
    rows = []
    with pipeline_run(config, launcher) as (steps, metrics):
        split, model = baseline_steps(steps, config, data)
        baseline_test = read_metrics(steps.run("evaluate", config.evaluate, {"split": split, "model": model}))["test_accuracy"]
        for pretrain, fine_tune in grid:
            _, _, result = pretrain_configuration(steps, pretrain, fine_tune, config, split)
            rows.append({"objective": pretrain.objective, "mode": fine_tune.mode, "probe_accuracy": result["probe_accuracy"],
                         "val_accuracy": result["best_val_accuracy"], "test_accuracy": result["test_accuracy"],
                         "vs_baseline_pts": round(100 * (result["test_accuracy"] - baseline_test), 2)})
        log_comparison(steps.parent_run_id, rows)
        metrics.update({"baseline_test_accuracy": baseline_test,
                        **{f"{row['objective']}_{row['mode']}_test_accuracy": row["test_accuracy"] for row in rows}})
    return {**metrics, "mlflow_run_id": steps.parent_run_id, "table": rows}
