"""MLflow tracking of a pipeline run: a parent run per flow run, a nested run per stage.

Stages never talk to MLflow: they write artifacts with manifests, and this module logs what
those hold (config as params, metrics, per-epoch history with its real timestamps, figures,
the datasets read, the model through the Keras flavor). A stage is therefore tracked the same
way whether it ran in-process, in a subprocess or in a container, and a tracking outage never
costs a trained model. Each classifier a stage trains becomes a version of one registered model,
whose ``champion`` alias follows the best version on validation; each flow's parent run gets
MLflow's system metrics for as long as the flow runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
import sqlalchemy.exc
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING, MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipelines import settings
from pipelines.store import parent_artifact
from stages.lib.artifacts import file_lock, read_manifest
from stages.lib.catalog import (
    HISTORY_FILE,
    ITERATIONS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    DatasetInfo,
    read_dataset_info,
    write_dataset_info,
)
from stages.lib.config import flat_fields
from stages.lib.errors import InvalidSetting, UserError

log = logging.getLogger(__name__)

TAG_STAGE = "ssl.stage"
TAG_DIGEST = "ssl.artifact_digest"  # manifest digest of the stage's output artifact
TAG_CACHED = "ssl.cached"
TAG_CACHED_FROM = "ssl.cached_from_run"
TAG_PRESET = "ssl.preset"
TAG_SWEEP = "ssl.sweep"  # shared by every run of one self-training sweep
TAG_ITERATION = "ssl.iteration"
TAG_STUDY = "ssl.study"  # shared by every run of one study flow run
# on a study's configuration runs (and their stages): what the run is an instance of
TAG_EXPERIMENT, TAG_UNLABELED, TAG_SEED = "ssl.experiment", "ssl.unlabeled", "ssl.seed"
TAG_PROCESS = "ssl.process"  # the flow process that owns a run: host/boot/pid/start time
TAG_HEARTBEAT = "ssl.heartbeat"  # on a flow's parent run: unix seconds of its process's last sign of life
TAG_FAILURE = "ssl.failure"  # on a run marked FAILED for its flow: why
TAG_FLOW_DIGEST = "ssl.flow_digest"  # flow name + configuration of a flow's parent run
TAG_RESUMES = "ssl.resumes"  # on a parent run: the killed attempts of the same flow and configuration
TAG_RESUMED_BY = "ssl.resumed_by"  # on a killed attempt: the parent run that took over
TAG_OVERRIDES = "ssl.overrides"  # on a parent run: "key=value; ..." of the fields its config changed from the preset
ITERATION_METRICS = ("selected", "pseudo_label_accuracy", "mean_confidence", "val_accuracy", "val_loss",
                     "train_accuracy", "train_loss")
# MLflow's UI opens an experiment by its kind: the GenAI overview (traces, prompts) unless it is model training
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
CHAMPION = "champion"  # registry alias of the registered classifier's best version on validation (never test)
TAG_VALIDATION = "ssl.validation_sha256"  # on a model version: the validation table its accuracy was measured on


class TrackingUnavailable(UserError, RuntimeError):
    """The MLflow tracking server does not answer."""


def check_reachable(uri: str, attempts: int = 3) -> None:
    """Raise ``TrackingUnavailable`` in seconds, before any training, when an HTTP tracking server is
    down or refuses the credentials; MLflow's own client would retry each request for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    for attempt in range(attempts):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
            break
        except requests.RequestException as error:
            problem = error
            time.sleep(attempt)
    else:
        raise TrackingUnavailable(
            f"the MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) does not answer: {problem}. Start it "
            "(docker compose up -d mlflow), or unset MLFLOW_TRACKING_URI to track into the local store"
        )
    check_credentials(uri)


