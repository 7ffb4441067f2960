"""Shared fixtures: an isolated home for every store, the real CIFAR-100 archive, smoke artifacts."""

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before Prefect or MLflow is imported anywhere: nothing a test does may land in ~ or in a server.
_HOME = Path(tempfile.mkdtemp(prefix="ssl-pipeline-tests-"))
os.environ.update({
    "SSL_PIPELINE_HOME": str(_HOME / "home"),
    "PREFECT_HOME": str(_HOME / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "stages,pipelines",  # as the CLI sets it: stage logs in Prefect's
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # tests also call launchers outside any flow
    "MLFLOW_EXPERIMENT_NAME": "tests",
})
for variable in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
    os.environ.pop(variable, None)
(_HOME / "prefect").mkdir()

import pytest  # noqa: E402
import requests  # noqa: E402

from pipelines.config import load_pipeline_config  # noqa: E402
from stages.lib import cifar  # noqa: E402
from stages.lib.catalog import DatasetInfo  # noqa: E402


@pytest.fixture(scope="session")
def archive() -> Path:
    """The official archive: $CIFAR100_ARCHIVE or the download cache. Missing is a failure, not a skip."""
    path = os.environ.get(cifar.ARCHIVE_ENV) or cifar.default_cache_dir() / cifar.FILENAME
    if not Path(path).is_file():
        pytest.fail(f"the tests read the real CIFAR-100 archive: set {cifar.ARCHIVE_ENV} to cifar-100-python.tar.gz")
    return cifar.verify_archive(Path(path))


@pytest.fixture(scope="module")
def prefect():
    """A temporary Prefect server for the flows of one test module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory):
    """An artifact store and MLflow store of the module's own, so no other module's run is a cache hit."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("home")
        patch.setenv("SSL_PIPELINE_HOME", str(home))
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI too: set here, it is undone with the home
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        yield home


@pytest.fixture(scope="session")
def smoke():
    return load_pipeline_config("smoke")


@pytest.fixture(scope="session")
def split_artifact(tmp_path_factory, archive, smoke) -> Path:
    from stages import split

    output = tmp_path_factory.mktemp("split") / "artifact"
    split.STAGE.execute(smoke.split, {"data": archive}, output)
    return output


@pytest.fixture(scope="session")
def model_artifact(tmp_path_factory, split_artifact, smoke) -> Path:
    from stages import baseline

    output = tmp_path_factory.mktemp("baseline") / "artifact"
    baseline.STAGE.execute(smoke.baseline, {"split": split_artifact}, output)
    return output


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def docker_client():
    """The Docker engine; in CI its absence is a failure (.ci/run starts one), elsewhere a skip."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        message = f"no Docker engine ({error}): start one with docker/engine.sh start"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return client


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server (moto's, as ``bench/cluster.py`` starts it) with one bucket, whose URL it yields;
    the AWS variables that reach it are set for the module's processes."""
    spec = importlib.util.spec_from_file_location("cluster_bench", ROOT / "bench" / "cluster.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from s3fs import S3FileSystem

    with bench.s3_server(tmp_path_factory.mktemp("s3")) as env, pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        S3FileSystem.clear_instance_cache()  # fsspec keeps instances by their arguments: the last server's endpoint
        yield f"s3://{bench.S3_BUCKET}"


@pytest.fixture(scope="session")
def stage_image(docker_client) -> str:
    """The CPU stage image, built on a local Debian base from a wheelhouse (cached layers reused)."""
    subprocess.run([ROOT / "docker" / "build-local.sh", "stage"], check=True, cwd=ROOT)
    return "ssl-pipeline/stage:cpu"


def stop_process_group(process: subprocess.Popen) -> None:
    """Kill a server started in a session of its own, with its worker processes, which would go on answering."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def start_mlflow():
    """Starts ``python -m mlflow ARGUMENTS --host 127.0.0.1 --port <a free one>`` and waits until it
    answers: (its address, the process). What is still running is killed with the module."""
    started = []

    def start(*arguments: str) -> tuple[str, subprocess.Popen]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "mlflow", *arguments, "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(server)
        uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                requests.get(f"{uri}/health", timeout=2).raise_for_status()
                return uri, server
            except requests.RequestException:
                assert time.monotonic() < deadline and server.poll() is None, f"mlflow {arguments[0]} did not start"
                time.sleep(1)

    yield start
    for server in started:
        stop_process_group(server)


# data shaped like CIFAR-100's, for networks built without a split
CIFAR_SHAPED = DatasetInfo([f"class {i}" for i in range(100)], (32, 32, 3), "crop")
