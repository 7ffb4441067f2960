"""Self-training against its baseline: a threshold sweep on one seed, the best threshold on the rest.

1. ``ssl-pipeline self-train`` over ``--thresholds`` x ``--iterations`` with the first seed: the
   sweep's comparison table (with the seed study's numbers beside it).
2. The configuration best on validation (never test) is rerun with every other seed.
3. Baseline and self-training test accuracy per seed, mean ± std, and the time of each command.

Each run is the README's command in a subprocess against one home; results are read back from that
home's MLflow store (parent run metrics and the logged comparison table). ``--baselines-home``
starts each seed from a finished baseline of that preset and seed found in another home (e.g. the
one ``bench/seeds.py`` filled) instead of training it again.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/self_training.py --home /tmp/st-bench --baselines-home /tmp/hq
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipelines import settings
from stages.config import load_pipeline_config
from stages.reports import markdown_table

RESULTS = Path(__file__).parent / "results"


def find_baseline(home: Path, preset: str, seed: int) -> Path:
    """A finished baseline artifact in ``home`` trained with exactly the preset's config at ``seed``."""
    wanted = load_pipeline_config(preset, [{"baseline": {"seed": seed}}]).baseline.model_dump(mode="json")
    for manifest in sorted((home / "artifacts" / "baseline").glob("*/manifest.json")):
        if json.loads(manifest.read_text())["config"] == wanted:
            return manifest.parent
    raise FileNotFoundError(f"no {preset} baseline with seed {seed} under {home}/artifacts/baseline")


def run_self_training(preset: str, seed: int, thresholds: list[float], iterations: list[int],
                      start_model: Path | None) -> float:
    env = {**os.environ, "PREFECT_HOME": str(settings.home() / "prefect")}
    command = [sys.executable, "-m", "pipelines.cli", "self-train", "--preset", preset, "--set", f"baseline.seed={seed}",
               "--thresholds", *map(str, thresholds), "--iterations", *map(str, iterations)]
    if start_model:
        command += ["--start-model", str(start_model)]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return round(time.perf_counter() - started, 1)


