"""The docker-compose stack for real: Postgres, the MLflow and Prefect servers and a docker worker,
with the "s3" profile's S3 server holding MLflow's artifacts and the pipeline's artifact store.

One stack serves the module: a smoke pipeline run from this machine against it, a deployment
whose cron schedule fires by itself and runs in a stage container that the worker starts, and
the MLflow compare page of those two runs in a headless Chromium (its screenshot lands in docs/).
"""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.containers
PROJECT = "ssl-pipeline-test"
EXPERIMENT = "compose-tests"
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "mlflow-compare.png"
CLI = [sys.executable, "-m", "pipelines.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    mlflow_uri: str
    prefect_api: str

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*self.compose, *args], env=self.env, check=True, text=True, capture_output=True,
                              **kwargs)

    def client_env(self, home: Path) -> dict[str, str]:
        """This machine's view of the stack, for the CLI."""
        return {**os.environ, "PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_uri,
                "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "SSL_PIPELINE_HOME": str(home), **self.s3_env,
                "SSL_PIPELINE_STORE": f"s3://{BUCKET}/store"}

    @property
    def s3_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.env['S3_PORT']}"}

    def s3(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.s3_env["AWS_ENDPOINT_URL"], key="testing", secret="testing")


BUCKET = "ssl-artifacts"


def compose_env(**images: str) -> dict[str, str]:
    return {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "COMPOSE_PROFILES": "s3", "POSTGRES_USER": "ssl",
            "POSTGRES_PASSWORD": secrets.token_hex(12), "MLFLOW_PORT": str(free_port()),
            "PREFECT_PORT": str(free_port()), "S3_PORT": str(free_port()),
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlflow", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": "http://s3:5000", **images}


COMPOSE = ["docker-compose", "--project-directory", str(ROOT), "--file", str(ROOT / "docker-compose.yml")]


def test_compose_file_is_valid():
    env = {**os.environ, **dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                                if line and not line.startswith("#"))}
    config = subprocess.run([*COMPOSE, "config"], env=env, check=True, text=True, capture_output=True).stdout
    assert "127.0.0.1:5000:5000" in config and "127.0.0.1:4200:4200" in config  # loopback only by default
    assert "driver: nvidia" in config  # the GPU worker's reservation


def wait_healthy(stack: Stack, services: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = stack.run("ps", "-q", *services).stdout.split()
        states = [json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .State}}", container],
                                            check=True, capture_output=True, text=True).stdout) for container in ids]
        if len(ids) == len(services) and all(s.get("Health", {}).get("Status", "healthy") == "healthy"
                                             and s["Running"] for s in states):
            return
        time.sleep(2)
    logs = stack.run("logs", "--tail", "30", *services).stdout
    pytest.fail(f"{services} not healthy after {timeout} s:\n{logs}")