def check_credentials(uri: str) -> None:
    """Raise ``TrackingUnavailable`` when a server with authentication turns this client away."""
    user, password = MLFLOW_TRACKING_USERNAME.get(), MLFLOW_TRACKING_PASSWORD.get()
    response = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name", timeout=20,
                            params={"experiment_name": settings.experiment_name()},
                            auth=(user, password) if user and password else None)
    if response.status_code == 401:
        given = f"user {user!r} with that password" if user and password else "no credentials"
        raise TrackingUnavailable(
            f"the MLflow tracking server at {uri} refused {given} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of that server (the docker-compose stack's are in its .env)")
    if response.status_code == 403:
        raise TrackingUnavailable(
            f"the MLflow tracking server at {uri} lets user {user!r} not read experiment "
            f"{settings.experiment_name()!r} (HTTP 403): ask its admin for EDIT permission on it")


def configure() -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; its id."""
    uri = settings.tracking_uri()
    check_reachable(uri)
    # a server that goes away mid-flow: fail within about a minute, not MLflow's default ~4 minutes per request
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    mlflow.set_tracking_uri(uri)
    # Flows starting together on one SQLite store would each migrate a new database and create the
    # experiment: one at a time (the first open of the store in a process is what migrates it).
    database = _sqlite_database(uri)
    with _store_lock(uri):
        if database and not database.exists():
            create_sqlite_store(database)
        name = settings.experiment_name()
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            # the default artifact location is relative to the working directory: be explicit
            location = settings.mlflow_artifact_location() if database else None
            try:
                return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
            except MlflowException:  # a flow on another machine created it just now
                experiment = mlflow.get_experiment_by_name(name)
                if experiment is None:
                    raise
        for key, value in EXPERIMENT_KIND.items():  # an experiment made before the kind was set
            if experiment.tags.get(key) != value:
                MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id


def _sqlite_database(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """Serialises this host's flows on a SQLite store; a tracking server orders its own writes."""
    database = _sqlite_database(uri)
    return file_lock(database.with_name(f".{database.name}.lock")) if database else contextlib.nullcontext()


def create_sqlite_store(database: Path) -> None:
    """Make a new SQLite tracking store at a temporary path, then rename it into place.

    Creating one runs dozens of schema migrations; a flow killed among them would leave a database
    that MLflow refuses to open ("out-of-date database schema") and every later run would fail.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in database.parent.glob(f".{database.name}.tmp-*"):  # from creations that were killed
        stale.unlink()
    temporary = database.with_name(f".{database.name}.tmp-{os.getpid()}")
    SqlAlchemyStore(f"sqlite:///{temporary}", settings.mlflow_artifact_location()).engine.dispose()
    os.rename(temporary, database)


def overrides_tag(differences: Mapping[str, Any], limit: int = 5000) -> str:
    """``preset_differences`` as one tag value (MLflow caps a tag's length; a longer one is cut with "...")."""
    text = "; ".join(f"{key}={json.dumps(value)}" for key, value in sorted(differences.items())) or "none"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def start_parent_run(experiment_id: str, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str],
                     parent_run_id: str | None = None) -> str:
    """Create a run that stays RUNNING until ``finish_parent_run``: a flow's, or (nested under
    ``parent_run_id``) one configuration's within a flow; ``config`` becomes its params."""
    client = MlflowClient()
    nesting = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={TAG_PRESET: config.get("preset", ""), **nesting, **tags})
    with failed_if_raises(run.info.run_id):
        params = [Param(key, str(value)) for key, value in flat_fields(config).items()]
        client.log_batch(run.info.run_id, params=params)
        client.log_dict(run.info.run_id, dict(config), "config.json")
    return run.info.run_id


@contextlib.contextmanager
def failed_if_raises(run_id: str):
    """Mark the just-created run FAILED if the block raises: the task that made it is retried and
    makes another, and this live process's runs are not ones ``fail_abandoned_runs`` closes."""
    try:
        yield
    except Exception:
        with contextlib.suppress(Exception):  # the store may be what failed; its error is the one to see
            MlflowClient().set_terminated(run_id, "FAILED")
        raise


def this_process() -> str:
    """``host/boot/pid/start`` of this process: with the boot and the start time, a reused pid is not
    mistaken for it."""
    return f"{socket.gethostname()}/{_boot_id()}/{os.getpid()}/{_start_ticks(os.getpid())}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks after boot (/proc/PID/stat field 22); "" if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_ended(process: str) -> bool:
    """True when the process ``this_process`` described has ended; False while it runs or when it
    ran on another host, where this one cannot tell."""
    host, boot, pid, start = process.split("/")
    if host != socket.gethostname():
        return False
    return boot != _boot_id() or _start_ticks(int(pid)) != start


