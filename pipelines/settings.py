"""Infrastructure settings, from the environment only (never from the stage configs).

With nothing set, everything lives under ``./.ssl-pipeline``: the artifact store, a SQLite
MLflow store and its artifacts, and Prefect's task results (the cache).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SSL_PIPELINE_HOME"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable
DEFAULT_EXPERIMENT = "ssl-pipeline"
REGISTERED_MODEL_ENV = "SSL_PIPELINE_REGISTERED_MODEL"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV, ".ssl-pipeline")).resolve()


STORE_ENV = "SSL_PIPELINE_STORE"


def artifact_root() -> Path:
    """The artifact store: ``$SSL_PIPELINE_STORE`` (a directory every worker of a cluster mounts at the
    same path: NFS, a ReadWriteMany volume), else ``artifacts`` in the home."""
    return Path(os.environ[STORE_ENV]).resolve() if os.environ.get(STORE_ENV) else home() / "artifacts"


def prefect_results() -> Path:
    return home() / "prefect-results"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def mlflow_artifact_location() -> str:
    """Where a new experiment keeps its artifacts when the tracking store is our local one."""
    return (home() / "mlartifacts").as_uri()


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT)


def registered_model_name() -> str:
    """The registered model every trained classifier becomes a version of: ``<experiment>-classifier``."""
    return os.environ.get(REGISTERED_MODEL_ENV, f"{experiment_name()}-classifier")
