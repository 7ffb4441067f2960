"""Self-training against its baseline: a threshold sweep on one seed, the best threshold on the rest.

1. ``ssl-pipeline self-train`` over ``--thresholds`` x ``--iterations`` with the first seed: the
   sweep's comparison table (with the seed study's numbers beside it).
2. The configuration best on validation (never test) is rerun with every other seed.
3. Baseline and self-training test accuracy per seed, mean ± std, and the time of each command.
4. With ``--control-epochs N``, the same seed's baseline trained for N epochs instead, as the
   control a gain must be read against: self-training spends more training time than the baseline
   it starts from, and some of its gain is what more epochs alone would give.

``--set KEY=VALUE`` overrides the preset for every self-training run (e.g. longer retraining:
``self_training.fine_tune.epochs=24``); ``--name`` keeps such a run's results beside the default's.

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
import sys
from pathlib import Path

import pandas as pd

# a sibling script: bench/ is on sys.path when this one runs
from consistency_budget import evaluation_of, made_by, metrics, ran_with, run_arm, run_command, stage_seconds

from pipelines import settings
from stages.config import load_pipeline_config, parse_assignment
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
                      start_model: Path | None, sets: list[str]) -> float:
    command = ["self-train", "--preset", preset, f"--set=baseline.seed={seed}", *(f"--set={text}" for text in sets),
               "--thresholds", *map(str, thresholds), "--iterations", *map(str, iterations)]
    if start_model:
        command += ["--start-model", str(start_model)]
    return run_command(command)


def latest_sweep(preset: str, seed: int, thresholds: list[float], iterations: list[int], sets: list[str]) -> dict:
    """The newest finished sweep of this grid whose config is the preset's with this seed and the
    ``--set`` overrides (a sweep run with other overrides is not it): parent metrics and the
    comparison table."""
    from mlflow.tracking import MlflowClient

    config = load_pipeline_config(preset, [parse_assignment(text) for text in [f"baseline.seed={seed}", *sets]])
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_name())
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`ssl.preset` = '{preset}' and params.`baseline.seed` = '{seed}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    for run in runs:
        if "ssl.sweep" not in run.data.tags or "mlflow.parentRunId" in run.data.tags:  # sweep parents only
            continue
        if not ran_with(run, config):
            continue
        table = pd.read_parquet(client.download_artifacts(run.info.run_id, "comparison/comparison.parquet"))
        grid = sorted(zip(table["threshold"], table["iterations"]))
        if grid == sorted((t, n) for t in thresholds for n in iterations):
            return {"seed": seed, "sweep": run.data.tags["ssl.sweep"], "mlflow_run_id": run.info.run_id,
                    "flow_seconds": round((run.info.end_time - run.info.start_time) / 1000, 1),
                    **run.data.metrics, "table": table}
    raise LookupError(f"no finished {preset} sweep of seed {seed} over {thresholds} x {iterations} with {sets}")


def control(args, seed: int) -> dict:
    """The seed's baseline trained for ``--control-epochs``: its test accuracy and training seconds."""
    sets = [f"baseline.seed={seed}", f"baseline.epochs={args.control_epochs}"]
    artifacts, seconds = run_arm(args, ["run"], sets, "baseline")
    trained = made_by("baseline", artifacts)
    return {"control_test_accuracy": metrics(evaluation_of(trained, artifacts))["test_accuracy"],
            "control_train_seconds": stage_seconds(trained), "control_command_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.85, 0.9])
    parser.add_argument("--iterations", type=int, nargs="+", default=[4])
    parser.add_argument("--home", type=Path, required=True, help="SSL_PIPELINE_HOME shared by the runs")
    parser.add_argument("--baselines-home", type=Path, help="start from the baselines finished in this home")
    parser.add_argument("--reuse", action="store_true", help="report runs already finished in --home")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset override for every self-training run (repeatable)")
    parser.add_argument("--control-epochs", type=int, help="also train each seed's baseline for this many epochs")
    parser.add_argument("--name", help="results file stem (default self-training-<preset>)")
    args = parser.parse_args()
    os.environ[settings.HOME_ENV] = str(args.home.resolve())
    first, others = args.seeds[0], args.seeds[1:]

    def start(seed: int) -> Path | None:
        return find_baseline(args.baselines_home, args.preset, seed) if args.baselines_home else None

    def baseline_of(seed: int) -> Path:  # the one its self-training started from
        return find_baseline(args.baselines_home or args.home, args.preset, seed)

    def sweep(seed: int, thresholds: list[float], iterations: list[int]) -> dict:
        if args.reuse:
            with contextlib.suppress(LookupError):
                return {**latest_sweep(args.preset, seed, thresholds, iterations, args.set), "command_seconds": None}
        seconds = run_self_training(args.preset, seed, thresholds, iterations, start(seed), args.set)
        return {**latest_sweep(args.preset, seed, thresholds, iterations, args.set), "command_seconds": seconds}

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
                         "sweep": row["sweep"], "mlflow_run_id": row["mlflow_run_id"],
                         "baseline_train_seconds": stage_seconds(baseline_of(row["seed"])),
                         **(control(args, row["seed"]) if args.control_epochs else {})})
    write_results(args, grid, threshold, iterations, per_seed)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(args, grid: dict, threshold: float, iterations: int, per_seed: list[dict]) -> None:
    accuracy = {arm: mean_std([r[f"{arm}_test_accuracy"] for r in per_seed])
                for arm in ("baseline", "self_training", "control") if f"{arm}_test_accuracy" in per_seed[0]}
    gain = mean_std([r["gain_pts"] for r in per_seed])
    summary = {
        "preset": args.preset,
        "command": "python bench/self_training.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "overrides": args.set,
        "chosen_on_validation": {"threshold": threshold, "iterations": iterations},
        **{f"{arm}_test_accuracy": {"mean": mean, "std": std} for arm, (mean, std) in accuracy.items()},
        "gain_pts": {"mean": gain[0], "std": gain[1]},
        "per_seed": per_seed,
        "sweep_seed": grid["seed"],
        "sweep": grid["table"].to_dict("records"),
    }
    RESULTS.mkdir(exist_ok=True)
    name = args.name or f"self-training-{args.preset}"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    labels = {"baseline": "baseline", "self_training": "self-training",
              "control": f"control: the baseline for {args.control_epochs} epochs"}
    lines = [
        f"# Self-training, `{args.preset}` preset ({summary['machine']['cpus']} CPUs)", "",
        f"Overrides: `{' '.join(args.set)}`." if args.set else "Preset as it stands.", "",
        f"Chosen on validation (seed {grid['seed']}'s sweep): threshold **{threshold}**, **{iterations}** iterations.", "",
        f"| | test top-1 (mean ± std over {len(per_seed)} seeds) | training minutes (mean) |", "|---|---|---|",
        *(f"| {labels[arm]} | {mean:.2%} ± {std:.2%} | {statistics.mean(training_seconds(r, arm) for r in per_seed) / 60:.1f} |"
          for arm, (mean, std) in accuracy.items()),
        f"| gain of self-training | {gain[0]:+.2f} ± {gain[1]:.2f} pts | |", "",
        "Training minutes are the stages' own: the baseline's, self-training's on top of the baseline it "
        "starts from (every iteration, pseudo-labelling left out), and the control's.", "",
        "| seed | baseline test | self-training test | gain pts | control test | val | kept iteration | samples used | "
        "baseline s | self_train s | control s | flow run s | command s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['seed']} | {r['baseline_test_accuracy']:.2%} | {r['self_training_test_accuracy']:.2%} | "
          f"{r['gain_pts']:+.2f} | {format(r['control_test_accuracy'], '.2%') if 'control_test_accuracy' in r else '—'} | "
          f"{r['val_accuracy']:.2%} | {r['best_iteration']} | {r['samples_used']:,} | {r['baseline_train_seconds']:.0f} | "
          f"{r['train_seconds']:.0f} | {format(r['control_train_seconds'], '.0f') if 'control_train_seconds' in r else '—'} | "
          f"{r['flow_seconds']:.0f} | {r['command_seconds'] or '—'} |" for r in per_seed),
        "", f"## The threshold sweep (seed {grid['seed']}), the seed study's numbers beside it", "",
        markdown_table(grid["table"]),
        "`seed_*` columns: the seed study at 4 iterations (its 0.9 row reports no numbers). `command s` is the whole "
        "`ssl-pipeline self-train` command; `—` marks a run reported from the store rather than started by this script.",
        "", f"Command: `{summary['command']}`", "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def training_seconds(row: dict, arm: str) -> float:
    """An arm's training seconds in one seed's row; self-training's include the baseline it starts from."""
    return {"baseline": row["baseline_train_seconds"], "control": row.get("control_train_seconds"),
            "self_training": row["baseline_train_seconds"] + row["train_seconds"]}[arm]


if __name__ == "__main__":
    main()
