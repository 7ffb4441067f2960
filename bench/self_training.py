"""Self-training against its baseline over seeds, the configuration chosen on validation pooled over seeds.

1. ``ssl-pipeline self-train`` over ``--thresholds`` x ``--iterations`` with every seed: one sweep per
   seed, for the configurations that seed has not run yet.
2. The configuration with the best validation accuracy averaged over the seeds (never test) is the
   one reported: one seed's 1,000 validation images cannot tell 0.3 points apart, three can do better.
3. Baseline and self-training test accuracy per seed at that configuration, mean ± std, training time,
   and every configuration averaged over the seeds with the seed study's numbers beside it.
4. With ``--control-epochs N``, each seed's baseline trained for N epochs instead, as the control a
   gain must be read against: self-training spends more training time than the baseline it starts
   from, and some of its gain is what more epochs alone would give.

``--set KEY=VALUE`` overrides the preset for every self-training run (e.g. longer retraining:
``self_training.fine_tune.epochs=24``); ``--name`` keeps such a run's results beside the default's.

Each sweep is the README's command in a subprocess against one home; results are read back from that
home's MLflow store (each sweep's logged comparison table; the newest run of a configuration wins).
``--baselines-home`` starts each seed from a finished baseline of that preset and seed found in
another home (e.g. the one ``bench/seeds.py`` filled) instead of training it again. ``--prior FILE``
adds the runs an earlier results file of this script reports, for configurations the store lacks:
the machines these runs take hours on do not keep their stores, the committed results do.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/self_training.py --home HOME --baselines-home BASELINES_HOME
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import pandas as pd

# a sibling script: bench/ is on sys.path when this one runs
from consistency_budget import evaluation_of, made_by, metrics, ran_with, run_arm, run_command, stage_seconds

from pipelines import settings
from pipelines.config import load_pipeline_config, parse_assignment
from stages.lib.machine import describe
from stages.lib.reports import markdown_table
from stages.lib.seed_study import SEED_ITERATIONS, SEED_SELF_TRAINING

RESULTS = Path(__file__).parent / "results"
CONFIGURATION = ["threshold", "iterations"]
RUN_COLUMNS = ["seed", *CONFIGURATION, "val_accuracy", "test_accuracy", "baseline_test_accuracy", "gain_pts",
               "best_iteration", "samples_used", "pseudo_label_accuracy", "train_seconds", "baseline_train_seconds",
               "flow_seconds", "sweep", "mlflow_run_id", "source"]


def find_baseline(home: Path, preset: str, seed: int) -> Path:
    """A finished baseline artifact in ``home`` trained with exactly the preset's config at ``seed``."""
    wanted = load_pipeline_config(preset, [{"baseline": {"seed": seed}}]).baseline.model_dump(mode="json")
    for manifest in sorted((home / "artifacts" / "baseline").glob("*/manifest.json")):
        if json.loads(manifest.read_text())["config"] == wanted:
            return manifest.parent
    raise FileNotFoundError(f"no {preset} baseline with seed {seed} under {home}/artifacts/baseline")


def run_self_training(preset: str, seed: int, thresholds: list[float], iterations: list[int],
                      start_model: Path | None, sets: list[str]) -> None:
    command = ["self-train", "--preset", preset, f"--set=baseline.seed={seed}", *(f"--set={text}" for text in sets),
               "--thresholds", *map(str, thresholds), "--iterations", *map(str, iterations)]
    if start_model:
        command += ["--start-model", str(start_model)]
    run_command(command)


