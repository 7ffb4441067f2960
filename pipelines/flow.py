"""What every flow shares: cached stage tasks, their MLflow runs, the parent run of a flow run.

Each stage is one cached Prefect task: its cache key is a hash of the stage name, its config,
the digests of its input artifacts and the stage code version, and its output lands in the
artifact store under that key. Rerunning an unchanged pipeline therefore skips every stage;
changing one stage's config reruns it and, through the new output digest, everything after it.
Flows submit stages to the flow's task runner (``pipelines.engine``), a stage's future standing for
its artifact as the next stage's input, so independent configurations can run side by side.
Tracking is a separate task per stage with retries, since it is the step that talks to a server;
it runs in the flow's process once the stage is done, in submission order.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import requests
import sqlalchemy.exc
from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, State
from pydantic import BaseModel

from pipelines import settings, tracking
from pipelines.config import PipelineConfig, preset_differences
from pipelines.launchers import LAUNCHERS, ResourcesConfig
from pipelines.store import Store, local_inputs, open_store, parent_artifact
from stages.lib import sources
from stages.lib.artifacts import MANIFEST, code_version, file_digest, read_manifest, sha256_json, verify
from stages.lib.catalog import read_metrics
from stages.lib.errors import UserError

log = logging.getLogger(__name__)
# Stage progress (epochs, container logs) is INFO: with PREFECT_LOGGING_EXTRA_LOGGERS=stages,pipelines
# (set by the CLI and the stage image) it reaches the Prefect flow-run log wherever the flow runs.
for _name in ("stages", "pipelines"):
    logging.getLogger(_name).setLevel(logging.INFO)


def input_digest(path: Path) -> str:
    """An artifact directory's manifest digest, or the SHA-256 of a file or folder from outside the store."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return read_manifest(path)["digest"]
    return file_digest(path)


def stage_key(stage: str, config: BaseModel, inputs: dict[str, Path]) -> str:
    return sha256_json({
        "stage": stage,
        "config": config.model_dump(mode="json"),
        "inputs": {name: input_digest(path) for name, path in sorted(inputs.items())},
        "code_version": code_version(stage),
    })


class StageCachePolicy(CachePolicy):
    """Prefect cache key = ``stage_key`` of the task's stage, config and input artifacts, while the
    artifact is in the store: a deleted artifact is made again, not taken from a cache that outlived it."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        store = inputs["store"]
        key = stage_key(inputs["stage"], inputs["config"], local_inputs(store, inputs["inputs"]))
        return key if store.has(inputs["stage"], key) else None


def is_transient(task, task_run, state) -> bool:
    """Retry only failures of talking to a server, never a bug or bad data."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (ConnectionError, TimeoutError, requests.RequestException, sqlalchemy.exc.OperationalError))


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def locate_data(config: PipelineConfig, path: str | None) -> Path:
    """What the split reads: the verified CIFAR-100 archive (downloaded into the cache when no path is
    given), or the user's folder or table."""
    return sources.locate(config.split.data.source, path)


REUSED = "reused"  # the message of a stage task that found its artifact made before it started


