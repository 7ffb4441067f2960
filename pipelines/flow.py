"""What every flow shares: cached stage tasks, their MLflow runs, the parent run of a flow run.

Each stage is one cached Prefect task: its cache key is a hash of the stage name, its config,
the digests of its input artifacts and the stage code version, and its output lands in the
artifact store under that key. Rerunning an unchanged pipeline therefore skips every stage;
changing one stage's config reruns it and, through the new output digest, everything after it.
Tracking is a separate task per stage with retries, since it is the step that talks to a server.
"""

from __future__ import annotations

import contextlib
import logging
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
from prefect.runtime import flow_run
from pydantic import BaseModel

from pipelines import settings, tracking
from pipelines.config import PipelineConfig, preset_differences
from pipelines.launchers import LAUNCHERS, ResourcesConfig
from stages.lib import sources
from stages.lib.artifacts import MANIFEST, code_version, file_digest, file_lock, read_manifest, sha256_json, verify

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
    """Prefect cache key = ``stage_key`` of the task's stage, config and input artifacts."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str:
        return stage_key(inputs["stage"], inputs["config"], inputs["inputs"])


def is_transient(task, task_run, state) -> bool:
    """Retry only failures of talking to a server, never a bug or bad data."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (ConnectionError, TimeoutError, requests.RequestException, sqlalchemy.exc.OperationalError))


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def locate_data(config: PipelineConfig, path: str | None) -> Path:
    """What the split reads: the verified CIFAR-100 archive (downloaded into the cache when no path is
    given), or the user's folder or table."""
    return sources.locate(config.split.data.source, path)


@task(cache_policy=StageCachePolicy(), persist_result=True, task_run_name="{stage}")
def run_stage(stage: str, config: BaseModel, inputs: dict[str, Path], launcher: str,
              resources: ResourcesConfig) -> Path:
    output = settings.artifact_root() / stage / stage_key(stage, config, inputs)[:16]
    # a concurrent flow making the same artifact: wait for it, then use what it made. Not the stage's
    # own lock (Stage.execute): a stage in a container takes that one while this process waits.
    with file_lock(output.with_name(f".{output.name}.launch.lock")):
        if not output.exists():
            LAUNCHERS[launcher]().launch(stage, config, inputs, output, resources)
    verify(output)
    return output


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient, task_run_name="track-{stage}")
def track_stage(experiment_id: str, parent_run_id: str, stage: str, artifact: Path, cached: bool,
                stage_task_run_id: str, tags: dict[str, str], run_name: str) -> str:
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.task_run_id": stage_task_run_id, **tags}
    return tracking.log_stage(experiment_id, parent_run_id, stage, artifact, cached, tags, run_name)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def open_parent_run(config: PipelineConfig, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """(experiment id, parent run id) of this flow run's MLflow parent run.

    Runs that killed flows left RUNNING are marked FAILED first; the new run links to those of the
    same flow and configuration (``ssl.resumes``), whose finished stages it takes from the cache.
    ``ssl.overrides`` names what the config changed from its preset, so runs compare by it.
    """
    experiment_id = tracking.configure()
    digest = sha256_json({"flow": flow_run.flow_name, "config": config.model_dump(mode="json")})
    resumes = tracking.fail_abandoned_runs(experiment_id, digest)
    parent_run_id = tracking.start_parent_run(
        experiment_id, f"{config.preset}-{flow_run.name}", config.model_dump(mode="json"),
        {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
         tracking.TAG_FLOW_DIGEST: digest, tracking.TAG_OVERRIDES: tracking.overrides_tag(preset_differences(config)),
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
    tags: dict[str, str] = field(default_factory=dict)  # on every stage run
    label: str = ""  # the configuration, appended to stage run names: "self_train threshold=0.85 ..."

    def nested_under(self, run_id: str, label: str = "") -> Steps:
        return replace(self, parent_run_id=run_id, label=label)

    def run(self, stage: str, config: BaseModel, inputs: dict[str, Path]) -> Path:
        """Run (or reuse) one stage, then track it under the parent run."""
        log.info("stage %s: starting (%s)", stage, self.launcher)
        cached_task = run_stage.with_options(result_storage=settings.prefect_results())
        state = cached_task(stage, config, inputs, self.launcher, self.resources, return_state=True)
        artifact = state.result()
        cached = state.name == "Cached"
        if cached and not artifact.exists():  # the cache outlived its artifact: make it again
            state = cached_task.with_options(refresh_cache=True)(stage, config, inputs, self.launcher, self.resources,
                                                                 return_state=True)
            artifact, cached = state.result(), False
        log.info("stage %s: %s %s", stage, "reused from cache" if cached else "built", artifact)
        self.track(stage, artifact, cached, str(state.state_details.task_run_id))
        return artifact

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


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=is_transient)
def open_configuration_run(steps: Steps, name: str, params: dict[str, Any]) -> str:
    return tracking.start_parent_run(steps.experiment_id, name, params, steps.tags, parent_run_id=steps.parent_run_id)


class TrackingFailed(RuntimeError):
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
    """This flow run's MLflow parent run (``tags`` also go on every stage run under it), with system metrics.

    Yields the steps that run and track the stages, and a dict to fill with the flow's metrics.
    """
    LAUNCHERS[launcher]  # fail before any work on an unknown launcher
    tags = {**(tags or {}), tracking.TAG_PROCESS: tracking.this_process()}  # on every run: see fail_abandoned_runs
    experiment_id, parent_run_id = open_parent_run(config, tags)
    with finishing(parent_run_id) as metrics, tracking.system_metrics(parent_run_id):
        yield Steps(launcher, config.resources, experiment_id, parent_run_id, tags), metrics


@contextlib.contextmanager
def configuration_run(steps: Steps, name: str, params: dict[str, Any]) -> Iterator[tuple[Steps, dict[str, float]]]:
    """An MLflow run nested in the flow's for one configuration of a comparison.

    Yields the steps that nest their stage runs under it and a dict to fill with its metrics.
    """
    run_id = open_configuration_run(steps, name, params)
    with finishing(run_id) as metrics:
        yield steps.nested_under(run_id, name), metrics


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
    own = [read_manifest(Path(p["path"]))["seconds"] for p in manifest["parents"].values() if p["stage"] not in SHARED_STAGES]
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
