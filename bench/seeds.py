"""Test accuracy of a preset over several training seeds: mean ± std, and the time each run took.

Each seed is one real `ssl-pipeline run` (the README's command) in a subprocess against one
home; results are read back from that home's MLflow store, so seeds already run there with
`--reuse` are reported, not retrained. Writes bench/results/<preset>-seeds.{json,md}.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/seeds.py --preset quick --seeds 0 1 2 --home HOME
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipelines import settings
from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"


def finished_runs(preset: str) -> dict[int, dict]:
    """Latest finished parent run per training seed, from the MLflow store the pipeline uses."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_name())
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], f"tags.`ssl.preset` = '{preset}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"])
    latest = {}
    for run in runs:
        seed = int(run.data.params["baseline.seed"])
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        stages = {child.data.tags["ssl.stage"]: child for child in children}
        baseline = stages["baseline"].data.metrics
        latest[seed] = {
            "seed": seed,
            "mlflow_run_id": run.info.run_id,
            "test_accuracy": run.data.metrics["test_accuracy"],
            "test_top5_accuracy": run.data.metrics["test_top5_accuracy"],
            "val_accuracy": _at_step(client, stages["baseline"].info.run_id, "val_accuracy", int(baseline["best_epoch"])),
            "best_epoch": int(baseline["best_epoch"]),
            "train_seconds": baseline["train_seconds"],
            "flow_seconds": round((run.info.end_time - run.info.start_time) / 1000, 1),
            "code_version": stages["baseline"].data.tags["ssl.code_version"],
        }
    return latest


def _at_step(client, run_id: str, metric: str, step: int) -> float:
    return next(m.value for m in client.get_metric_history(run_id, metric) if m.step == step)


def run_seed(preset: str, seed: int) -> float:
    env = {**os.environ, "PREFECT_HOME": str(settings.home() / "prefect")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--preset", preset, "--set", f"baseline.seed={seed}"],
                   env=env, check=True)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--home", type=Path, required=True, help="SSL_PIPELINE_HOME shared by the runs")
    parser.add_argument("--reuse", action="store_true", help="report seeds already finished in --home")
    args = parser.parse_args()
    os.environ[settings.HOME_ENV] = str(args.home.resolve())  # the runs and the read-back share it
    done = finished_runs(args.preset) if args.reuse else {}
    command_seconds = {seed: run_seed(args.preset, seed) for seed in args.seeds if seed not in done}
    runs = finished_runs(args.preset)
    rows = [{**runs[seed], "command_seconds": command_seconds.get(seed)} for seed in args.seeds]
    accuracies = [row["test_accuracy"] for row in rows]
    summary = {
        "preset": args.preset,
        "command": "python bench/seeds.py " + " ".join(sys.argv[1:]),
        "machine": describe(),
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "runs": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.preset}-seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# `{args.preset}` preset over {len(rows)} training seeds ({summary['machine']['cpus']} CPUs)", "",
        f"Test top-1: **{summary['test_accuracy_mean']:.2%} ± {summary['test_accuracy_std']:.2%}** (mean ± std).", "",
        "| seed | test top-1 | test top-5 | val top-1 | best epoch | training s | flow run s | command s |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['seed']} | {r['test_accuracy']:.2%} | {r['test_top5_accuracy']:.2%} | {r['val_accuracy']:.2%} | "
          f"{r['best_epoch']} | {r['train_seconds']:.0f} | {r['flow_seconds']:.0f} | {r['command_seconds'] or '—'} |" for r in rows),
        "", "`command s` is the whole `ssl-pipeline run` (imports, Prefect's temporary server, split, training, "
        "evaluation, MLflow logging); `—` marks a run reported from the store rather than started by this script.", "",
        f"Command: `{summary['command']}`", "",
    ]
    (RESULTS / f"{args.preset}-seeds.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
