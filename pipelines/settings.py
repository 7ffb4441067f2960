"""Infrastructure settings, from the environment only (never from the stage configs).

With nothing set, everything lives under ``./.ssl-pipeline``: the artifact store, a SQLite
MLflow store and its artifacts, and Prefect's task results (the cache).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HOME_ENV = "SSL_PIPELINE_HOME"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable
DEFAULT_EXPERIMENT = "ssl-pipeline"
REGISTERED_MODEL_ENV = "SSL_PIPELINE_REGISTERED_MODEL"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV, ".ssl-pipeline")).resolve()


STORE_ENV = "SSL_PIPELINE_STORE"


def store_url() -> str:
    """The artifact store: ``$SSL_PIPELINE_STORE``, a directory every worker of a cluster mounts at the
    same path (NFS, a ReadWriteMany volume) or an object store URL (``s3://bucket/prefix``), else
    ``artifacts`` in the home."""
    return os.environ.get(STORE_ENV) or str(home() / "artifacts")


def is_object_url(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def store_mirror(url: str) -> Path:
    """This machine's copies of the artifacts it used from the object store at ``url``."""
    return home() / "store-mirror" / hashlib.sha256(url.encode()).hexdigest()[:12]


def local_root(url: str) -> Path:
    """Where this machine finds the artifacts of the store at ``url``: the store when it is a directory,
    else its mirror."""
    return store_mirror(url) if is_object_url(url) else Path(url.removeprefix("file://")).resolve()


def artifact_root() -> Path:
    return local_root(store_url())


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


HEARTBEAT_ENV = "SSL_PIPELINE_HEARTBEAT_SECONDS"
HEARTBEAT_TIMEOUT_ENV = "SSL_PIPELINE_HEARTBEAT_TIMEOUT"


def heartbeat_seconds() -> float:
    """How often a running flow stamps its MLflow parent run as alive."""
    return float(os.environ.get(HEARTBEAT_ENV, 30))


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a flow's runs are marked FAILED: several missed beats, and
    more than a tracking server's restart takes. Hosts' clocks must agree to well within it."""
    return float(os.environ.get(HEARTBEAT_TIMEOUT_ENV, 180))