def store_runs(preset: str, seed: int, sets: list[str], baseline_train_seconds: float) -> pd.DataFrame:
    """Every configuration the finished sweeps of ``seed`` in the store ran, with the preset's config and
    the ``--set`` overrides (a sweep run with other overrides does not count), the newest run of each."""
    from mlflow.tracking import MlflowClient

    config = load_pipeline_config(preset, [parse_assignment(text) for text in [f"baseline.seed={seed}", *sets]])
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_name())
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    sweeps = client.search_runs(
        [experiment.experiment_id],
        f"tags.`ssl.preset` = '{preset}' and params.`baseline.seed` = '{seed}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    tables = []
    for run in sweeps:
        if "ssl.sweep" not in run.data.tags or "mlflow.parentRunId" in run.data.tags or not ran_with(run, config):
            continue  # sweep parents of this configuration only
        table = pd.read_parquet(client.download_artifacts(run.info.run_id, "comparison/comparison.parquet"))
        tables.append(table.assign(
            seed=seed, baseline_test_accuracy=run.data.metrics["baseline_test_accuracy"],
            gain_pts=table["vs_baseline_pts"], baseline_train_seconds=baseline_train_seconds,
            flow_seconds=round((run.info.end_time - run.info.start_time) / 1000, 1),
            sweep=run.data.tags["ssl.sweep"], mlflow_run_id=run.info.run_id, source=settings.tracking_uri()))
    runs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=RUN_COLUMNS)
    return runs[RUN_COLUMNS].drop_duplicates(["seed", *CONFIGURATION])  # newest first


def prior_runs(path: Path) -> pd.DataFrame:
    """The runs a results file of this script reports. Files written before it listed every run hold
    the first seed's sweep and each seed's run of the configuration chosen then."""
    results = json.loads(path.read_text())
    if "runs" in results:
        runs = pd.DataFrame(results["runs"])
    else:
        chosen = results["chosen_on_validation"]
        per_seed = pd.DataFrame(results["per_seed"]).rename(columns={"self_training_test_accuracy": "test_accuracy"})
        first = per_seed.iloc[0]  # the sweep's seed: its row came from the sweep
        sweep = pd.DataFrame(results["sweep"]).assign(
            seed=first["seed"], baseline_test_accuracy=first["baseline_test_accuracy"], gain_pts=lambda t: t["vs_baseline_pts"],
            **{key: first[key] for key in ("baseline_train_seconds", "flow_seconds", "sweep", "mlflow_run_id")})
        runs = pd.concat([sweep, per_seed.assign(**chosen, pseudo_label_accuracy=float("nan"))], ignore_index=True)
    return runs.assign(source=str(path))[RUN_COLUMNS].drop_duplicates(["seed", *CONFIGURATION], ignore_index=True)


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
    parser.add_argument("--reuse", action="store_true", help="for --control-epochs: report a control already finished in --home")
    parser.add_argument("--prior", type=Path, action="append", default=[], metavar="RESULTS_JSON",
                        help="runs an earlier results file reports count as run (repeatable; the store's win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset override for every self-training run (repeatable)")
    parser.add_argument("--control-epochs", type=int, help="also train each seed's baseline for this many epochs")
    parser.add_argument("--name", help="results file stem (default self-training-<preset>)")
    args = parser.parse_args()
    os.environ[settings.HOME_ENV] = str(args.home.resolve())
    grid = [(threshold, iterations) for threshold in args.thresholds for iterations in args.iterations]
    prior = pd.concat([prior_runs(path) for path in args.prior] or [pd.DataFrame(columns=RUN_COLUMNS)], ignore_index=True)
    runs = pd.concat([sweep_seed(args, seed, grid, prior[prior["seed"] == seed]) for seed in args.seeds], ignore_index=True)
    pooled = pool(runs, len(args.seeds))
    chosen = choose(pooled)
    at_chosen = runs[(runs["threshold"] == chosen["threshold"]) & (runs["iterations"] == chosen["iterations"])]
    per_seed = [{**row, **(control(args, row["seed"]) if args.control_epochs else {})}
                for row in at_chosen.sort_values("seed").to_dict("records")]
    write_results(args, runs, pooled, per_seed)


