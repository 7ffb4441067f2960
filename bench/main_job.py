"""The main job as a new user runs it: `ssl-pipeline run` from an empty home, one run per training seed.

Each run gets a fresh ``SSL_PIPELINE_HOME`` (artifacts, MLflow store, Prefect home) and is timed
from the command's start to its exit; the install and the archive's download are outside it (the
archive comes from ``CIFAR100_ARCHIVE``). Test and validation top-1 of the supervised baseline and
of the SSL method are read back from the run's MLflow parent run, with its plan. Writes
bench/results/<--name>.{json,md}.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/main_job.py --seeds 0 1 2 [--minutes 30] [--name main-job-quick]
    ... bench/main_job.py --seeds 0 1 2 --name control -- --supervised-only   # the same budget, supervised alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("supervised_test_accuracy", "supervised_val_accuracy", "ssl_test_accuracy", "ssl_val_accuracy",
           "supervised_minutes", "ssl_minutes", "total_minutes")


def run_once(seed: int, args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix="ssl-home-"))
    command = [str(ROOT / ".venv/bin/ssl-pipeline"), "run", "--preset", args.preset, "--set", f"baseline.seed={seed}",
               *(["--minutes", str(args.minutes)] if args.minutes else []), *args.extra]
    env = {**os.environ, "SSL_PIPELINE_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}
    log = home / "run.log"
    started = time.perf_counter()
    with log.open("w") as output:
        subprocess.run(command, env=env, stdout=output, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    wall = (time.perf_counter() - started) / 60
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    parent = next(run for run in client.search_runs(experiments) if "mlflow.parentRunId" not in run.data.tags)
    return {"seed": seed, "wall_minutes": round(wall, 2), **{key: parent.data.metrics.get(key) for key in FIGURES},
            "plan": {key: value for key, value in parent.data.params.items() if key.startswith("plan.")},
            "command": " ".join(command[1:])}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"  # no SSL part in a --supervised-only run


def summary(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs if run[key] is not None]
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values):.2%}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2%}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--minutes", type=float, help="the run's budget (default: the preset's)")
    parser.add_argument("--name", default="main-job-quick")
    parser.add_argument("extra", nargs="*", help="more arguments of ssl-pipeline run, after --")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(run_once(seed, args))
        print(json.dumps(runs[-1]), flush=True)
    machine = describe()
    report = {"machine": machine, "preset": args.preset, "runs": runs,
              "command": "python bench/main_job.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [f"| {run['seed']} | {percent(run['supervised_test_accuracy'])} | {percent(run['supervised_val_accuracy'])} | "
            f"{percent(run['ssl_test_accuracy'])} | {percent(run['ssl_val_accuracy'])} | {run['supervised_minutes']:.1f} + "
            f"{run['ssl_minutes'] or 0:.1f} | {run['wall_minutes']:.1f} |" for run in runs]
    walls = [run["wall_minutes"] for run in runs]
    each_run = runs[0]["command"].replace(f"baseline.seed={runs[0]['seed']}", "baseline.seed=<seed>")
    (RESULTS / f"{args.name}.md").write_text("\n".join([
        f"# `ssl-pipeline run --preset {args.preset}` from an empty home ({machine['processor']}, {machine['cpus']} CPUs)", "",
        f"Vector extensions: {', '.join(machine['vector']) or 'none'}. Wall minutes from the command's start to its "
        "exit; the install and the archive's download are not in them. Test top-1 is flip-averaged.", "",
        "| training seed | supervised test | supervised val | SSL test | SSL val | minutes (baseline + SSL stage) | wall min |",
        "|---|---|---|---|---|---|---|", *rows,
        f"| **mean ± std** | {summary(runs, 'supervised_test_accuracy')} | {summary(runs, 'supervised_val_accuracy')} | "
        f"**{summary(runs, 'ssl_test_accuracy')}** | {summary(runs, 'ssl_val_accuracy')} | | "
        f"{statistics.mean(walls):.1f} (max {max(walls):.1f}) |", "",
        f"Plan of the first run: {json.dumps(runs[0]['plan'])}", "",
        f"Command: `{report['command']}`; each run: `ssl-pipeline {each_run}`", ""]))
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