def fail_abandoned_runs(experiment_id: str, flow_digest: str) -> list[str]:
    """``fail_dead_flows_runs``, then the ids of the runs it marked that were a flow's parent run with
    ``flow_digest``: the attempts a new run of that flow resumes."""
    return [run.info.run_id for run in fail_dead_flows_runs(experiment_id)
            if run.data.tags.get(TAG_FLOW_DIGEST) == flow_digest and "mlflow.parentRunId" not in run.data.tags]


def fail_dead_flows_runs(experiment_id: str) -> list[Run]:
    """Mark FAILED, with the reason, the runs left RUNNING by flows that died: a flow process of this host
    that has ended (a killed flow closes nothing), or one on any host whose heartbeat is older than
    ``settings.heartbeat_timeout()``. Returns them."""
    client = MlflowClient()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    beats: dict[str, float] = {}  # flow process -> its newest heartbeat
    for run in running:
        if (process := run.data.tags.get(TAG_PROCESS)) and TAG_HEARTBEAT in run.data.tags:
            beats[process] = max(beats.get(process, 0.0), float(run.data.tags[TAG_HEARTBEAT]))
    failed = []
    for run in running:
        process = run.data.tags.get(TAG_PROCESS)
        if process is None or not (reason := _abandoned(process, beats.get(process))):
            continue
        client.set_tag(run.info.run_id, TAG_FAILURE, reason)
        client.set_terminated(run.info.run_id, "FAILED")
        log.warning("run %s (%s) of a dead flow marked FAILED: %s", run.info.run_id, run.info.run_name, reason)
        failed.append(run)
    return failed


def _abandoned(process: str, heartbeat: float | None) -> str | None:
    """Why the flow ``process`` is taken for dead (None while it may be alive)."""
    if process_ended(process):
        return "its flow process ended without closing it (killed)"
    silent = time.time() - heartbeat if heartbeat is not None else 0.0
    if silent > settings.heartbeat_timeout():
        return (f"its flow sent no heartbeat for {silent:.0f} s (timeout {settings.heartbeat_timeout():g} s): "
                "its process, container or host died")
    return None


def sweep_dead_flows_runs() -> int:
    """``fail_dead_flows_runs`` in every experiment of the tracking store; how many runs it marked."""
    return sum(len(fail_dead_flows_runs(experiment.experiment_id)) for experiment in MlflowClient().search_experiments())


