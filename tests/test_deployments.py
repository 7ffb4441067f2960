"""Deployment plumbing without an engine: job variables, the Kubernetes template, CLI guards."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from pipelines.cli import main
from pipelines.deployments import container_job_variables
from pipelines.launchers import ResourcesConfig, container_limits

TEMPLATE = Path(__file__).resolve().parent.parent / "docker" / "kubernetes-job-template.json"


def test_job_variables_carry_mounts_network_and_resources():
    variables = container_job_variables("stack_default", ["artifacts:/data"], {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
                                        ResourcesConfig(gpus=2, cpus=1.5, memory_gb=4))
    assert variables["networks"] == ["stack_default"] and variables["volumes"] == ["artifacts:/data"]
    assert variables["env"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert variables["mem_limit"] == str(4 * 2**30)
    assert variables["container_create_kwargs"] == {
        "nano_cpus": 1_500_000_000, "device_requests": [{"count": 2, "capabilities": [["gpu"]]}]}
    assert "container_create_kwargs" not in container_job_variables(None, [], {}, ResourcesConfig())


def test_deploy_without_a_server_says_how_to_point_at_one(capsys, monkeypatch):
    # before any test here starts the module's temporary server
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main(["deployments", "list"]) == 2
    assert "set PREFECT_API_URL" in capsys.readouterr().err


def test_docker_launcher_limits_follow_resources():
    limits = container_limits(ResourcesConfig(gpus=1, cpus=1.5, memory_gb=2))
    assert limits["nano_cpus"] == 1_500_000_000 and limits["mem_limit"] == 2 * 2**30
    assert limits["device_requests"] == [{"count": 1, "capabilities": [["gpu"]]}]
    assert container_limits(ResourcesConfig()) == {}


def create_pool(name: str, template: Path) -> subprocess.CompletedProcess:
    """Prefect's own CLI validates a base job template when it creates a pool."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", name, "--type", "kubernetes",
         "--base-job-template", str(template)],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, capture_output=True, text=True)


def test_kubernetes_template_passes_prefect_validation(prefect, tmp_path):
    template = json.loads(TEMPLATE.read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_limit }}"
    assert create_pool("k8s-gpu", TEMPLATE).returncode == 0

    broken = copy.deepcopy(template)
    del broken["variables"]["properties"]["gpu_limit"]  # still used by the job manifest
    broken_file = tmp_path / "broken.json"
    broken_file.write_text(json.dumps(broken))
    result = create_pool("k8s-broken", broken_file)
    assert result.returncode != 0 and "gpu_limit" in result.stdout + result.stderr


def test_process_pool_deployment_runs_in_the_workers_environment(prefect, archive, tmp_path):
    """The compose GPU worker's way: a process pool whose worker runs the flow where it stands."""
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SSL_PIPELINE_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "pipelines.cli"]
    deployed = subprocess.run([*cli, "deploy", "on-worker", "--preset", "smoke", "--pool", "local-process",
                               "--pool-type", "process", "--data", str(archive)],
                              env=env, capture_output=True, text=True)
    assert deployed.returncode == 0 and "process work pool local-process" in deployed.stdout, deployed.stderr
    triggered = subprocess.run([*cli, "deployments", "run", "on-worker"], env=env, capture_output=True, text=True)
    flow_run_id = triggered.stdout.split("flow run ")[1].split(":")[0]
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "local-process",
                             "--type", "process", "--run-once"], env=env, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr[-2000:]

    async def state():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    assert run_coro_as_sync(state()).is_completed(), worker.stdout[-3000:]