def sweep_seed(args, seed: int, grid: list[tuple[float, int]], prior: pd.DataFrame) -> pd.DataFrame:
    """The grid's runs of one seed: from the store and ``prior`` (this seed's runs of the ``--prior``
    files), and sweeps of what neither has."""
    baselines = args.baselines_home or args.home

    def known() -> pd.DataFrame:
        found = [store_runs(args.preset, seed, args.set, baseline_seconds()), prior]
        runs = pd.concat([table for table in found if len(table)] or found[:1], ignore_index=True)
        return runs.drop_duplicates(["seed", *CONFIGURATION])

    def baseline_seconds() -> float:
        try:
            return stage_seconds(find_baseline(baselines, args.preset, seed))
        except FileNotFoundError:  # no baseline trained yet: the store holds no run of this seed either
            return float("nan")

    have = set(map(tuple, known()[CONFIGURATION].itertuples(index=False)))
    missing = [point for point in grid if point not in have]
    start = find_baseline(args.baselines_home, args.preset, seed) if args.baselines_home and missing else None
    for threshold in dict.fromkeys(point[0] for point in missing):
        run_self_training(args.preset, seed, [threshold], [n for t, n in missing if t == threshold], start, args.set)
    runs = known()
    return runs[[point in grid for point in runs[CONFIGURATION].itertuples(index=False)]]


def pool(runs: pd.DataFrame, seeds: int) -> pd.DataFrame:
    """One row per configuration run by every seed: mean and std over seeds, the seed study beside it."""
    by_configuration = runs.groupby(CONFIGURATION)
    pooled = by_configuration.agg(
        seeds=("seed", "nunique"), samples_used=("samples_used", "mean"), train_minutes=("train_seconds", lambda s: s.mean() / 60),
        **{f"{column}_{stat}": (column, stat) for column in ("val_accuracy", "test_accuracy", "gain_pts")
           for stat in ("mean", "std")}).reset_index()
    pooled = pooled[pooled["seeds"] == seeds]
    if pooled.empty:
        raise LookupError(f"no configuration has a run of each of the {seeds} seeds")
    seed_study = [SEED_SELF_TRAINING.get(threshold, {}) if iterations == SEED_ITERATIONS else {}
                  for threshold, iterations in pooled[CONFIGURATION].itertuples(index=False)]
    return pd.concat([pooled.reset_index(drop=True), pd.DataFrame(seed_study)], axis=1)


def choose(pooled: pd.DataFrame) -> pd.Series:
    """The configuration with the best validation accuracy averaged over the seeds (never test)."""
    return pooled.loc[pooled["val_accuracy_mean"].idxmax()]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_results(args, runs: pd.DataFrame, pooled: pd.DataFrame, per_seed: list[dict]) -> None:
    chosen = per_seed[0]
    threshold, iterations = float(chosen["threshold"]), int(chosen["iterations"])
    accuracy = {arm: mean_std([r[column] for r in per_seed]) for arm, column in
                (("baseline", "baseline_test_accuracy"), ("self_training", "test_accuracy"), ("control", "control_test_accuracy"))
                if column in chosen}
    gain = mean_std([r["gain_pts"] for r in per_seed])
    summary = {
        "preset": args.preset,
        "command": "python bench/self_training.py " + " ".join(sys.argv[1:]),
        "machine": describe(),
        "overrides": args.set,
        "chosen_on_validation": {"threshold": threshold, "iterations": iterations, "rule": "best mean val over seeds"},
        **{f"{arm}_test_accuracy": {"mean": mean, "std": std} for arm, (mean, std) in accuracy.items()},
        "gain_pts": {"mean": gain[0], "std": gain[1]},
        "per_seed": per_seed,
        "configurations": pooled.to_dict("records"),
        "runs": runs.to_dict("records"),
    }
    RESULTS.mkdir(exist_ok=True)
    name = args.name or f"self-training-{args.preset}"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(args, summary, pooled, runs))
    print((RESULTS / f"{name}.md").read_text())


