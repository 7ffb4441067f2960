"""The docker-compose stack for real: Postgres, the MLflow and Prefect servers with their
authentication on, a docker worker and the sweeper of dead flows' runs, with the "s3" profile's S3
server holding MLflow's artifacts and the pipeline's artifact store.

One stack serves the module: a smoke pipeline run from this machine against it, a deployment
whose cron schedule fires by itself and runs in a stage container that the worker starts, the
MLflow compare page of those two runs in a headless Chromium (its screenshot lands in docs/),
requests without credentials, concurrent flows and promotions, servers restarted mid-flow, a full
artifact store and a killed flow container.
"""

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
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
                "SSL_PIPELINE_STORE": f"s3://{BUCKET}/store", **self.credentials, **HEARTBEAT}

    @property
    def credentials(self) -> dict[str, str]:
        return {name: self.env[name] for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                  "PREFECT_API_AUTH_STRING")}

    @property
    def secrets(self) -> list[str]:
        return [self.env["POSTGRES_PASSWORD"], self.env["MLFLOW_TRACKING_PASSWORD"],
                self.env["PREFECT_API_AUTH_STRING"].partition(":")[2]]

    @property
    def s3_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.env['S3_PORT']}"}

    def s3(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.s3_env["AWS_ENDPOINT_URL"], key="testing", secret="testing")


BUCKET = "ssl-artifacts"
# flows beat every 2 s; the sweeper, every 2 s, fails runs silent for 30 s (longer than a server's restart)
HEARTBEAT = {"SSL_PIPELINE_HEARTBEAT_SECONDS": "2", "SSL_PIPELINE_HEARTBEAT_TIMEOUT": "30"}