@task(cache_policy=StageCachePolicy(), persist_result=True, task_run_name="{stage}")
def run_stage(stage: str, config: BaseModel, inputs: dict[str, Path], launcher: str, resources: ResourcesConfig,
              store: Store) -> State:
    """Make the stage's artifact in ``store``, unless it is there; Completed with this machine's copy of
    it, and the message ``reused`` when it was in the store before this task started."""
    inputs = local_inputs(store, inputs)
    key = stage_key(stage, config, inputs)
    made_earlier = store.has(stage, key)
    # a concurrent flow making the same artifact: wait for it, then use what it made, tracked in full
    # as this flow's too
    with store.writing(stage, key) as output:
        if output is not None:
            LAUNCHERS[launcher]().launch(stage, config, inputs, output, resources)
    artifact = store.local(store.output(stage, key))
    verify(artifact)
    return Completed(data=artifact, message=REUSED if made_earlier else "built")


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient, task_run_name="track-{stage}")
def track_stage(experiment_id: str, parent_run_id: str, stage: str, artifact: Path, cached: bool,
                stage_task_run_id: str, tags: dict[str, str], run_name: str) -> str:
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.task_run_id": stage_task_run_id, **tags}
    return tracking.log_stage(experiment_id, parent_run_id, stage, artifact, cached, tags, run_name)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def open_parent_run(config: PipelineConfig, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """(experiment id, parent run id) of this flow run's MLflow parent run.

    Runs of flows that died (killed, or silent past the heartbeat timeout) are marked FAILED first; the
    new run links to those of the same flow and configuration (``ssl.resumes``), whose finished stages
    it takes from the cache.
    ``ssl.overrides`` names what the config changed from its preset, so runs compare by it.
    """
    experiment_id = tracking.configure()
    digest = sha256_json({"flow": flow_run.flow_name, "config": config.model_dump(mode="json")})
    resumes = tracking.fail_abandoned_runs(experiment_id, digest)
    parent_run_id = tracking.start_parent_run(
        experiment_id, f"{config.preset}-{flow_run.name}", config.model_dump(mode="json"),
        {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
         tracking.TAG_FLOW_DIGEST: digest, tracking.TAG_OVERRIDES: tracking.overrides_tag(preset_differences(config)),
         tracking.TAG_HEARTBEAT: str(int(time.time())),
         **({tracking.TAG_RESUMES: ",".join(resumes)} if resumes else {}), **(tags or {})},
    )
    with tracking.failed_if_raises(parent_run_id):
        tracking.link_resumed(resumes, parent_run_id)
    return experiment_id, parent_run_id


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def close_parent_run(parent_run_id: str, metrics: dict[str, float], status: str) -> None:
    tracking.finish_parent_run(parent_run_id, metrics, status)


@dataclass(frozen=True)
class Steps:
    """How one flow run starts its stages and where it tracks them."""

    launcher: str
    resources: ResourcesConfig
    experiment_id: str
    parent_run_id: str  # MLflow run the stage runs nest under
    store: Store  # the artifact store every worker reaches
    tags: dict[str, str] = field(default_factory=dict)  # on every stage run
    label: str = ""  # the configuration, appended to stage run names: "self_train threshold=0.85 ..."
    submitted: list[StageRun] = field(default_factory=list)  # in submission order, tracked by settle()

    def nested_under(self, run_id: str, label: str = "") -> Steps:
        return replace(self, parent_run_id=run_id, label=label, submitted=[])

    def submit(self, stage: str, config: BaseModel, inputs: dict[str, Path | StageRun]) -> StageRun:
        """Hand one stage to the task runner; it starts once the stages it takes as inputs are done."""
        log.info("stage %s: submitted (%s)", stage, self.launcher)
        upstream = {name: value.future if isinstance(value, StageRun) else value for name, value in inputs.items()}
        future = run_stage.with_options(result_storage=settings.prefect_results()).submit(
            stage, config, upstream, self.launcher, self.resources, self.store)
        self.submitted.append(StageRun(self, stage, future))
        return self.submitted[-1]

    def run(self, stage: str, config: BaseModel, inputs: dict[str, Path | StageRun]) -> Path:
        """Run (or reuse) one stage, track it under the parent run, and return its artifact."""
        return self.submit(stage, config, inputs).artifact()

    def settle(self) -> None:
        """Wait for every stage submitted here and track each, in submission order."""
        for submitted in self.submitted:
            submitted.artifact()

    def reuse(self, stage: str, artifact: Path) -> Path:
        """Track an artifact made elsewhere (e.g. a model given on the command line) as a cached stage."""
        verify(artifact)
        log.info("stage %s: reusing %s", stage, artifact)
        self.track(stage, artifact, True, "")
        return artifact

    def track(self, stage: str, artifact: Path, cached: bool, task_run_id: str) -> None:
        try:
            track_stage(self.experiment_id, self.parent_run_id, stage, artifact, cached, task_run_id, self.tags,
                        f"{stage} {self.label}".strip())
        except Exception as error:
            raise TrackingFailed(
                f"stage {stage} finished and its artifact is kept at {artifact}, but logging it to MLflow "
                f"({settings.tracking_uri()}) failed: {error}. Rerun the same command once the tracking store "
                "works: finished stages come from the cache and are only logged"
            ) from error


@dataclass
class StageRun:
    """One stage handed to the task runner. ``artifact()`` waits for it, tracks it once and returns its
    artifact directory; as another stage's input, the runner waits for it instead."""

    steps: Steps
    stage: str
    future: PrefectFuture
    done: Path | None = None

    def artifact(self) -> Path:
        if self.done is None:
            self.future.wait()
            artifact, state = self.steps.store.local(self.future.result()), self.future.state
            cached = state.name == "Cached" or state.message == REUSED
            log.info("stage %s: %s %s", self.stage, "reused" if cached else "built", artifact)
            self.steps.track(self.stage, artifact, cached, str(self.future.task_run_id))
            self.done = artifact
        return self.done


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def open_configuration_run(steps: Steps, name: str, params: dict[str, Any]) -> str:
    return tracking.start_parent_run(steps.experiment_id, name, params, steps.tags, parent_run_id=steps.parent_run_id)


class TrackingFailed(UserError, RuntimeError):
    """A stage's work is done and kept, but MLflow did not take its record."""


@contextlib.contextmanager
def finishing(run_id: str) -> Iterator[dict[str, float]]:
    """Yields a dict for the run's metrics; ends the run FINISHED with them, or FAILED when the block
    raises. A failure to close a failed run is logged, not raised: the block's error is the one to see
    (and the next flow marks the run FAILED)."""
    metrics: dict[str, float] = {}
    try:
        yield metrics
    except BaseException:
        try:
            close_parent_run(run_id, metrics, "FAILED")
        except Exception as error:
            log.warning("could not mark MLflow run %s FAILED: %s", run_id, error)
        raise
    close_parent_run(run_id, metrics, "FINISHED")


@contextlib.contextmanager
def pipeline_run(config: PipelineConfig, launcher: str,
                 tags: dict[str, str] | None = None) -> Iterator[tuple[Steps, dict[str, float]]]:
    """This flow run's MLflow parent run (``tags`` also go on every stage run under it), with system metrics
    and a heartbeat.

    Yields the steps that run and track the stages, and a dict to fill with the flow's metrics.
    """
    LAUNCHERS[launcher]  # fail before any work on an unknown launcher
    tags = {**(tags or {}), tracking.TAG_PROCESS: tracking.this_process()}  # on every run: see fail_abandoned_runs
    experiment_id, parent_run_id = open_parent_run(config, tags)
    with finishing(parent_run_id) as metrics, tracking.system_metrics(parent_run_id), tracking.heartbeat(parent_run_id):
        steps = Steps(launcher, config.resources, experiment_id, parent_run_id, open_store(), tags)
        yield steps, metrics
        steps.settle()


@dataclass
class Configuration:
    """One configuration of a comparison, submitted: its MLflow run (nested in the flow's), the steps
    that track its stages there, its trained model and the model's evaluation. ``finish`` waits for
    them and closes the run with their metrics."""

    steps: Steps
    model: StageRun
    evaluation: StageRun

    def finish(self) -> tuple[Path, Path, dict[str, float]]:
        """(model, evaluation, the run's metrics): validation and test accuracy and the training minutes."""
        with finishing(self.steps.parent_run_id) as metrics:
            self.steps.settle()
            model, evaluation = self.model.artifact(), self.evaluation.artifact()
            metrics.update({**read_metrics(model), **read_metrics(evaluation), "train_minutes": train_minutes(model)})
        return model, evaluation, metrics


def finish_all(configurations: list[Configuration]) -> list[tuple[Path, Path, dict[str, float]]]:
    """``finish`` each configuration, in order. They run independently, so one that fails does not stop
    the others: all are waited for (and their runs closed), then the first error is raised."""
    done, errors = [], []
    for configuration in configurations:
        try:
            done.append(configuration.finish())
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]
    return done


