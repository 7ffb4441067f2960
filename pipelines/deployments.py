"""Scheduled pipeline runs: Prefect deployments of the pipeline flow.

A deployment on a ``docker`` work pool runs each flow run in a stage container that a worker
starts (the docker-compose stack has one); the same deployment on a Kubernetes work pool runs it
as a Job (``docker/kubernetes-job-template.json``). ``serve`` runs the schedule in this process
instead, with no worker. The flow's parameters are the full resolved config, so the Prefect UI
shows and edits every hyperparameter of a scheduled run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.utilities.asyncutils import run_coro_as_sync

from pipelines.config import PipelineConfig
from pipelines.launchers import ResourcesConfig, container_limits
from pipelines.semi_supervised import semi_supervised_pipeline
from stages.lib.errors import InvalidSetting

FLOW = semi_supervised_pipeline


def flow_parameters(config: PipelineConfig, data: str | None) -> dict[str, Any]:
    return {"config": config.model_dump(mode="json"), "data": data}


def container_job_variables(network: str | None, volumes: list[str], env: Mapping[str, str],
                            resources: ResourcesConfig) -> dict[str, Any]:
    """Job variables of the docker work pool for one deployment (the image is passed apart)."""
    variables: dict[str, Any] = {
        "image_pull_policy": "IfNotPresent",  # locally built images are in no registry
        "auto_remove": True,
        "volumes": list(volumes),
        "env": dict(env),
    }
    if network:
        variables["networks"] = [network]
    limits = container_limits(resources)  # the same requests the docker launcher makes
    if "mem_limit" in limits:  # a job variable of its own, a string
        variables["mem_limit"] = str(limits.pop("mem_limit"))
    if limits:
        variables["container_create_kwargs"] = limits
    return variables


def deploy(name: str, config: PipelineConfig, *, pool: str, pool_type: str, image: str | None, cron: str | None,
           job_variables: dict[str, Any], data: str | None = None, paused: bool = False) -> UUID:
    """Register (or update) a deployment of the pipeline on a work pool; its id.

    A docker pool starts each run in ``image``; a process pool runs it in the worker's own
    environment (the compose GPU worker: the GPU image, with the GPU reserved for it).
    """
    ensure_work_pool(pool, pool_type)
    ensure_zombie_automation()
    job_variables = {**job_variables, "env": {**job_variables.get("env", {}), **mlflow_credentials()}}
    deployment = FLOW.to_deployment(
        name=name, cron=cron, paused=paused, parameters=flow_parameters(config, data),
        job_variables=job_variables, tags=[f"preset:{config.preset}"],
        description=f"{FLOW.name} with the {config.preset} preset",
        # the images have the package installed: import by module, whatever the caller's directory
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return deployment.apply(work_pool_name=pool, image=image if pool_type == "docker" else None)


MLFLOW_PASSWORD_BLOCK = "ssl-pipeline-mlflow-password"


def mlflow_credentials() -> dict[str, str]:
    """The MLflow credentials of this shell for the deployment's flow runs: the password saved as a Prefect
    Secret block that the worker resolves when it starts a run, so no deployment shows it."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        return {}
    Secret(value=password).save(MLFLOW_PASSWORD_BLOCK, overwrite=True)
    return {"MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": "{{ prefect.blocks.secret.%s }}" % MLFLOW_PASSWORD_BLOCK}


ZOMBIE_AUTOMATION = "ssl-pipeline: crash flow runs without heartbeats"


def ensure_zombie_automation() -> None:
    """Prefect's answer to a flow run whose process died with its worker or host: the run's heartbeats
    (every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds) stop, and this automation marks it CRASHED after
    three missed beats. A worker that sees its container die marks the run at once."""
    from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, Posture, ResourceSpecification
    from prefect.client.schemas.objects import StateType
    from prefect.settings import get_current_settings

    with contextlib.suppress(ValueError):  # read raises for a name not there
        Automation.read(name=ZOMBIE_AUTOMATION)
        return
    heartbeat = get_current_settings().flows.heartbeat_frequency or 180
    Automation(
        name=ZOMBIE_AUTOMATION,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=3 * heartbeat)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {3 * heartbeat} s: its process, container or host died")],
    ).create()


def serve(name: str, config: PipelineConfig, *, cron: str | None, data: str | None = None) -> None:
    """Run the schedule in this process until interrupted (no work pool, no worker)."""
    FLOW.serve(name=name, cron=cron, parameters=flow_parameters(config, data),
               tags=[f"preset:{config.preset}"])


def ensure_work_pool(name: str, pool_type: str) -> None:
    async def ensure() -> None:
        async with get_client() as client:
            try:
                pool = await client.read_work_pool(name)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
                return
            if pool.type != pool_type:
                raise InvalidSetting(f"work pool {name!r} has type {pool.type!r}, not {pool_type!r}: "
                                     "choose another --pool")

    run_coro_as_sync(ensure())


def full_name(name: str) -> str:
    """``flow-name/deployment-name``, the form Prefect looks deployments up by."""
    return name if "/" in name else f"{FLOW.name}/{name}"


def list_deployments() -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        async with get_client() as client:
            flows = {flow.id: flow.name for flow in await client.read_flows()}
            return [{
                "name": f"{flows.get(d.flow_id, '?')}/{d.name}",
                "schedules": ", ".join(s.schedule.cron for s in d.schedules if getattr(s.schedule, "cron", None)),
                "paused": d.paused,
                "work_pool": d.work_pool_name or "(served)",
            } for d in await client.read_deployments()]

    return run_coro_as_sync(read())


def set_paused(name: str, paused: bool) -> None:
    async def update() -> None:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(full_name(name))
            if paused:
                await client.pause_deployment(deployment.id)
            else:
                await client.resume_deployment(deployment.id)

    run_coro_as_sync(update())


def trigger(name: str, wait: bool) -> tuple[UUID, str]:
    """Start a run of a deployment now; its id and state (final when ``wait``)."""
    run = run_deployment(full_name(name), timeout=None if wait else 0)
    return run.id, run.state.name if run.state else "Scheduled"
