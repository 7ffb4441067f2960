"""Fault injection on the real command: kill -9 flows at seeded random moments and rerun them;
run flows concurrently against one artifact store and one SQLite MLflow store.

Flows run as ``ssl-pipeline run`` processes, as a scheduler would start them. A kill takes the
process group (the flow and what it started), like ``docker kill`` or a batch scheduler would.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from stages.lib.artifacts import verify

KILL_POINTS = 5  # each costs a kill and a rerun: about 1.5 clean runs (20-50 s each, by machine)
# the supervised part of the main job; 4 epochs: kills also land between epochs
SMOKE = ["--preset", "smoke", "--supervised-only", "--set", "baseline.epochs=4"]
# what a resumed run must reproduce exactly (timings are left out: they differ by nature)
COMPARED = {"evaluate": ("test_accuracy", "test_top5_accuracy", "test_loss"),
            "baseline": ("best_epoch", "epochs_run", "best_val_accuracy", "best_val_loss", "best_train_loss")}


@pytest.fixture(scope="module")
def flow_env(prefect, archive):
    """Environment of the flow processes: this module's Prefect server, the real archive."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "CIFAR100_ARCHIVE": str(archive)}
    env.pop("MLFLOW_TRACKING_URI", None)  # each home's own SQLite store
    return env


def start_flow(home: Path, env: dict, *extra: str) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"{home.name}-{time.monotonic_ns()}.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", *SMOKE, *extra], stdout=output,
                                   stderr=subprocess.STDOUT, env={**env, "SSL_PIPELINE_HOME": str(home)}, start_new_session=True)
    process.log = log
    return process


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a flow process; its output, asserting it succeeded."""
    code = process.wait(timeout)
    output = process.log.read_text()
    assert code == 0, f"flow exited with {code}:\n{output[-3000:]}"
    return output


def parent_run_id(output: str) -> str:
    return re.search(r"MLflow run ([0-9a-f]{32})", output).group(1)


def final_metrics(home: Path) -> dict[str, float]:
    metrics = {}
    for stage, keys in COMPARED.items():
        (artifact,) = artifacts(home, stage)
        values = json.loads((artifact / "metrics.json").read_text())
        metrics.update({f"{stage}.{key}": values[key] for key in keys})
    return metrics


def artifacts(home: Path, stage: str = "*") -> list[Path]:
    return sorted((home / "artifacts").glob(f"{stage}/[!.]*"))  # not the hidden lock files


def check_store(home: Path) -> None:
    """Every artifact passes its manifest check; no temporary or work directory is left over."""
    for artifact in artifacts(home):
        verify(artifact)
    leftovers = [p.name for p in (home / "artifacts").glob("*/.*") if not p.name.endswith(".lock")]
    assert leftovers == []


def runs_of(home: Path) -> list:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return client.search_runs([experiment.experiment_id], max_results=1000)


def seed_split(source: Path, home: Path) -> None:
    """Give a store the split artifact made before: the trials spend their time on the later stages."""
    (split,) = artifacts(source, "split")
    shutil.copytree(split, home / "artifacts" / "split" / split.name)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, flow_env):
    """(store, seconds, final metrics) of an uninterrupted run on a store that holds the split."""
    first = tmp_path_factory.mktemp("first") / "home"
    finish(start_flow(first, flow_env))
    home = tmp_path_factory.mktemp("clean") / "home"
    seed_split(first, home)
    started = time.monotonic()
    finish(start_flow(home, flow_env))
    return home, time.monotonic() - started, final_metrics(home)


def test_killed_flows_resume_and_end_as_a_clean_run(clean_run, flow_env, tmp_path):
    clean_home, clean_seconds, clean_metrics = clean_run
    # tenths of a second, one at random in each of KILL_POINTS equal slices of the first 85% of the
    # clean run (so a trial that runs faster is still killed, and the kills spread over its phases)
    slice_length = clean_seconds * 10 * 0.85 / KILL_POINTS
    randomness = random.Random(9)
    moments = [int((number + randomness.random()) * slice_length) for number in range(KILL_POINTS)]
    survived = []
    for number, moment in enumerate(moments):
        home = tmp_path / f"trial-{number}" / "home"
        seed_split(clean_home, home)
        killed = start_flow(home, flow_env)
        time.sleep(moment / 10)
        assert killed.poll() is None, f"the flow ended before its kill at {moment / 10:.1f} s"
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        output = finish(start_flow(home, flow_env))
        rerun = parent_run_id(output)

        assert final_metrics(home) == clean_metrics, f"kill at {moment / 10:.1f} s"
        check_store(home)
        runs = runs_of(home)
        assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"]
        killed_runs = [run for run in flow_runs(runs) if run.info.run_id != rerun]
        assert len(killed_runs) <= 1, f"kill at {moment / 10:.1f} s"
        killed_phase = phase(killed.log.read_text())
        # a kill in the seconds a flow process takes to exit after closing its run leaves that run FINISHED
        abandoned = [run for run in killed_runs if run.info.status != "FINISHED"]
        if len(abandoned) < len(killed_runs):
            assert killed_phase == "evaluate built", f"kill at {moment / 10:.1f} s"
        assert all(run.info.status == "FAILED" and run.data.tags.get(tracking.TAG_RESUMED_BY) == rerun
                   for run in abandoned), f"kill at {moment / 10:.1f} s: {[run.info.status for run in abandoned]}"
        resumes = {run.info.run_id: run for run in runs}[rerun].data.tags.get(tracking.TAG_RESUMES, "")
        assert sorted(filter(None, resumes.split(","))) == sorted(run.info.run_id for run in abandoned)
        survived.append(f"{moment / 10:.1f} s: {killed_phase}, rerun {resumption(output)}")
    print(f"kill points survived: {len(survived)}/{KILL_POINTS} of a {clean_seconds:.1f} s run:", *survived, sep="\n  ")


def test_a_flow_killed_after_closing_its_run_stays_finished(clean_run, flow_env, tmp_path):
    """The kill lands while the process exits after its parent run closed: the rerun reuses every
    stage and claims to resume nothing."""
    clean_home, _, clean_metrics = clean_run
    home = tmp_path / "home"
    seed_split(clean_home, home)
    killed = start_flow(home, flow_env)
    while not (phase(killed.log.read_text()) == "evaluate built" and parent_closed(home)):
        assert killed.poll() is None, "the flow exited before the test saw its run close"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    output = finish(start_flow(home, flow_env))

    runs = {run.info.run_id: run for run in runs_of(home)}
    rerun = runs.pop(parent_run_id(output))
    (first,) = flow_runs(runs.values())
    assert first.info.status == "FINISHED" and tracking.TAG_RESUMED_BY not in first.data.tags
    assert tracking.TAG_RESUMES not in rerun.data.tags
    assert resumption(output) == "reused ['split', 'baseline', 'evaluate']"
    assert final_metrics(home) == clean_metrics


def flow_runs(runs) -> list:
    """The flows' parent runs among ``runs`` (not their stage runs)."""
    return [run for run in runs if tracking.TAG_FLOW_DIGEST in run.data.tags]