@contextlib.contextmanager
def heartbeat(run_id: str) -> Iterator[None]:
    """Stamp ``ssl.heartbeat`` on the run every ``settings.heartbeat_seconds()`` while the block runs: the
    proof, to a flow or sweep on any host, that this flow is alive. A beat the server misses (a
    restart) is logged, and the next one tries again."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.heartbeat_seconds()):
            try:
                MlflowClient().set_tag(run_id, TAG_HEARTBEAT, str(int(time.time())))
            except Exception as error:  # the flow's own calls report a server that stays away
                log.warning("heartbeat of MLflow run %s missed: %s", run_id, error)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def link_resumed(killed_run_ids: list[str], parent_run_id: str) -> None:
    client = MlflowClient()
    for run_id in killed_run_ids:
        client.set_tag(run_id, TAG_RESUMED_BY, parent_run_id)


@contextlib.contextmanager
def system_metrics(run_id: str) -> Iterator[None]:
    """MLflow's system metrics into ``run_id`` while the block runs: ``system/cpu_utilization_percentage``,
    memory, disk and network (GPU too where ``pynvml`` finds one), every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10). psutil measures the whole machine, so stages
    in subprocesses and containers count. On unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``.
    """
    if MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.defined and not MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        yield
        return
    # the monitor mlflow.start_run(log_system_metrics=True) starts for a fluent run; a parent run is a
    # client run that outlives every fluent context, so it gets the monitor directly
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def finish_parent_run(run_id: str, metrics: Mapping[str, float], status: str) -> None:
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, status)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    MlflowClient().log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


def log_split_datasets(run_id: str, split: Path) -> None:
    """The split's tables as the datasets of ``run_id`` (a flow's parent run), each in its role."""
    files = read_manifest(split)["files"]
    contexts = {"labeled": "training", "unlabeled": "training (unlabeled)", "validation": "validation", "test": "test"}
    _log_inputs(run_id, [(_table_dataset(split, f"{table}.parquet"), context) for table, context in contexts.items()
                         if f"{table}.parquet" in files])


def run_page(server: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI at ``server``. The UI opens on GenAI views (traces, an assistant)
    unless the address asks for model training, whatever the experiment's kind tag says."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def champion_uri(name: str) -> str | None:
    """``models:/NAME@champion``, with the version it points at, e.g. ``models:/ssl-classifier@champion (version 3)``;
    None while no version is registered (a rerun after a kill takes its models from the cache, unregistered)."""
    try:
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return f"models:/{name}@{CHAMPION} (version {version.version}, {version.tags.get(TAG_STAGE, '')})"


def download_classifier(uri: str, root: Path) -> Path:
    """A registered classifier (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) as a classifier
    artifact under ``root``: its ``model.keras`` and, from the logged model's metadata, ``dataset.json``.
    Each version is fetched once."""
    import tempfile

    name, alias_sep, reference = uri.removeprefix("models:/").partition("@")
    client = MlflowClient()
    try:
        if alias_sep:
            version = client.get_model_version_by_alias(name, reference)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as error:
        raise InvalidSetting(f"--model {uri}: no such registered model version in {settings.tracking_uri()} "
                         f"({error.message}); `ssl-pipeline run` registers one as models:/NAME@champion") from None
    target = root / f"{name}-v{version.version}"
    if not target.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=scratch))
            staged = Path(scratch) / "classifier"
            staged.mkdir()
            next(local.rglob("*.keras")).rename(staged / MODEL_FILE)
            metadata = mlflow.models.Model.load(str(local)).metadata
            write_dataset_info(staged, DatasetInfo(metadata["classes"], tuple(metadata["image_shape"]), metadata["resize"]))
            staged.rename(target)
    return target


def _history_metrics(history: pd.DataFrame) -> list[Metric]:
    """Per-epoch metrics keyed by step = epoch, stamped with when each epoch ended; epochs where a
    metric was not measured (e.g. a probe every few epochs) and text columns are left out."""
    values = history.drop(columns=["epoch", "timestamp_ms"]).select_dtypes("number")
    return [
        Metric(key=key, value=float(row[key]), timestamp=int(row_time), step=int(epoch))
        for (_, row), epoch, row_time in zip(values.iterrows(), history["epoch"], history["timestamp_ms"])
        for key in values.columns if pd.notna(row[key])
    ]


DATA_SOURCES = ("data", "images")  # the inputs from outside the store that are data: the split's, predict's


def _datasets_read(manifest: Mapping[str, Any]) -> list[tuple[MetaDataset, str]]:
    """The parent tables a stage read, as MLflow datasets (digest and schema, no data copied); the models
    it read are its manifest's alone."""
    datasets = []
    for reference in manifest.get("reads", []):
        parent_name, _, filename = reference.partition("/")
        if not filename.endswith(".parquet"):
            continue
        dataset = _table_dataset(parent_artifact(manifest, parent_name), filename)
        datasets.append((dataset, dataset.name))
    for name in DATA_SOURCES:
        if source := manifest["parents"].get(name):
            datasets.append((MetaDataset(LocalArtifactDatasetSource(source["path"]), name=Path(source["path"]).name,
                                         digest=source["digest"][:16]), "source"))
    return datasets


def _table_dataset(artifact: Path, filename: str) -> MetaDataset:
    """A Parquet table of an artifact as an MLflow dataset named after it: its digest, no data copied."""
    entry = read_manifest(artifact)["files"][filename]
    return MetaDataset(LocalArtifactDatasetSource(str(artifact / filename)), name=filename.removesuffix(".parquet"),
                       digest=entry["sha256"][:16])


