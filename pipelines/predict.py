"""Prediction: label new images with a trained classifier, tracked like any stage.

``ssl-pipeline predict`` runs this flow; a deployment can schedule it (new images arriving in a
folder, labeled each night by the current champion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from pipelines import settings, tracking
from pipelines.config import PipelineConfig, load_pipeline_config
from pipelines.engine import SEQUENTIAL
from pipelines.flow import is_transient, pipeline_run
from stages.lib.artifacts import copy_file
from stages.lib.catalog import PREDICTIONS_FILE, read_metrics


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def fetch_model(model: str) -> Path:
    """A classifier artifact: ``model`` itself, or a registered version (``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``) fetched from the registry into the artifact store."""
    if model.startswith("models:/"):
        return tracking.download_classifier(model, settings.artifact_root() / "registered")
    return Path(model)


def export(artifact: Path, output: Path, csv: bool) -> list[Path]:
    """Copy the predictions to ``output`` (and its .csv beside it), each whole or not at all."""
    copies = {output: artifact / PREDICTIONS_FILE, **({output.with_suffix(".csv"): artifact / "predictions.csv"} if csv else {})}
    for target, source in copies.items():
        copy_file(source, target)
    return list(copies)


@flow(name="ssl-predict", task_runner=SEQUENTIAL)
def predict_pipeline(model: str, images: str, output: str, config: PipelineConfig = load_pipeline_config(),
                     launcher: str = "in-process") -> dict[str, Any]:
    """Predict the class of every image of ``images`` (a folder or a Parquet table) with ``model`` (a
    classifier artifact or ``models:/NAME@ALIAS``), into the Parquet file ``output``."""
    with pipeline_run(config, launcher) as (steps, metrics):
        artifact = steps.run("predict", config.predict, {"model": fetch_model(model), "images": Path(images).resolve()})
        metrics.update({key: value for key, value in read_metrics(artifact).items() if key in ("images", "classes_predicted")})
        written = export(artifact, Path(output), config.predict.csv)
    return {**metrics, "outputs": [str(path) for path in written], "artifact": str(artifact),
            "mlflow_run_id": steps.parent_run_id, "experiment_id": steps.experiment_id}