def markdown(args, summary: dict, pooled: pd.DataFrame, runs: pd.DataFrame) -> str:
    per_seed, chosen = summary["per_seed"], summary["chosen_on_validation"]
    labels = {"baseline": "baseline", "self_training": "self-training",
              "control": f"control: the baseline for {args.control_epochs} epochs"}
    arms = [arm for arm in labels if f"{arm}_test_accuracy" in summary]
    spread = {column: (label, fmt) for column, label, fmt in (("val_accuracy", "val", ".2%"), ("test_accuracy", "test", ".2%"),
                                                              ("gain_pts", "gain pts", "+.2f"))}
    configurations = pooled.assign(**{
        label: [f"{mean:{fmt}} ± {std:{fmt.lstrip('+')}}" for mean, std in zip(pooled[f"{column}_mean"], pooled[f"{column}_std"])]
        for column, (label, fmt) in spread.items()}, samples_used=pooled["samples_used"].round().astype(int),
        train_minutes=pooled["train_minutes"].round(1))
    configurations = configurations[[*CONFIGURATION, "seeds", *(label for label, _ in spread.values()), "samples_used",
                                     "train_minutes", *(c for c in pooled.columns if c.startswith("seed_"))]]
    return "\n".join([
        f"# Self-training, `{args.preset}` preset ({summary['machine']['cpus']} CPUs)", "",
        f"Overrides: `{' '.join(args.set)}`." if args.set else "Preset as it stands.", "",
        f"Chosen on validation averaged over the {len(per_seed)} seeds: threshold **{chosen['threshold']}**, "
        f"**{chosen['iterations']}** iterations.", "",
        f"| | test top-1 (mean ± std over {len(per_seed)} seeds) | training minutes (mean) |", "|---|---|---|",
        *(f"| {labels[arm]} | {summary[f'{arm}_test_accuracy']['mean']:.2%} ± {summary[f'{arm}_test_accuracy']['std']:.2%} | "
          f"{statistics.mean(training_seconds(r, arm) for r in per_seed) / 60:.1f} |" for arm in arms),
        f"| gain of self-training | {summary['gain_pts']['mean']:+.2f} ± {summary['gain_pts']['std']:.2f} pts | |", "",
        "Training minutes are the stages' own: the baseline's, self-training's on top of the baseline it "
        "starts from (every iteration, pseudo-labelling left out), and the control's.", "",
        "| seed | baseline test | self-training test | gain pts | control test | val | kept iteration | samples used | "
        "baseline s | self_train s | control s | sweep |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['seed']} | {r['baseline_test_accuracy']:.2%} | {r['test_accuracy']:.2%} | {r['gain_pts']:+.2f} | "
          f"{format(r['control_test_accuracy'], '.2%') if 'control_test_accuracy' in r else '—'} | {r['val_accuracy']:.2%} | "
          f"{r['best_iteration']} | {r['samples_used']:,} | {r['baseline_train_seconds']:.0f} | {r['train_seconds']:.0f} | "
          f"{format(r['control_train_seconds'], '.0f') if 'control_train_seconds' in r else '—'} | {r['sweep']} |"
          for r in per_seed),
        "", f"## Every configuration over the {len(per_seed)} seeds, the seed study's numbers beside it", "",
        markdown_table(configurations),
        "Accuracies and gains: mean ± std over the seeds; `samples_used` (pseudo-labels in the last iteration) and "
        "`train_minutes` (self-training's, on top of the baseline): means. `seed_*` columns: the seed study at 4 "
        "iterations (its 0.9 row reports no numbers).", "",
        "## Every run", "", markdown_table(runs.drop(columns=["mlflow_run_id"])),
        "`source`: the MLflow store the run was read from, or the results file that reported it (`--prior`: a "
        "store that is gone); `flow_seconds`: the whole sweep the run was part of.", "",
        f"Command: `{summary['command']}`", "",
    ])


def training_seconds(row: dict, arm: str) -> float:
    """An arm's training seconds in one seed's row; self-training's include the baseline it starts from."""
    return {"baseline": row["baseline_train_seconds"], "control": row.get("control_train_seconds"),
            "self_training": row["baseline_train_seconds"] + row["train_seconds"]}[arm]


if __name__ == "__main__":
    main()