def latest_sweep(preset: str, seed: int, thresholds: list[float], iterations: list[int]) -> dict:
    """The newest finished sweep of this seed and grid: parent metrics and the comparison table."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_name())
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`ssl.preset` = '{preset}' and params.`baseline.seed` = '{seed}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    for run in runs:
        if "ssl.sweep" not in run.data.tags or "mlflow.parentRunId" in run.data.tags:  # sweep parents only
            continue
        table = pd.read_parquet(client.download_artifacts(run.info.run_id, "comparison/comparison.parquet"))
        grid = sorted(zip(table["threshold"], table["iterations"]))
        if grid == sorted((t, n) for t in thresholds for n in iterations):
            return {"seed": seed, "sweep": run.data.tags["ssl.sweep"], "mlflow_run_id": run.info.run_id,
                    "flow_seconds": round((run.info.end_time - run.info.start_time) / 1000, 1),
                    **run.data.metrics, "table": table}
    raise LookupError(f"no finished {preset} sweep of seed {seed} over {thresholds} x {iterations}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.85, 0.9])
    parser.add_argument("--iterations", type=int, nargs="+", default=[4])
    parser.add_argument("--home", type=Path, required=True, help="SSL_PIPELINE_HOME shared by the runs")
    parser.add_argument("--baselines-home", type=Path, help="start from the baselines finished in this home")
    parser.add_argument("--reuse", action="store_true", help="report runs already finished in --home")
    args = parser.parse_args()
    os.environ[settings.HOME_ENV] = str(args.home.resolve())
    first, others = args.seeds[0], args.seeds[1:]

    def start(seed: int) -> Path | None:
        return find_baseline(args.baselines_home, args.preset, seed) if args.baselines_home else None

    def sweep(seed: int, thresholds: list[float], iterations: list[int]) -> dict:
        if args.reuse:
            with contextlib.suppress(LookupError):
                return {**latest_sweep(args.preset, seed, thresholds, iterations), "command_seconds": None}
        seconds = run_self_training(args.preset, seed, thresholds, iterations, start(seed))
        return {**latest_sweep(args.preset, seed, thresholds, iterations), "command_seconds": seconds}

    grid = sweep(first, args.thresholds, args.iterations)
    chosen = grid["table"].loc[grid["table"]["val_accuracy"].idxmax()]  # on validation, never on test
    threshold, iterations = float(chosen["threshold"]), int(chosen["iterations"])
    rows = [grid] + [sweep(seed, [threshold], [iterations]) for seed in others]
    per_seed = []
    for row in rows:
        best = row["table"].query("threshold == @threshold and iterations == @iterations").iloc[0]
        per_seed.append({"seed": row["seed"], "baseline_test_accuracy": row["baseline_test_accuracy"],
                         "self_training_test_accuracy": float(best["test_accuracy"]),
                         "gain_pts": round(100 * (best["test_accuracy"] - row["baseline_test_accuracy"]), 2),
                         "val_accuracy": float(best["val_accuracy"]), "best_iteration": int(best["best_iteration"]),
                         "samples_used": int(best["samples_used"]), "train_seconds": float(best["train_seconds"]),
                         "flow_seconds": row["flow_seconds"], "command_seconds": row["command_seconds"],
                         "sweep": row["sweep"], "mlflow_run_id": row["mlflow_run_id"]})
    write_results(args, grid, threshold, iterations, per_seed)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(args, grid: dict, threshold: float, iterations: int, per_seed: list[dict]) -> None:
    baseline = mean_std([r["baseline_test_accuracy"] for r in per_seed])
    trained = mean_std([r["self_training_test_accuracy"] for r in per_seed])
    gain = mean_std([r["gain_pts"] for r in per_seed])
    summary = {
        "preset": args.preset,
        "command": "python bench/self_training.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "chosen_on_validation": {"threshold": threshold, "iterations": iterations},
        "baseline_test_accuracy": {"mean": baseline[0], "std": baseline[1]},
        "self_training_test_accuracy": {"mean": trained[0], "std": trained[1]},
        "gain_pts": {"mean": gain[0], "std": gain[1]},
        "per_seed": per_seed,
        "sweep_seed": grid["seed"],
        "sweep": grid["table"].to_dict("records"),
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"self-training-{args.preset}"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    lines = [
        f"# Self-training, `{args.preset}` preset ({summary['machine']['cpus']} CPUs)", "",
        f"Chosen on validation (seed {grid['seed']}'s sweep): threshold **{threshold}**, **{iterations}** iterations.", "",
        f"| | test top-1 (mean ± std over {len(per_seed)} seeds) |", "|---|---|",
        f"| baseline | {baseline[0]:.2%} ± {baseline[1]:.2%} |",
        f"| self-training | {trained[0]:.2%} ± {trained[1]:.2%} |",
        f"| gain | {gain[0]:+.2f} ± {gain[1]:.2f} pts |", "",
        "| seed | baseline test | self-training test | gain pts | val | kept iteration | samples used | "
        "self_train s | flow run s | command s |", "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['seed']} | {r['baseline_test_accuracy']:.2%} | {r['self_training_test_accuracy']:.2%} | "
          f"{r['gain_pts']:+.2f} | {r['val_accuracy']:.2%} | {r['best_iteration']} | {r['samples_used']:,} | "
          f"{r['train_seconds']:.0f} | {r['flow_seconds']:.0f} | {r['command_seconds'] or '—'} |" for r in per_seed),
        "", f"## The threshold sweep (seed {grid['seed']}), the seed study's numbers beside it", "",
        markdown_table(grid["table"]),
        "`seed_*` columns: the seed study at 4 iterations (its 0.9 row reports no numbers). `command s` is the whole "
        "`ssl-pipeline self-train` command; `—` marks a run reported from the store rather than started by this script.",
        "", f"Command: `{summary['command']}`", "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
