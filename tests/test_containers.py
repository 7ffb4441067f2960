"""Stages in real containers: the stage image built on a local base, run by the docker launcher."""

import time

import pytest
from mlflow.tracking import MlflowClient

from pipelines.launchers import DockerLauncher, ResourcesConfig, StageFailed, StageRefused
from pipelines.semi_supervised import semi_supervised_pipeline
from stages.lib import catalog
from stages.lib.artifacts import read_manifest, sha256_file, verify
from stages.lib.stage import STAGE_NAMES

pytestmark = pytest.mark.containers
STAGE_LABEL = "ssl-pipeline.stage"


def stage_containers(client):
    return client.containers.list(all=True, filters={"label": STAGE_LABEL})


def test_stage_image_lists_stages_and_runs_as_non_root(docker_client, stage_image):
    usage = docker_client.containers.run(stage_image, ["--help"], remove=True).decode()
    assert f"stages: {' '.join(STAGE_NAMES)}" in usage
    uid = docker_client.containers.run(stage_image, ["-u"], entrypoint=["id"], remove=True).decode()
    assert uid.strip() == "1000"


@pytest.fixture(scope="module")
def docker_run(prefect, archive, smoke, stage_image, fresh_home):
    """The smoke flow with every stage in a container, in a fresh store (no cache hit)."""
    result = semi_supervised_pipeline(config=smoke, launcher="docker", data=str(archive), supervised_only=True)
    runs = MlflowClient().search_runs(
        [MlflowClient().get_run(result["mlflow_run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'",
    )
    return result, {run.data.tags["ssl.stage"]: run for run in runs}


def test_stages_in_containers_match_in_process(docker_run, split_artifact, docker_client):
    result, _ = docker_run
    split = result["artifacts"]["split"]
    for name in catalog.TABLES:  # the container wrote byte-identical tables
        assert sha256_file(catalog.table_path(split, name)) == sha256_file(catalog.table_path(split_artifact, name))
    for artifact in result["artifacts"].values():
        verify(artifact)
    assert read_manifest(result["artifacts"]["supervised_model"])["backend"] == "tensorflow"
    assert 0 <= result["supervised_test_accuracy"] <= 1
    assert stage_containers(docker_client) == []  # every stopped container removed


def test_container_stages_are_tracked(docker_run):
    result, runs = docker_run
    assert set(runs) == {"split", "baseline", "evaluate"}
    assert all(run.data.tags["ssl.cached"] == "false" for run in runs.values())
    assert runs["evaluate"].data.metrics["test_accuracy"] == result["supervised_test_accuracy"]


def test_container_log_reaches_the_prefect_flow_log(docker_run):
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.utilities.asyncutils import run_coro_as_sync

    result, _ = docker_run
    flow_run_id = UUID(MlflowClient().get_run(result["mlflow_run_id"]).data.tags["prefect.flow_run_id"])

    async def read_logs():
        async with get_client() as client:
            return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))

    deadline = time.monotonic() + 20  # logs reach the API in batches, the last ones after the flow
    while True:
        messages = [entry.message for entry in run_coro_as_sync(read_logs())]
        if sum("overhead" in message for message in messages) == 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert any(message.startswith("[baseline] ") and "epoch" in message for message in messages)
    assert sum("overhead" in message for message in messages) == 3  # one per stage container


def test_a_refusing_stage_fails_with_its_message(tmp_path, smoke, stage_image, docker_client):
    corrupt = tmp_path / "cifar-100-python.tar.gz"
    corrupt.write_bytes(b"not an archive")
    with pytest.raises(StageRefused, match=r"^stage split: CIFAR-100 archive .* has SHA-256"):
        DockerLauncher().launch("split", smoke.split, {"data": corrupt}, tmp_path / "out", smoke.resources)
    assert not (tmp_path / "out").exists()
    assert stage_containers(docker_client) == []


def test_missing_input_is_named_before_any_container(tmp_path, smoke, stage_image):
    with pytest.raises(StageFailed, match="input data = .*missing.tar.gz does not exist"):
        DockerLauncher().launch("split", smoke.split, {"data": tmp_path / "missing.tar.gz"}, tmp_path / "out",
                                smoke.resources)
    assert not (tmp_path / "missing.tar.gz").exists()  # not created as a folder by the engine


def test_gpu_request_without_gpu_runtime_is_a_clear_error(tmp_path, archive, smoke, stage_image, docker_client,
                                                           monkeypatch):
    monkeypatch.setenv("SSL_PIPELINE_GPU_STAGE_IMAGE", stage_image)  # no GPU image is built here
    with pytest.raises(StageFailed, match=r"asks for 1 GPU\(s\) \(resources.gpus\).*resources.gpus=0"):
        DockerLauncher().launch("split", smoke.split, {"data": archive}, tmp_path / "out", ResourcesConfig(gpus=1))
    assert stage_containers(docker_client) == []
