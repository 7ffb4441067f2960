"""Wall time of a smoke-sized study on a Dask cluster of 1 and of 2 workers, each limited to one core.

For each worker count: an empty home (artifact store, MLflow store, Prefect home), a `dask scheduler`
and N `dask worker --nthreads 1` processes, each pinned to a core of its own (taskset) with
TensorFlow's thread pools at one thread; then `ssl-pipeline study --cluster ADDRESS`, timed from its
start to its exit. From the store's manifests: each stage's own seconds, and how long it waited
between its last input's completion and its own start (for a free worker, and the task's launch).
Writes bench/results/<--name>.{json,md}.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/cluster.py --seeds 0 1 2 3 [--workers 1 2] [--name cluster-smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from stages.lib.artifacts import read_manifest
from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
ONE_CORE = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(workers: int, env: dict[str, str], logs: Path) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded worker processes (no nanny to restart one that dies), worker i
    pinned to core i with a home of its own as on a host of its own (``logs/worker-i``); yields the address."""
    address = f"tcp://127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                   address.rsplit(":", 1)[1], "--no-dashboard"], env=env,
                                  stdout=(logs / "scheduler.log").open("w"), stderr=subprocess.STDOUT)]
    processes += [subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "distributed.cli.dask_worker", address,
                                    "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"worker-{core}"],
                                   env={**env, **ONE_CORE, "SSL_PIPELINE_HOME": str(logs / f"worker-{core}")}, stdout=(logs / f"worker-{core}.log").open("w"),
                                   stderr=subprocess.STDOUT) for core in range(workers)]
    try:
        from distributed import Client

        with Client(address, timeout=120) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for process in reversed(processes):  # the workers first: one whose scheduler is gone waits for it
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


S3_BUCKET = "ssl-artifacts"


@contextlib.contextmanager
def s3_server(logs: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free port with the bucket ``S3_BUCKET``; yields the AWS variables that point
    clients (fsspec, boto3, MLflow) at it."""
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=(logs / "s3.log").open("w"),
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the S3 server did not start: see {logs / 's3.log'}")
            time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing").mkdir(S3_BUCKET)
        yield env
    finally:
        server.terminate()
        server.wait()


def stage_times(store: Path) -> list[dict]:
    """Per artifact in the store: its stage, its own seconds and its wait after its last input was made."""
    rows = []
    for manifest_file in sorted(store.glob("*/*/manifest.json")):
        manifest = read_manifest(manifest_file.parent)
        finished = [dt.datetime.fromisoformat(read_manifest(store / parent["stage"] / Path(parent["path"]).name)["finished_at"])
                    for parent in manifest["parents"].values() if parent["stage"] != "source"]
        started = dt.datetime.fromisoformat(manifest["started_at"])
        rows.append({"stage": manifest["stage"], "seconds": manifest["seconds"],
                     "wait_seconds": round((started - max(finished)).total_seconds(), 2) if finished else None})
    return rows


def run_study(workers: int, args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix="ssl-cluster-"))
    env = {**os.environ, "SSL_PIPELINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(ROOT / ".venv/bin/ssl-pipeline"), "study", "--preset", args.preset, "--seeds", *map(str, args.seeds),
               "--experiments", *args.experiments, "--unlabeled", "all", *args.extra]
    niced = ["nice", "-n", str(args.flow_nice)] if args.flow_nice else []
    with contextlib.ExitStack() as stack:
        if args.store == "s3":
            env.update(stack.enter_context(s3_server(home)), SSL_PIPELINE_STORE=f"s3://{S3_BUCKET}/study")
        address = stack.enter_context(dask_cluster(workers, env, home))
        started = time.perf_counter()
        with (home / "study.log").open("w") as log:
            subprocess.run([*niced, *command, "--cluster", address], env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                           cwd=ROOT)
        wall = time.perf_counter() - started
    # in S3, the flow's own mirror holds every artifact: it fetched each to track it
    stages = stage_times(home / "artifacts" if args.store == "directory" else next(home.glob("store-mirror/*")))
    waits = [row["wait_seconds"] for row in stages if row["wait_seconds"] is not None]
    return {"workers": workers, "store": args.store, "wall_seconds": round(wall, 1), "stage_seconds": round(sum(r["seconds"] for r in stages), 1),
            "stages": len(stages), "mean_wait_seconds": round(statistics.mean(waits), 2), "max_wait_seconds": max(waits),
            "per_stage": stages, "command": " ".join(command[1:]) + " --cluster ADDRESS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--experiments", nargs="+", default=["baseline", "self_training"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--name", default="cluster-smoke")
    parser.add_argument("--flow-nice", type=int, default=0,
                        help="niceness of the study's own process (and its Prefect server): on a machine whose every core "
                             "has a worker, what a flow process on a machine of its own would not take from them")
    parser.add_argument("--store", choices=["directory", "s3"], default="directory",
                        help="the artifact store: a directory in the home, or a bucket of a local S3 server (moto's)")
    parser.add_argument("extra", nargs="*", help="more arguments of ssl-pipeline study, after --")
    args = parser.parse_args()
    runs = []
    for workers in args.workers:
        runs.append(run_study(workers, args))
        print(json.dumps({key: value for key, value in runs[-1].items() if key != "per_stage"}), flush=True)
    machine = describe()
    report = {"machine": machine, "runs": runs, "command": "python bench/cluster.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    first = runs[0]["wall_seconds"]
    rows = [f"| {run['workers']} | {run['wall_seconds']:.1f} | {first / run['wall_seconds']:.2f}x | {run['stages']} | "
            f"{run['stage_seconds']:.1f} | {run['mean_wait_seconds']:.2f} | {run['max_wait_seconds']:.2f} |" for run in runs]
    configurations = len(args.seeds) * len(args.experiments)
    (RESULTS / f"{args.name}.md").write_text("\n".join([
        f"# A {args.preset} study of {configurations} configurations on 1 and 2 Dask workers, store: {args.store} "
        f"({machine['processor']}, {machine['cpus']} CPUs)", "",
        "Each worker is a `dask worker --nthreads 1` process pinned to one core, with TensorFlow's thread pools at one "
        f"thread{f'; the study process runs at nice {args.flow_nice}' if args.flow_nice else ''}. Wall seconds from `ssl-pipeline study --cluster` starting to its exit (the cluster already up). Stage "
        "seconds are the sum of every stage's own time; a stage's wait runs from its last input's completion to its "
        "own start.", "",
        "| workers | wall s | speed-up | stages | stage s (sum) | mean wait s | max wait s |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"Command: `{report['command']}`; the study: `ssl-pipeline {runs[0]['command']}`", ""]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