def find_stage_run(experiment_id: str, digest: str) -> str | None:
    """The earliest non-cached run that produced the artifact with this digest."""
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_DIGEST}` = '{digest}' and tags.`{TAG_CACHED}` = 'false'",
        order_by=["attributes.start_time ASC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_stage(
    experiment_id: str, parent_run_id: str, stage: str, artifact: Path, cached: bool, tags: Mapping[str, str],
    run_name: str | None = None,
) -> str:
    """Create the stage's nested run and log the artifact into it; returns the run id.

    A cached stage gets a light run (params, metrics, datasets, a link to the run that made the
    artifact) so every pipeline run shows all its stages without re-uploading models and figures.
    """
    manifest = read_manifest(artifact)
    run_tags = {TAG_STAGE: stage, TAG_DIGEST: manifest["digest"], TAG_CACHED: str(cached).lower(),
                "ssl.code_version": manifest["code_version"], "ssl.artifact_path": str(artifact), **tags}
    if cached and (original := find_stage_run(experiment_id, manifest["digest"])):
        run_tags[TAG_CACHED_FROM] = original
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or stage, parent_run_id=parent_run_id,
                          tags=run_tags) as run:
        mlflow.log_params(flat_fields(manifest["config"]))
        metrics_file = artifact / METRICS_FILE
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        mlflow.log_metrics(metrics)
        mlflow.log_metric("stage_seconds", manifest["seconds"])
        _log_inputs(run.info.run_id, _datasets_read(manifest))
        iterations = artifact / ITERATIONS_FILE
        if iterations.is_file():
            MlflowClient().log_batch(run.info.run_id, metrics=_iteration_metrics(pd.read_parquet(iterations)))
        if not cached:
            _log_files(artifact)
            if (artifact / MODEL_FILE).is_file():
                name = settings.registered_model_name()
                version = log_keras_model(artifact / MODEL_FILE, name).registered_model_version
                register_classifier(name, str(version), manifest, metrics)
            if iterations.is_file():
                _log_iteration_runs(experiment_id, run.info.run_id, artifact, tags)
    return run.info.run_id


def _log_inputs(run_id: str, datasets: list[tuple[MetaDataset, str]]) -> None:
    """Log (dataset, context) pairs as the run's inputs, once more if that fails: MLflow inserts a
    dataset it has not seen without a lock, so of two flows logging the same dataset at one moment the
    second breaks a unique constraint (measured: tests/test_faults.py). By the retry the dataset exists
    and is linked."""
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
              for dataset, context in datasets]
    if not inputs:
        return
    try:
        MlflowClient().log_inputs(run_id, datasets=inputs)
    except (sqlalchemy.exc.IntegrityError, MlflowException) as error:
        log.info("logging datasets %s again after %s", [dataset.name for dataset, _ in datasets], type(error).__name__)
        time.sleep(1)
        MlflowClient().log_inputs(run_id, datasets=inputs)


def _iteration_metrics(iterations: pd.DataFrame, keys: tuple[str, ...] = ITERATION_METRICS) -> list[Metric]:
    """Self-training's per-iteration metrics keyed by step = iteration (0 = the input model), so
    MLflow's compare view lines configurations up iteration by iteration."""
    now = int(pd.Timestamp.now().timestamp() * 1000)
    return [
        Metric(key=key, value=float(row[key]), timestamp=now, step=int(row["iteration"]))
        for _, row in iterations.iterrows() for key in keys if pd.notna(row.get(key))
    ]


def _log_iteration_runs(experiment_id: str, stage_run_id: str, artifact: Path, tags: Mapping[str, str]) -> None:
    """One run per self-training iteration, nested under the stage's run, with its epochs."""
    client = MlflowClient()
    iterations = pd.read_parquet(artifact / ITERATIONS_FILE)
    history = pd.read_parquet(artifact / HISTORY_FILE)
    for _, row in iterations[iterations["iteration"] > 0].iterrows():
        number = int(row["iteration"])
        run = client.create_run(experiment_id, run_name=f"iteration {number}", tags={
            "mlflow.parentRunId": stage_run_id, TAG_ITERATION: str(number), **tags})
        epochs = history[history["iteration"] == number].drop(columns=["epoch", "iteration"])
        metrics = _history_metrics(epochs.rename(columns={"iteration_epoch": "epoch"}))
        # the epochs' own val_accuracy and val_loss are already there, keyed by epoch
        metrics += _iteration_metrics(row.to_frame().T, ("selected", "pseudo_label_accuracy", "mean_confidence"))
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id)


def _log_files(artifact: Path) -> None:
    mlflow.log_artifact(str(artifact / "manifest.json"))
    history = artifact / HISTORY_FILE
    if history.is_file() and not (artifact / ITERATIONS_FILE).is_file():
        MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=_history_metrics(pd.read_parquet(history)))
    figures = artifact / "figures"
    if figures.is_dir():
        mlflow.log_artifacts(str(figures), "figures")


def log_keras_model(path: Path, registered_model_name: str) -> ModelInfo:
    """Log the model through MLflow's Keras flavor as a new version of ``registered_model_name``,
    loadable with ``mlflow.pyfunc.load_model``; its metadata holds the class names and image shape
    (``DatasetInfo``) that prediction needs."""
    import keras
    import numpy as np

    data = read_dataset_info(path.parent)
    model = keras.saving.load_model(path)
    example = np.zeros((2, *model.input_shape[1:]), dtype="float32")  # raw pixel values 0..255
    signature = mlflow.models.infer_signature(example, model.predict(example, verbose=0))
    # explicit requirements: inferring them loads the model in a subprocess (about 25 s here)
    requirements = [f"keras=={keras.__version__}", _backend_requirement(keras.backend.backend())]
    return mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements,
                                  registered_model_name=registered_model_name,
                                  metadata={"classes": data.classes, "image_shape": list(data.image_shape),
                                            "resize": data.resize})


def register_classifier(name: str, version: str, manifest: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Tag a classifier's new registry version with what it was selected on, then move ``champion``."""
    validation = read_manifest(parent_artifact(manifest, "split"))["files"]["validation.parquet"]["sha256"]
    # the validation tag last: a version is a candidate only once it holds all the others
    tags = {TAG_STAGE: manifest["stage"], TAG_DIGEST: manifest["digest"],
            "val_accuracy": str(metrics["best_val_accuracy"]), TAG_VALIDATION: validation}
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    promote_champion(name, validation)


def promote_champion(name: str, validation: str) -> int:
    """Point the ``champion`` alias at the most accurate version on validation (of equals, the older) and
    return its number. Accuracies compare on one validation set only, so the versions measured on
    ``validation`` (the newest version's) compete and those of other splits do not.

    Flows promoting at once through a tracking server share no lock, so each sets the alias, then reads
    the versions and the alias again until the alias names the best of what it read. The flow that
    sets the alias last has read every version tagged before; a version tagged after is read by its
    own flow, which sets the alias again if it must: in any order, the alias ends on the best.
    """
    client = MlflowClient()
    with _store_lock(settings.tracking_uri()):  # a SQLite store: one flow of this host at a time
        while True:
            versions = [v for v in client.search_model_versions(f"name = '{name}'")
                        if v.tags.get(TAG_VALIDATION) == validation]
            best = max(versions, key=lambda v: (float(v.tags["val_accuracy"]), -int(v.version)))
            if client.get_registered_model(name).aliases.get(CHAMPION) == best.version:
                break
            client.set_registered_model_alias(name, CHAMPION, best.version)
    log.info("registered model %s: version %s is the %s (val accuracy %.4f)", name, best.version, CHAMPION,
             float(best.tags["val_accuracy"]))
    return int(best.version)


def _backend_requirement(backend: str) -> str:
    """The installed distribution that provides the backend module, e.g. ``tensorflow_cpu==2.21.0``."""
    from importlib import metadata

    distribution = metadata.packages_distributions()[backend][0]
    return f"{distribution}=={metadata.version(distribution)}"
