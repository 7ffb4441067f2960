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
from pipelines.engine import SEQUENTIAL
from pipelines.flow import (
    Configuration,
    StageRun,
    Steps,
    baseline_steps,
    configuration_steps,
    finish_all,
    log_comparison,
    pipeline_run,
)
from stages.fine_tune import EncoderFineTuneConfig
from stages.lib.catalog import read_metrics
from stages.pretrain import PretrainConfig

log = logging.getLogger(__name__)


def pretrain_configuration(steps: Steps, pretrain: PretrainConfig, fine_tune: EncoderFineTuneConfig,
                           pipeline: PipelineConfig, split: Path, label: str = "") -> tuple[Configuration, StageRun]:
    """pretrain -> fine_tune -> evaluate under one nested run, submitted; with the pretrain stage, whose
    metrics hold the encoder's final probe accuracy."""
    params = {"preset": pipeline.preset, "pretrain": pretrain.model_dump(), "fine_tune": fine_tune.model_dump()}
    nested = configuration_steps(steps, f"{label}{pretrain.objective} {fine_tune.mode}", params)
    encoder = nested.submit("pretrain", pretrain, {"split": split})
    tuned = nested.submit("fine_tune", fine_tune, {"split": split, "encoder": encoder})
    return Configuration(nested, tuned, nested.submit("evaluate", pipeline.evaluate, {"split": split, "model": tuned})), encoder


@flow(name="ssl-pretraining", task_runner=SEQUENTIAL)
def pretraining_pipeline(config: PipelineConfig = load_pipeline_config(), objectives: list[str] | None = None,
                         modes: list[str] | None = None, launcher: str = "in-process",
                         data: str | None = None) -> dict[str, Any]:
    """Pretrain the baseline's encoder with each objective and fine-tune it each way; compare on test."""
    grid = pretraining_grid(config, objectives, modes)  # a bad grid fails before any work
    rows = []
    with pipeline_run(config, launcher) as (steps, metrics):
        split, model = baseline_steps(steps, config, data)
        baseline_evaluation = steps.submit("evaluate", config.evaluate, {"split": split, "model": model})
        configurations = [pretrain_configuration(steps, pretrain, fine_tune, config, split) for pretrain, fine_tune in grid]
        baseline_test = read_metrics(baseline_evaluation.artifact())["test_accuracy"]
        done = finish_all([configuration for configuration, _ in configurations])
        for (pretrain, fine_tune), (_, encoder), (_, _, result) in zip(grid, configurations, done, strict=True):
            rows.append({"objective": pretrain.objective, "mode": fine_tune.mode,
                         "probe_accuracy": read_metrics(encoder.artifact()).get("final_probe_accuracy"),
                         "val_accuracy": result["best_val_accuracy"], "test_accuracy": result["test_accuracy"],
                         "vs_baseline_pts": round(100 * (result["test_accuracy"] - baseline_test), 2)})
        log_comparison(steps.parent_run_id, rows)
        metrics.update({"baseline_test_accuracy": baseline_test,
                        **{f"{row['objective']}_{row['mode']}_test_accuracy": row["test_accuracy"] for row in rows}})
    return {**metrics, "mlflow_run_id": steps.parent_run_id, "table": rows}
