"""When MLflow fails: an unreachable server stops a flow before any training, a server lost mid-flow
costs no trained artifact, and runs that killed flows left RUNNING are closed as FAILED, those of
this host at once, those of any host once their flow's heartbeat stops."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import requests
from conftest import stop_process_group
from mlflow.tracking import MlflowClient

from pipelines import launchers, settings, tracking
from pipelines.cli import main
from pipelines.flow import TrackingFailed
from pipelines.semi_supervised import semi_supervised_pipeline
from stages.lib.artifacts import verify


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_PIPELINE_HOME", str(tmp_path / "home"))
    # mlflow.set_tracking_uri exports this variable: set here, it is undone after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the test need not wait for MLflow's backoff
    return tmp_path / "home"


def test_an_unreachable_server_fails_the_flow_before_any_stage(prefect, archive, smoke, home, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match=f"server at {uri} .* does not answer.*Start it"):
        semi_supervised_pipeline(config=smoke, data=str(archive), supervised_only=True)
    assert time.monotonic() - started < 30
    assert not settings.artifact_root().exists()  # no stage started


@pytest.fixture
def mlflow_server(tmp_path, start_mlflow):
    return start_mlflow("server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                        "--default-artifact-root", str(tmp_path / "server-artifacts"))


def test_a_server_lost_mid_flow_keeps_the_trained_model_and_says_where(prefect, archive, smoke, home, mlflow_server,
                                                                       monkeypatch):
    uri, server = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    launch = launchers.InProcessLauncher.launch

    def server_dies_during_baseline(self, stage, *args):
        if stage == "baseline":
            stop_process_group(server)
        return launch(self, stage, *args)
    monkeypatch.setattr(launchers.InProcessLauncher, "launch", server_dies_during_baseline)

    with pytest.raises(TrackingFailed, match=r"stage baseline finished and its artifact is kept at (\S+), but logging it "
                                             r"to MLflow .* Rerun the same command") as failure:
        semi_supervised_pipeline(config=smoke, data=str(archive), supervised_only=True)
    kept = failure.value.args[0].split("kept at ")[1].split(",")[0]
    assert verify(kept)["stage"] == "baseline"
    assert not (settings.artifact_root() / "evaluate").exists()


def process_of_this_host(pid: int, start: str) -> str:
    return tracking.this_process().rsplit("/", 2)[0] + f"/{pid}/{start}"


def test_runs_left_running_by_ended_flows_are_failed_and_linked(home):
    experiment_id = tracking.configure()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ended = process_of_this_host(int(finished.stdout), "1")
    client = MlflowClient()

    def running(process: str, digest: str = "mine", parent: str | None = None) -> str:
        tags = {tracking.TAG_PROCESS: process, tracking.TAG_FLOW_DIGEST: digest, **({"mlflow.parentRunId": parent} if parent else {})}
        return client.create_run(experiment_id, tags=tags).info.run_id

    killed = running(ended)
    killed_stage = running(ended, parent=killed)
    killed_other_flow = running(ended, digest="other")
    alive = running(tracking.this_process())
    elsewhere = running("another-host/abc/1/1")

    assert tracking.fail_abandoned_runs(experiment_id, "mine") == [killed]
    status = {run_id: client.get_run(run_id).info.status for run_id in (killed, killed_stage, killed_other_flow, alive, elsewhere)}
    assert status == {killed: "FAILED", killed_stage: "FAILED", killed_other_flow: "FAILED",
                      alive: "RUNNING", elsewhere: "RUNNING"}
    assert "killed" in client.get_run(killed).data.tags["ssl.failure"]


def test_a_retried_parent_run_leaves_no_run_running(prefect, archive, smoke, home, monkeypatch):
    log_dict, calls = MlflowClient.log_dict, []

    def fails_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise requests.ConnectionError("the store went away for a moment")
        return log_dict(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_dict", fails_once)
    result = semi_supervised_pipeline(config=smoke, data=str(archive), supervised_only=True)
    client = MlflowClient()
    experiment_id = client.get_run(result["mlflow_run_id"]).info.experiment_id
    parents = {run.info.run_id: run.info.status for run in client.search_runs([experiment_id])
               if "mlflow.parentRunId" not in run.data.tags}
    assert len(parents) == 2 and parents.pop(result["mlflow_run_id"]) == "FINISHED"
    assert list(parents.values()) == ["FAILED"]  # the first attempt's run, closed when its logging failed


def test_runs_of_flows_whose_heartbeat_stopped_are_failed_by_the_sweep(home, monkeypatch, capsys):
    monkeypatch.setenv(settings.HEARTBEAT_TIMEOUT_ENV, "60")
    experiment_id = tracking.configure()
    client = MlflowClient()

    def running(process: str, heartbeat_age: float | None = None, parent: str | None = None) -> str:
        tags = {tracking.TAG_PROCESS: process, **({"mlflow.parentRunId": parent} if parent else {}),
                **({tracking.TAG_HEARTBEAT: f"{time.time() - heartbeat_age:.0f}"} if heartbeat_age is not None else {})}
        return client.create_run(experiment_id, tags=tags).info.run_id

    silent = running("another-host/abc/1/1", heartbeat_age=120)
    silent_stage = running("another-host/abc/1/1", parent=silent)
    beating = running("another-host/abc/2/1", heartbeat_age=5)
    beating_stage = running("another-host/abc/2/1", parent=beating)
    never_beat = running("another-host/abc/3/1")  # a flow of a version without heartbeats: nothing to judge by

    assert main(["sweep"]) == 0
    assert "2 run(s) of dead flows marked FAILED" in capsys.readouterr().out
    status = {run_id: client.get_run(run_id).info.status for run_id in (silent, silent_stage, beating, beating_stage,
                                                                        never_beat)}
    assert status == {silent: "FAILED", silent_stage: "FAILED", beating: "RUNNING", beating_stage: "RUNNING",
                      never_beat: "RUNNING"}
    assert "no heartbeat for 120 s" in client.get_run(silent_stage).data.tags[tracking.TAG_FAILURE]


def test_a_running_flow_stamps_its_heartbeat(home, monkeypatch):
    monkeypatch.setenv(settings.HEARTBEAT_ENV, "0.2")
    experiment_id = tracking.configure()
    run_id = MlflowClient().create_run(experiment_id).info.run_id
    with tracking.heartbeat(run_id):
        time.sleep(1.5)
    stamp = float(MlflowClient().get_run(run_id).data.tags[tracking.TAG_HEARTBEAT])
    assert time.time() - 2 < stamp <= time.time()