def compose_env(**images: str) -> dict[str, str]:
    return {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "COMPOSE_PROFILES": "s3", "POSTGRES_USER": "ssl",
            "POSTGRES_PASSWORD": secrets.token_hex(12), "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12), "PREFECT_API_AUTH_STRING": f"admin:{secrets.token_hex(12)}",
            "SWEEP_SECONDS": "2", "SSL_PIPELINE_HEARTBEAT_TIMEOUT": HEARTBEAT["SSL_PIPELINE_HEARTBEAT_TIMEOUT"],
            "MLFLOW_PORT": str(free_port()),
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
    services = ["postgres", "s3", "mlflow", "prefect-server", "prefect-worker", "run-sweeper"]
    saved = {name: os.environ.get(name) for name in stack.credentials}
    try:
        stack.run("up", "--detach", "--no-build", *services)
        wait_healthy(stack, services)
        stack.s3().mkdir(BUCKET)
        os.environ.update({k: v for k, v in stack.credentials.items() if k.startswith("MLFLOW")})  # MlflowClient's
        yield stack
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
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


def on_prefect(stack: Stack, read):
    """``await read(client)`` with a Prefect client of the stack's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def call():
        async with get_client() as client:
            return await read(client)

    with temporary_settings({PREFECT_API_URL: stack.prefect_api,
                             PREFECT_API_AUTH_STRING: stack.env["PREFECT_API_AUTH_STRING"]}):
        return run_coro_as_sync(call())


def read_deployment_runs(stack: Stack, deployment: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    return on_prefect(stack, lambda client: client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))))


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
        *(f"--env={name}={value}" for name, value in HEARTBEAT.items()),
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


def test_scheduled_deployment_fires_and_completes(stack, scheduled_run):
    run, listing = scheduled_run
    assert run.auto_scheduled and run.state.is_completed()
    assert "ssl-semi-supervised/every-minute" in listing and "paused" in listing and "* * * * *" in listing
    from pipelines.deployments import ZOMBIE_AUTOMATION

    deployment = on_prefect(stack, lambda client: client.read_deployment_by_name("ssl-semi-supervised/every-minute"))
    # the run reached MLflow with the password of a Secret block, which the deployment only names
    assert deployment.job_variables["env"]["MLFLOW_TRACKING_PASSWORD"] == "{{ prefect.blocks.secret.ssl-pipeline-mlflow-password }}"
    automations = on_prefect(stack, lambda client: client.read_automations_by_name(ZOMBIE_AUTOMATION))
    assert len(automations) == 1 and automations[0].actions[0].state.value == "CRASHED"


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
        page = browser.new_page(viewport={"width": 1400, "height": 1500}, http_credentials={
            "username": stack.env["MLFLOW_TRACKING_USERNAME"], "password": stack.env["MLFLOW_TRACKING_PASSWORD"]})
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


def refused_requests(stack: Stack, auth) -> list[tuple[str, int]]:
    """Reads and writes of both servers, each sent with ``auth``: (request, HTTP status)."""
    import requests

    mlflow_api, prefect_api = f"{stack.mlflow_uri}/api/2.0/mlflow", stack.prefect_api
    tried = [
        ("GET", f"{mlflow_api}/experiments/search?max_results=5", None),
        ("GET", f"{mlflow_api}/experiments/get-by-name?experiment_name={EXPERIMENT}", None),
        ("POST", f"{mlflow_api}/experiments/create", {"name": "intruder"}),
        ("POST", f"{mlflow_api}/runs/search", {"experiment_ids": ["0", "1"]}),
        ("POST", f"{mlflow_api}/runs/create", {"experiment_id": "0"}),
        ("GET", f"{mlflow_api}/registered-models/search", None),
        ("POST", f"{mlflow_api}/registered-models/alias", {"name": "m", "alias": "champion", "version": "1"}),
        ("GET", f"{stack.mlflow_uri}/api/2.0/mlflow-artifacts/artifacts", None),
        ("GET", f"{stack.mlflow_uri}/", None),  # the UI
        ("GET", f"{prefect_api}/admin/version", None),
        ("POST", f"{prefect_api}/flow_runs/filter", {}),
        ("POST", f"{prefect_api}/deployments/filter", {}),
        ("POST", f"{prefect_api}/work_pools/filter", {}),
        ("POST", f"{prefect_api}/block_documents/filter", {}),
        ("POST", f"{prefect_api}/flows/", {"name": "intruder"}),
        ("GET", f"{prefect_api.removesuffix('/api')}/", None),  # the UI's settings come from the API: this page is static
    ]
    return [(f"{method} {url}", requests.request(method, url, json=body, auth=auth, timeout=20).status_code)
            for method, url, body in tried]


def test_servers_refuse_requests_without_credentials(stack):
    user = stack.env["MLFLOW_TRACKING_USERNAME"]
    for auth in (None, (user, "wrong-password")):
        answered = refused_requests(stack, auth)
        api = [(request, status) for request, status in answered if not request.endswith(f"{stack.env['PREFECT_PORT']}/")]
        refused = [request for request, status in api if status in (401, 403)]
        print(f"\nwithout credentials ({auth and 'wrong password' or 'none'}): {len(refused)} of {len(api)} API "
              "requests refused")
        assert len(refused) == len(api), [pair for pair in api if pair[0] not in refused]
    granted = refused_requests(stack, (user, stack.env["MLFLOW_TRACKING_PASSWORD"]))
    assert dict(granted)[f"GET {stack.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=5"] == 200


@pytest.mark.parametrize("server", ["mlflow", "prefect"])
def test_wrong_credentials_end_with_one_clear_error(stack, archive, tmp_path, server):
    env = stack.client_env(tmp_path)
    if server == "mlflow":
        env["MLFLOW_TRACKING_PASSWORD"], variable = "wrong", "MLFLOW_TRACKING_PASSWORD"
    else:
        env["PREFECT_API_AUTH_STRING"], variable = "admin:wrong", "PREFECT_API_AUTH_STRING"
    result = subprocess.run([*CLI, "run", "--preset", "smoke", "--data", str(archive)], env=env, text=True,
                            capture_output=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if "refused" in line]
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-3000:]
    assert variable in errors[0] and "401" in errors[0] and "Traceback" not in result.stderr


def test_placeholder_secrets_refuse_to_start(tmp_path):
    env = {**compose_env(POSTGRES_IMAGE="ssl-pipeline/postgres:15"), "COMPOSE_PROJECT_NAME": f"{PROJECT}-placeholder",
           **{name: value for name, value in (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                                              if line and not line.startswith("#")) if "PASSWORD" in name or "AUTH" in name}}
    try:
        started = subprocess.run([*COMPOSE, "up", "--detach", "--no-build", "postgres"], env=env, text=True,
                                 capture_output=True, timeout=120)
        logs = subprocess.run([*COMPOSE, "logs", "secrets-check"], env=env, text=True, capture_output=True).stdout
    finally:
        subprocess.run([*COMPOSE, "down", "--volumes"], env=env, capture_output=True)
    assert started.returncode != 0 and "secrets-check" in started.stderr
    for name in ("POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"):
        assert f"error: {name} in .env is empty or .env.example's placeholder: set a secret of your own" in logs
    assert "change-me" not in logs.replace(".env.example's placeholder", "")  # names, never values


def test_no_secret_in_logs_or_images(stack, direct_run, scheduled_run):
    logs = stack.run("logs", "--no-color").stdout
    images = subprocess.run(["docker", "image", "inspect", stack.env["STAGE_IMAGE"], stack.env["MLFLOW_IMAGE"]],
                            check=True, capture_output=True, text=True).stdout
    for secret in stack.secrets:
        assert secret not in logs and secret not in images


def test_champion_is_the_best_version_after_concurrent_promotions(stack):
    """Eight promoters register versions of one model at once through the HTTP server; the alias ends on
    the most accurate."""
    import random
    import threading

    from pipelines import tracking

    client, name = MlflowClient(stack.mlflow_uri), f"concurrency-{secrets.token_hex(4)}"
    client.create_registered_model(name)
    start, accuracies, errors = threading.Barrier(8), {}, []

    def promoter(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        try:
            for number in range(3):
                version = client.create_model_version(name, f"s3://{BUCKET}/models/{seed}-{number}").version
                accuracies[version] = round(rng.random(), 4)
                for key, value in (("val_accuracy", str(accuracies[version])), (tracking.TAG_VALIDATION, "v")):
                    client.set_model_version_tag(name, version, key, value)
                tracking.promote_champion(name, "v")
        except Exception as error:
            errors.append(error)

    with mock_tracking_uri(stack.mlflow_uri):
        threads = [threading.Thread(target=promoter, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    best = max(accuracies, key=lambda version: (accuracies[version], -int(version)))
    assert not errors and len(accuracies) == 24 and client.get_model_version_by_alias(name, tracking.CHAMPION).version == best


@contextlib.contextmanager
def mock_tracking_uri(uri: str):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def run_id_of(out: str) -> str:
    return re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)


def assert_run_complete(client: MlflowClient, parent_run_id: str) -> None:
    parent = client.get_run(parent_run_id)
    assert parent.info.status == "FINISHED" and "ssl_test_accuracy" in parent.data.metrics
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    assert sorted((run.data.tags["ssl.stage"], run.info.status) for run in nested) == [
        (stage, "FINISHED") for stage in ("baseline", "consistency", "evaluate", "evaluate", "split")]
    baseline = next(run for run in nested if run.data.tags["ssl.stage"] == "baseline")
    made_by = baseline.data.tags.get("ssl.cached_from_run", baseline.info.run_id)  # a reused model's maker has its epochs
    assert len(client.get_metric_history(made_by, "val_accuracy")) == 2  # the smoke preset's epochs


def test_eight_concurrent_flows_lose_nothing(stack, archive, tmp_path):
    """Eight smoke flows at once on one artifact store and the stack's servers; pairs meet on the same outputs."""
    env = stack.client_env(tmp_path / "home")
    seeds = [7, 7, 8, 8, 9, 9, 10, 10]
    flows = [subprocess.Popen([*CLI, "run", "--preset", "smoke", "--data", str(archive), "--set", f"baseline.seed={seed}"],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for seed in seeds]
    results = [(flow.communicate(timeout=1500), flow.returncode) for flow in flows]
    completed = [code for _, code in results].count(0)
    print(f"\nconcurrent flows: {completed} of {len(flows)} completed")
    assert completed == len(flows), [err[-2000:] for (_, err), code in results if code]
    client = MlflowClient(stack.mlflow_uri)
    for (out, _), _ in results:
        assert_run_complete(client, run_id_of(out))


def output_lines(process: subprocess.Popen, lines: list[str]) -> threading.Thread:
    """Collects the process's stderr lines into ``lines``, in a thread."""
    thread = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    thread.start()
    return thread


def wait_for_line(lines: list[str], text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize("server, seed", [("postgres", 11), ("mlflow", 13)])
def test_a_server_restarted_mid_flow(stack, archive, tmp_path, server, seed):
    """The flow completes through the restart (clients retry), or stops with its artifacts kept and the
    same command completes."""
    env = stack.client_env(tmp_path / "home")
    command = [*CLI, "run", "--preset", "smoke", "--data", str(archive), "--set", f"baseline.seed={seed}"]
    flow = subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines: list[str] = []
    reader = output_lines(flow, lines)
    wait_for_line(lines, "stage baseline: submitted", flow)
    stack.run("restart", server)
    out = flow.stdout.read()
    flow.wait(timeout=600)
    reader.join()
    if flow.returncode:  # the tracking server stayed away longer than the client's retries
        stderr = "".join(lines)
        assert flow.returncode == 2 and "is kept" in stderr and "Traceback" not in stderr, stderr[-3000:]
        rerun = subprocess.run(command, text=True, capture_output=True, env=env, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        out = rerun.stdout
    print(f"\n{server} restarted mid-flow: the flow {'completed' if not flow.returncode else 'stopped, the rerun completed'}")
    wait_healthy(stack, [server])
    assert_run_complete(MlflowClient(stack.mlflow_uri), run_id_of(out))


def test_a_full_artifact_store_fails_clearly_and_loses_nothing(stack, archive, tmp_path):
    """The store on a 3.5 MB tmpfs: the split fits, the baseline does not. One clear error, no partial
    artifact; once the store has room the same command completes and reuses the split."""
    home = tmp_path / "home"
    store = home / "artifacts"
    store.mkdir(parents=True)
    env = {**stack.client_env(home), "SSL_PIPELINE_STORE": str(store)}
    command = [*CLI, "run", "--preset", "smoke", "--data", str(archive), "--set", "baseline.seed=12"]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3500k", "tmpfs", str(store)], check=True)
    try:
        full = subprocess.run(command, text=True, capture_output=True, env=env, timeout=600)
        assert full.returncode == 2, full.stderr[-3000:]
        errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in full.stderr, full.stderr[-3000:]
        finished = [path.parent for path in store.glob("*/*/manifest.json")]
        assert [path.parent.name for path in finished] == ["split"]
        assert not [path for path in store.glob("*/*") if not path.name.startswith(".") and path not in finished]
        assert not list(store.glob("*/.*.tmp-*"))  # no half-written output left
        subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
        roomy = subprocess.run(command, text=True, capture_output=True, env=env, timeout=600)
        assert roomy.returncode == 0, roomy.stderr[-3000:]
        assert "stage split: reused" in roomy.stderr
    finally:
        subprocess.run(["umount", str(store)], check=True)
    assert_run_complete(MlflowClient(stack.mlflow_uri), run_id_of(roomy.stdout))


def test_a_killed_flow_container_ends_failed_by_heartbeat(stack, scheduled_run, docker_client, tmp_path):
    """SIGKILL to a deployment's flow-run container mid-flow: the sweeper marks its MLflow runs FAILED once
    their heartbeat is older than the timeout, and the worker marks the Prefect flow run CRASHED."""
    env = stack.client_env(tmp_path)
    subprocess.run([*CLI, "deployments", "run", "every-minute"], env=env, check=True, capture_output=True, text=True)
    client, deadline = MlflowClient(stack.mlflow_uri), time.monotonic() + 300
    while True:
        flow_run = max(read_deployment_runs(stack, "every-minute"), key=lambda r: r.created)
        parents = parent_runs(client, flow_run.id)
        containers = docker_client.containers.list(filters={"label": f"io.prefect.flow-run-id={flow_run.id}"})
        if parents and containers and parents[0].info.status == "RUNNING":
            break
        assert time.monotonic() < deadline, "the triggered run never started"
        time.sleep(1)
    containers[0].kill()
    killed = time.monotonic()
    while client.get_run(parents[0].info.run_id).info.status == "RUNNING":
        assert time.monotonic() - killed < 120, "the killed flow's run is still RUNNING"
        time.sleep(1)
    detected = time.monotonic() - killed
    run = client.get_run(parents[0].info.run_id)
    print(f"\nkilled flow container: its MLflow run FAILED {detected:.1f} s after the kill "
          f"(heartbeat timeout {HEARTBEAT['SSL_PIPELINE_HEARTBEAT_TIMEOUT']} s)")
    assert run.info.status == "FAILED" and "no heartbeat" in run.data.tags["ssl.failure"]
    # the last beat may lie a few intervals before the kill (a busy flow), so no lower bound but 0
    assert 0 < detected < float(HEARTBEAT["SSL_PIPELINE_HEARTBEAT_TIMEOUT"]) + 30
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert all(nested_run.info.status != "RUNNING" for nested_run in nested)
    deadline = time.monotonic() + 120
    while not (state := next(r for r in read_deployment_runs(stack, "every-minute") if r.id == flow_run.id).state).is_final():
        assert time.monotonic() < deadline, state
        time.sleep(2)
    assert state.type.value == "CRASHED"


def test_a_viewer_reads_and_a_teammate_granted_edit_writes(stack, direct_run):
    """The README's user management: a new user reads (READ is the default permission) and writes nothing;
    one granted EDIT on the pipeline's experiment creates runs in it."""
    import requests
    from mlflow.server import get_app_client

    users = get_app_client("basic-auth", tracking_uri=stack.mlflow_uri)  # as the admin of .env
    experiment_id = MlflowClient(stack.mlflow_uri).get_experiment_by_name(EXPERIMENT).experiment_id
    users.create_user("viewer", "viewer-password-1")
    users.create_user("teammate", "teammate-password-1")
    users.grant_user_permission("teammate", "experiment", experiment_id, "EDIT")

    def status(user: str, endpoint: str, body: dict) -> int:
        return requests.post(f"{stack.mlflow_uri}/api/2.0/mlflow/{endpoint}", json=body, timeout=20,
                             auth=(user, f"{user}-password-1")).status_code

    assert status("viewer", "runs/search", {"experiment_ids": [experiment_id]}) == 200
    assert status("viewer", "runs/create", {"experiment_id": experiment_id}) == 403
    assert status("teammate", "runs/create", {"experiment_id": experiment_id}) == 200