def configuration_steps(steps: Steps, name: str, params: dict[str, Any]) -> Steps:
    """Steps that track under a new MLflow run for one configuration of a comparison, nested in the flow's;
    a ``Configuration`` made of their stages closes it."""
    return steps.nested_under(open_configuration_run(steps, name, params), name)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def log_comparison(parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """A comparison's table, one row per configuration, as ``comparison.md`` of the flow's run."""
    import pandas as pd

    from stages.lib.reports import markdown_table  # imports Keras: not at start-up of every flow

    with mlflow.start_run(run_id=parent_run_id):
        mlflow.log_text(markdown_table(pd.DataFrame(rows)), "comparison.md")


SHARED_STAGES = ("split", "outliers", "baseline")  # made once for many configurations: not in their time


def train_minutes(artifact: Path) -> float:
    """Minutes a configuration's own stages took to make ``artifact``: its stage and its parents but the
    shared ones (a self_train's pseudo_label, a fine_tune's pretrain)."""
    manifest = read_manifest(artifact)
    own = [read_manifest(parent_artifact(manifest, name))["seconds"]
           for name, parent in manifest["parents"].items() if parent["stage"] not in SHARED_STAGES]
    return round((manifest["seconds"] + sum(own)) / 60, 2)


def baseline_steps(steps: Steps, config: PipelineConfig, data: str | None,
                   start_model: str | None = None) -> tuple[Path, Path]:
    """(split, baseline model): made by the split and baseline stages, or ``start_model`` and its split."""
    if start_model:
        model = Path(start_model).resolve()
        split = Path(read_manifest(model)["parents"]["split"]["path"])
        return steps.reuse("split", split), steps.reuse("baseline", model)
    split = steps.run("split", config.split, {"data": locate_data(config, data)})
    return split, steps.run("baseline", config.baseline, {"split": split})
