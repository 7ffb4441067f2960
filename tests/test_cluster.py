"""Studies spread over a real Dask scheduler and two worker processes, against one artifact store:
a directory, or a bucket on a local S3 server (moto's). Each worker has a home of its own, as on a
host of its own, so with the bucket every artifact a worker uses travels through S3.

The smoke study of two seeds (a baseline and a self-training configuration each: four
configuration runs) runs once on the cluster, its store in S3, and once with the default runner,
one stage at a time, in a directory; both must give the same table. A worker killed in the middle
of a training stage leaves the stage to the other worker, which resumes from the last epoch
checkpoint in the store.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
from distributed import Client, get_task_stream
from mlflow.tracking import MlflowClient
from prefect_dask import DaskTaskRunner

from pipelines import tracking
from pipelines.study import study_pipeline
from stages.lib.artifacts import read_manifest

spec = importlib.util.spec_from_file_location("cluster_bench", Path(__file__).parents[1] / "bench" / "cluster.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

SEEDS, EXPERIMENTS = [0, 1], ["baseline", "self_training"]


@pytest.fixture(scope="module")
def cluster(fresh_home, s3, tmp_path_factory):
    """``dask scheduler`` and two ``dask worker --nthreads 1`` processes."""
    with bench.dask_cluster(2, dict(os.environ), tmp_path_factory.mktemp("cluster-logs")) as address:
        yield address


@pytest.fixture(params=["directory", "s3"])
def store(request, s3, tmp_path) -> str:
    """A new store: a directory, or a prefix of the bucket."""
    return str(tmp_path / "store") if request.param == "directory" else f"{s3}/{tmp_path.name}"


def manifests(store: str, stage: str = "*") -> list[dict]:
    filesystem, root = fsspec.core.url_to_fs(store)
    return [json.loads(filesystem.cat_file(path)) for path in filesystem.glob(f"{root}/{stage}/*/manifest.json")]


def leftovers(store: str) -> list[str]:
    """Leases and checkpoint folders left in the store."""
    filesystem, root = fsspec.core.url_to_fs(store)
    filesystem.invalidate_cache()
    return filesystem.glob(f"{root}/*/.*.lease") + filesystem.glob(f"{root}/*/.*.work")


def run_study(config, archive, seeds=SEEDS, **options):
    study = study_pipeline.with_options(**options)
    return study(config=config, seeds=seeds, experiments=EXPERIMENTS, unlabeled=["all"], data=str(archive))


@pytest.fixture(scope="module")
def on_cluster(prefect, fresh_home, archive, smoke, cluster, s3):
    """The study on the cluster, its store in S3, with the workers that ran each stage task."""
    with (pytest.MonkeyPatch.context() as patch, Client(cluster) as client, get_task_stream(client) as stream):
        patch.setenv("SSL_PIPELINE_STORE", f"{s3}/study")
        result = run_study(smoke, archive, task_runner=DaskTaskRunner(address=cluster))
    return result, {task["worker"] for task in stream.data if task["key"].startswith("run_stage")}


@pytest.fixture(scope="module")
def sequential(prefect, fresh_home, archive, smoke, tmp_path_factory, on_cluster):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_PIPELINE_STORE", str(tmp_path_factory.mktemp("sequential-store")))
        return run_study(smoke, archive)


def stage_runs(result: dict) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(result["mlflow_run_id"]).info.experiment_id
    return [run for run in client.search_runs([experiment_id], f"tags.`ssl.study` = '{result['study']}'")
            if tracking.TAG_STAGE in run.data.tags]


def test_stages_of_one_study_run_on_both_workers(on_cluster):
    _, workers = on_cluster
    assert len(workers) == 2


def test_every_artifact_is_made_once(on_cluster, s3):
    result, _ = on_cluster
    built = [run for run in stage_runs(result) if run.data.tags[tracking.TAG_CACHED] == "false"]
    digests = [run.data.tags[tracking.TAG_DIGEST] for run in built]
    assert len(digests) == len(set(digests))
    made = {manifest["digest"] for manifest in manifests(f"{s3}/study")}
    assert made == set(digests)
    # split, 2 baselines, 2 pseudo-label sets, 2 self-trained models, 4 evaluations
    assert len(made) == 11
    assert not leftovers(f"{s3}/study")


def test_each_worker_has_what_the_other_made_from_the_bucket(on_cluster, cluster, s3):
    """Each worker's mirror of the bucket holds the artifacts it made and those it fetched; between them
    they made each artifact once, and one used what the other made."""
    with Client(cluster) as client:
        homes = list(client.run(lambda: os.environ["SSL_PIPELINE_HOME"]).values())
    made, fetched = [], []
    for home in homes:
        artifacts = [path.parent for path in Path(home).glob("store-mirror/*/*/*/manifest.json")]
        was_fetched = {path: path.with_name(f".{path.name}.fetch.lock").exists() for path in artifacts}
        made.append({read_manifest(path)["digest"] for path in artifacts if not was_fetched[path]})
        fetched.append({read_manifest(path)["digest"] for path in artifacts if was_fetched[path]})
    assert made[0] | made[1] == {manifest["digest"] for manifest in manifests(f"{s3}/study")}
    assert not made[0] & made[1]
    assert fetched[0] & made[1] or fetched[1] & made[0]


def test_the_cluster_gives_the_sequential_table(on_cluster, sequential):
    result, _ = on_cluster

    def table(rows):
        return [{key: row[key] for key in ("experiment", "seed", "unlabeled", "val_accuracy", "test_accuracy")} for row in rows]

    assert table(result["table"]) == table(sequential["table"])
    assert len(result["table"]) == 4


def kill_the_trainer(client: Client, store: str, killed: list[int]) -> None:
    """Once the baseline has checkpointed an epoch into the store, SIGKILL the worker process running it."""
    filesystem, root = fsspec.core.url_to_fs(store)
    deadline = time.monotonic() + 300
    while not filesystem.glob(f"{root}/baseline/.*.work/spent.json"):
        assert time.monotonic() < deadline, "the baseline never checkpointed an epoch"
        time.sleep(0.2)
        filesystem.invalidate_cache()
    [address] = [address for address, keys in client.processing().items()
                 if any(str(key).startswith("run_stage") for key in keys)]
    killed.append(client.run(os.getpid, workers=[address])[address])
    os.kill(killed[0], signal.SIGKILL)


def test_a_worker_killed_in_training_leaves_the_stage_to_the_other(prefect, fresh_home, archive, smoke, store, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("SSL_PIPELINE_STORE", store)
    config = smoke.model_copy(update={"baseline": smoke.baseline.model_copy(update={"epochs": 50})})
    killed: list[int] = []
    with bench.dask_cluster(2, dict(os.environ), tmp_path) as address, Client(address) as client:
        killer = threading.Thread(target=kill_the_trainer, args=(client, store, killed))
        killer.start()
        result = run_study(config, archive, seeds=[0], task_runner=DaskTaskRunner(address=address))
        killer.join()
        assert len(client.scheduler_info()["workers"]) == 1  # the study finished on the worker left
    assert killed
    [baseline] = manifests(store, "baseline")
    assert baseline["seconds_before_resume"] > 0  # the second worker went on from the first one's checkpoint
    assert not leftovers(store)  # its checkpoints and lease went once the artifact was in place
    assert [row["experiment"] for row in result["table"]] == EXPERIMENTS


@pytest.mark.parametrize("store", ["s3"], indirect=True)  # the directory store: the kill test's
def test_the_command_line_spreads_a_sweep_over_local_workers(tmp_path, archive, store):
    env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(SSL_PIPELINE_HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"), SSL_PIPELINE_STORE=store)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "self-train", "--preset", "smoke", "--workers", "2",
                           "--iterations", "1", "2", "--data", str(archive)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "LocalCluster" in done.stderr and "best on validation" in done.stdout
    assert {manifest["stage"] for manifest in manifests(store)} == {"split", "baseline", "pseudo_label", "self_train",
                                                                    "evaluate"}


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_two_studies_on_one_cluster_store_and_tracking_server_lose_nothing(cluster, archive, store, tmp_path, start_mlflow):
    """Two users' studies at once, from two processes, sharing seed 1: its baseline is made once, every
    run both studies opened is FINISHED on the server, and every artifact is in the store."""
    server, _ = start_mlflow("server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--default-artifact-root", str(tmp_path / "server-artifacts"))
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(SSL_PIPELINE_HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"), MLFLOW_TRACKING_URI=server,
               SSL_PIPELINE_STORE=store)
    studies = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "study", "--preset", "smoke", "--seeds", *seeds,
                                 "--experiments", "baseline", "--unlabeled", "all", "--cluster", cluster, "--data", str(archive)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seeds in (["0", "1"], ["1", "2"])]
    outputs = [study.communicate(timeout=900) for study in studies]
    assert [study.returncode for study in studies] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]

    client = MlflowClient(server)
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    names = {re.search(r"^study (\S+) ", out, re.MULTILINE).group(1) for out, _ in outputs}
    assert {run.data.tags.get("ssl.study") for run in runs} == names and len(names) == 2
    assert runs and all(run.info.status == "FINISHED" for run in runs)
    baselines = {seed: {run.data.tags[tracking.TAG_DIGEST] for run in runs
                        if run.data.tags.get(tracking.TAG_STAGE) == "baseline" and run.data.tags.get("ssl.seed") == seed}
                 for seed in ("0", "1", "2")}
    assert all(len(digests) == 1 for digests in baselines.values())  # seed 1: both studies, one artifact
    made = {manifest["digest"] for manifest in manifests(store)}
    assert {run.data.tags[tracking.TAG_DIGEST] for run in runs if tracking.TAG_DIGEST in run.data.tags} == made
    assert len(made) == 7  # the split, and a baseline and its evaluation for each of the 3 seeds
    assert not leftovers(store)