def parent_closed(home: Path) -> bool:
    return any(run.info.status == "FINISHED" for run in flow_runs(runs_of(home)))


def phase(output: str) -> str:
    """Where a killed flow was: the last stage it started or built, else before the first stage."""
    steps = re.findall(r"stage (\w+): (starting|built)", output)
    return " ".join(steps[-1]) if steps else "before any stage"


def resumption(output: str) -> str:
    resumed = re.search(r"resuming from the checkpoint of epoch (\d+)", output)
    reused = re.findall(r"stage (\w+): reused", output)
    return (f"resumed training after epoch {resumed.group(1)}; " if resumed else "") + f"reused {reused or 'nothing'}"


def test_concurrent_flows_lose_nothing(flow_env, tmp_path, clean_run):
    """Four flows at once on one store: two with the same configuration (they meet on the same
    outputs), two with other seeds."""
    home = tmp_path / "home"
    seeds = [0, 0, 1, 2]
    processes = [start_flow(home, flow_env, "--set", f"baseline.seed={seed}") for seed in seeds]
    outputs = [finish(process) for process in processes]
    parents = [parent_run_id(output) for output in outputs]

    runs = {run.info.run_id: run for run in runs_of(home)}
    assert all(runs[parent].info.status == "FINISHED" for parent in parents)
    for parent in parents:
        stages = {run.data.tags["ssl.stage"]: run for run in runs.values()
                  if run.data.tags.get("mlflow.parentRunId") == parent}
        assert set(stages) == {"split", "baseline", "evaluate"}
        assert all(run.info.status == "FINISHED" for run in stages.values())
        assert runs[parent].data.metrics["supervised_test_accuracy"] == stages["evaluate"].data.metrics["test_accuracy"]
        # a flow whose baseline started after its twin's was done reuses it: the twin's run has the epochs
        made_by = stages["baseline"].data.tags.get("ssl.cached_from_run", stages["baseline"].info.run_id)
        history = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_metric_history(made_by, "val_accuracy")
        assert sorted(metric.step for metric in history) == [1, 2, 3, 4]
    accuracy = [runs[parent].data.metrics["supervised_test_accuracy"] for parent in parents]
    assert accuracy[0] == accuracy[1] == clean_run[2]["evaluate.test_accuracy"]
    assert len(artifacts(home, "baseline")) == 3  # one per seed, none overwritten
    check_store(home)