@pytest.fixture(scope="module")
def stack(docker_client, stage_image):
    subprocess.run([ROOT / "docker" / "build-local.sh", "mlflow", "postgres"], check=True, cwd=ROOT)
    env = compose_env(STAGE_IMAGE=stage_image, MLFLOW_IMAGE="ssl-pipeline/mlflow:latest",
                      POSTGRES_IMAGE="ssl-pipeline/postgres:15")
    stack = Stack(COMPOSE, env, f"http://127.0.0.1:{env['MLFLOW_PORT']}",
                  f"http://127.0.0.1:{env['PREFECT_PORT']}/api")
    services = ["postgres", "s3", "mlflow", "prefect-server", "prefect-worker"]
    try:
        stack.run("up", "--detach", "--no-build", *services)
        wait_healthy(stack, services)
        stack.s3().mkdir(BUCKET)
        yield stack
    finally:
        # flow-run containers the worker started sit on the stack's network: remove them first
        for container in docker_client.containers.list(all=True, filters={"network": f"{PROJECT}_default"}):
            if container.labels.get("com.docker.compose.project") != PROJECT:
                container.remove(force=True)
        subprocess.run([*COMPOSE, "down", "--volumes", "--remove-orphans"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def direct_run(stack, archive, tmp_path_factory):
    """A smoke pipeline run from this machine, tracked in the stack's servers."""
    result = subprocess.run([*CLI, "run", "--preset", "smoke", "--data", str(archive)], text=True,
                            capture_output=True, env=stack.client_env(tmp_path_factory.mktemp("client-home")))
    assert result.returncode == 0, result.stderr[-3000:]
    return re.search(r"MLflow run ([0-9a-f]{32})", result.stdout).group(1)


def test_pipeline_run_lands_in_postgres_backed_mlflow(stack, direct_run):
    client = MlflowClient(stack.mlflow_uri)
    parent = client.get_run(direct_run)
    assert parent.info.status == "FINISHED" and "ssl_test_accuracy" in parent.data.metrics
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{direct_run}'")
    assert {run.data.tags["ssl.stage"] for run in nested} == {"split", "baseline", "consistency", "evaluate"}
    status = stack.run("exec", "-T", "postgres", "psql", "--username=ssl", "--dbname=mlflow", "--tuples-only",
                       "--no-align", "--command", f"SELECT status FROM runs WHERE run_uuid = '{direct_run}'")
    assert status.stdout.strip() == "FINISHED"
    evaluate = next(run for run in nested if run.data.tags["ssl.stage"] == "evaluate")
    # artifacts went through the server to its store (--serve-artifacts), in S3 beside the pipeline's artifacts
    assert {a.path for a in client.list_artifacts(evaluate.info.run_id)} >= {"manifest.json", "figures"}
    s3 = stack.s3()
    assert s3.glob(f"{BUCKET}/mlflow/**/{evaluate.info.run_id}/artifacts/manifest.json")
    digests = {json.loads(s3.cat_file(path))["digest"] for path in s3.glob(f"{BUCKET}/store/*/*/manifest.json")}
    assert {run.data.tags["ssl.artifact_digest"] for run in nested} == digests
    baseline = next(run for run in nested if run.data.tags["ssl.stage"] == "baseline")
    models = client.search_logged_models([parent.info.experiment_id],
                                         filter_string=f"source_run_id = '{baseline.info.run_id}'")
    assert [model.name for model in models] == ["model"]


def read_deployment_runs(stack: Stack, deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))

    with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
        return run_coro_as_sync(read())


@pytest.fixture(scope="module")
def scheduled_run(stack, archive, tmp_path_factory):
    """A deployment on a one-minute cron; the first run it fires by itself, and its MLflow run."""
    env = stack.client_env(tmp_path_factory.mktemp("deploy-home"))
    subprocess.run([
        *CLI, "deploy", "every-minute", "--preset", "smoke", "--set", "baseline.learning_rate=0.003",
        "--cron", "* * * * *", "--pool", "ssl-docker", "--image", stack.env["STAGE_IMAGE"],
        "--network", f"{PROJECT}_default", "--volume", f"{PROJECT}_artifacts:/data",
        "--volume", f"{archive}:/cifar/cifar-100-python.tar.gz:ro", "--data", "/cifar/cifar-100-python.tar.gz",
        "--env", "MLFLOW_TRACKING_URI=http://mlflow:5000", "--env", f"MLFLOW_EXPERIMENT_NAME={EXPERIMENT}",
    ], env=env, check=True, capture_output=True, text=True)
    deadline, run, paused = time.monotonic() + 420, None, False
    while time.monotonic() < deadline:
        runs = [r for r in read_deployment_runs(stack, "every-minute") if r.auto_scheduled and r.state]
        started = [r for r in runs if r.state.type.value in ("RUNNING", "COMPLETED", "FAILED", "CRASHED")]
        if started and not paused:  # one run is enough: stop the next minute's from competing for the CPU
            listing = subprocess.run([*CLI, "deployments", "pause", "every-minute"], env=env, check=True,
                                     capture_output=True, text=True)
            paused = "paused" in listing.stdout
        finished = [r for r in started if r.state.is_final()]
        if finished:
            run = finished[0]
            break
        time.sleep(5)
    assert run is not None, "no scheduled run finished in 7 minutes:\n" + stack.run(
        "logs", "--tail", "60", "prefect-worker").stdout
    listing = subprocess.run([*CLI, "deployments", "list"], env=env, check=True, capture_output=True, text=True)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{stack.run('logs', '--tail', '80', 'prefect-worker').stdout}"
    return run, listing.stdout


def test_scheduled_deployment_fires_and_completes(scheduled_run):
    run, listing = scheduled_run
    assert run.auto_scheduled and run.state.is_completed()
    assert "ssl-semi-supervised/every-minute" in listing and "paused" in listing and "* * * * *" in listing


def parent_runs(client: MlflowClient, flow_run_id) -> list:
    """The MLflow parent runs of a Prefect flow run (its stages' nested runs carry the tag too)."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    return [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def test_deployment_resumes_and_runs_on_demand(stack, scheduled_run, tmp_path):
    env = stack.client_env(tmp_path)
    resumed = subprocess.run([*CLI, "deployments", "resume", "every-minute"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    subprocess.run([*CLI, "deployments", "pause", "every-minute"], env=env, check=True, capture_output=True)
    triggered = subprocess.run([*CLI, "deployments", "run", "every-minute", "--wait"], env=env, capture_output=True,
                               text=True, timeout=300)
    assert triggered.returncode == 0 and triggered.stdout.strip().endswith("Completed"), triggered.stdout


def test_scheduled_run_is_tracked_in_mlflow(stack, scheduled_run):
    run, _ = scheduled_run
    parents = parent_runs(MlflowClient(stack.mlflow_uri), run.id)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["baseline.learning_rate"] == "0.003"
    assert "ssl_test_accuracy" in parents[0].data.metrics


def test_mlflow_compare_page_shows_both_configurations(stack, direct_run, scheduled_run):
    from playwright.sync_api import sync_playwright

    client = MlflowClient(stack.mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = [client.get_run(direct_run), *parent_runs(client, scheduled_run[0].id)]
    query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in runs]),
                                    "experiments": json.dumps([experiment.experiment_id])})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(f"{stack.mlflow_uri}/#/compare-runs?{query}")
        page.get_by_text("ssl_test_accuracy").first.wait_for(timeout=60_000)
        page.get_by_label("Close").click()  # the assistant panel
        page.get_by_label("Parameters - Show diff only").click()  # the two configurations' differences
        page.wait_for_timeout(500)
        text = page.inner_text("body")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        browser.close()
    details = text[text.index("Run details"):]  # below the plots, whose controls are named alike
    parameters, metrics = details[details.index("Parameters"):details.index("Metrics")], details[details.index("Metrics"):]
    for compared in runs:
        assert compared.info.run_name in details
        # the page rounds metric values to 3 decimals
        assert str(round(compared.data.metrics["ssl_test_accuracy"], 3)) in metrics
    assert "baseline.learning_rate" in parameters and "0.001" in parameters and "0.003" in parameters


def test_concurrent_flows_lose_nothing_in_postgres_backed_mlflow(stack, archive, tmp_path):
    """Three flows at once on one artifact store and the stack's MLflow (two meet on the same outputs)."""
    env = stack.client_env(tmp_path / "home")
    flows = [subprocess.Popen([*CLI, "run", "--preset", "smoke", "--data", str(archive), "--set", f"baseline.seed={seed}"],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for seed in (3, 3, 4)]
    results = [(flow.communicate(timeout=900), flow.returncode) for flow in flows]
    assert [code for _, code in results] == [0, 0, 0], [err[-2000:] for (_, err), _ in results]
    client = MlflowClient(stack.mlflow_uri)
    for (out, _), _ in results:
        parent = client.get_run(re.search(r"MLflow run ([0-9a-f]{32})", out).group(1))
        assert parent.info.status == "FINISHED" and "ssl_test_accuracy" in parent.data.metrics
        nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted((run.data.tags["ssl.stage"], run.info.status) for run in nested) == [
            (stage, "FINISHED") for stage in ("baseline", "consistency", "evaluate", "evaluate", "split")]
        baseline = next(run for run in nested if run.data.tags["ssl.stage"] == "baseline")
        assert len(client.get_metric_history(baseline.info.run_id, "val_accuracy")) == 2  # the smoke preset's epochs
