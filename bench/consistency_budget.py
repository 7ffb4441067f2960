"""FixMatch and FreeMatch against the seed study's methods on one wall-clock budget on a CPU.

Every arm starts from nothing but the split and spends about the same training time:

- ``fixmatch``, ``freematch``: the preset's baseline, then the consistency stage with that method
  continuing from it for ``--consistency-minutes`` (default: the preset's
  ``consistency.classifier.time_budget_minutes``; ``ssl-pipeline consistency --methods M --start-model``).
- ``baseline-long``: the seed's supervised baseline with ``--baseline-epochs`` epochs, sized to
  the same total (``ssl-pipeline run``).
- ``self-training``: the same baseline, then the seed's self-training (threshold 0.85,
  ``--iterations``, 4 as in the seed) with ``--fine-tune-epochs`` epochs per iteration (``ssl-pipeline self-train --start-model``).

Each arm is the README's command in a subprocess against one home; the numbers are read back from
the artifacts its MLflow stage runs point to. ``--trained NAME=DIR`` adds an arm already trained
from ``--start-model`` (a consistency or self_train artifact in the home, e.g. one a study made),
with the evaluation the home holds for it. Training minutes are the epochs' own time (the
histories', which keep the epochs a resumed stage ran before its interruption), not labeling
passes, imports or tracking. Writes ``bench/results/<--name>.{json,md,png}``
(``consistency-budget-<preset>`` by default).

    CIFAR100_ARCHIVE=... .venv/bin/python bench/consistency_budget.py --home HOME --start-model DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipelines import settings  # noqa: E402
from pipelines.config import load_pipeline_config, parse_assignment  # noqa: E402
from stages.lib.artifacts import read_manifest  # noqa: E402
from stages.lib.catalog import HISTORY_FILE  # noqa: E402
from stages.lib.config import flat_fields
from stages.lib.machine import describe  # noqa: E402
from stages.lib.training import training_seconds  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run_command(args: list[str]) -> float:
    """``ssl-pipeline ARGS`` in a subprocess against the bench's home; its seconds."""
    env = {**os.environ, "PREFECT_HOME": str(settings.home() / "prefect")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, check=True)
    return round(time.perf_counter() - started, 1)


def finished_flow_artifacts(config, stage: str) -> list[Path] | None:
    """The stage artifacts of the newest finished flow run in the store that ran ``stage`` with ``config``
    (``ran_with``), nested runs at any depth; None when there is none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.experiment_name())
    if experiment is None:
        return None
    for parent in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                                     order_by=["attributes.start_time DESC"], max_results=200):
        if "mlflow.parentRunId" in parent.data.tags or not ran_with(parent, config):
            continue
        flow_run = parent.data.tags["prefect.flow_run_id"]
        runs = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run}' and tags.`ssl.stage` != ''")
        artifacts = [Path(run.data.tags["ssl.artifact_path"]) for run in runs]
        if any(read_manifest(path)["stage"] == stage for path in artifacts):
            return artifacts
    return None


def ran_with(run, config) -> bool:
    """Whether every parameter of an MLflow run equals ``config``'s (fields added to the config since
    the run are ignored)."""
    wanted = {key: str(value) for key, value in flat_fields(config.model_dump(mode="json")).items()}
    return all(wanted.get(key) == value for key, value in run.data.params.items())


def made_by(stage: str, artifacts: list[Path]) -> Path:
    return next(path for path in artifacts if read_manifest(path)["stage"] == stage)


def evaluation_of(model: Path, artifacts: list[Path]) -> Path:
    evaluations = (path for path in artifacts if read_manifest(path)["stage"] == "evaluate"
                   and Path(read_manifest(path)["parents"]["model"]["path"]) == model)
    evaluation = next(evaluations, None)
    if evaluation is None:
        raise SystemExit(f"{model}: no evaluate artifact of this model in the home; run its flow to the end first")
    return evaluation


def run_arm(args, command: list[str], sets: list[str], stage: str) -> tuple[list[Path], float | None]:
    """The artifacts of the arm's flow run and its command's seconds: run now, or with ``--reuse`` the
    finished run of the same configuration in the store that ran ``stage`` (seconds then None)."""
    config = load_pipeline_config(args.preset, [parse_assignment(text) for text in sets])
    if args.reuse and (artifacts := finished_flow_artifacts(config, stage)):
        return artifacts, None
    seconds = run_command([*command, "--preset", args.preset, *(f"--set={text}" for text in sets)])
    return finished_flow_artifacts(config, stage), seconds


def stage_seconds(artifact: Path) -> float:
    """Seconds its manifest gives a stage (a resumed stage's manifest written before 107d2bc counts its last attempt only)."""
    return float(read_manifest(artifact)["seconds"])


def epoch_seconds(artifact: Path) -> float:
    """Seconds the epochs of a training artifact took, resumed epochs included."""
    return training_seconds(pd.read_parquet(artifact / HISTORY_FILE))


def metrics(artifact: Path) -> dict:
    return json.loads((artifact / "metrics.json").read_text())


def curve(artifact: Path, offset_seconds: float) -> pd.DataFrame:
    """(minutes since the arm began, val_accuracy) per epoch of a training artifact."""
    history = pd.read_parquet(artifact / HISTORY_FILE)
    minutes = (offset_seconds + history["epoch_seconds"].cumsum()) / 60
    return pd.DataFrame({"minutes": minutes, "val_accuracy": history["val_accuracy"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", type=Path, required=True, help="SSL_PIPELINE_HOME of every arm")
    parser.add_argument("--start-model", type=Path, help="the preset's finished baseline of this seed (else trained here)")
    parser.add_argument("--baseline-epochs", type=int, default=120, help="baseline-long: epochs filling the budget")
    parser.add_argument("--fine-tune-epochs", type=int, default=10, help="self-training: epochs per iteration")
    parser.add_argument("--iterations", type=int, default=4, help="self-training: iterations")
    parser.add_argument("--consistency-minutes", type=float, help="fixmatch, freematch: training budget (default: the preset's)")
    parser.add_argument("--name", help="results file stem (default consistency-budget-<preset>)")
    parser.add_argument("--arms", nargs="*", default=["fixmatch", "baseline-long", "self-training"],
                        choices=["fixmatch", "freematch", "baseline-long", "self-training"])
    parser.add_argument("--variant", nargs="+", metavar="METHOD KEY=VALUE",
                        help="one more consistency arm: a method and its overrides, e.g. fixmatch consistency.fixmatch.threshold=0.7")
    parser.add_argument("--reuse", action="store_true", help="take arms already finished in --home from the store")
    parser.add_argument("--trained", nargs="+", default=[], metavar="NAME=DIR",
                        help="arms trained from --start-model already: a name and the artifact of its model")
    args = parser.parse_args()
    if args.trained and not args.start_model:
        parser.error("--trained arms continue a given baseline: name it with --start-model")
    os.environ[settings.HOME_ENV] = str(args.home.resolve())
    common = [f"baseline.seed={args.seed}"]
    if args.start_model:
        baseline = args.start_model.resolve()
    else:
        baseline = made_by("baseline", run_arm(args, ["run"], common, "baseline")[0])
    start = ["--start-model", str(baseline)]
    base_seconds = epoch_seconds(baseline)
    # arm -> (command, its --set overrides, the stage that trains its model)
    budget = [f"consistency.classifier.time_budget_minutes={args.consistency_minutes}"] if args.consistency_minutes else []
    plans = {
        **{method: (["consistency", "--methods", method, *start], [*common, *budget], "consistency")
           for method in ("fixmatch", "freematch")},
        "baseline-long": (["run"], [*common, f"baseline.epochs={args.baseline_epochs}"], "baseline"),
        "self-training": (["self-train", "--thresholds", "0.85", "--iterations", str(args.iterations), *start],
                          [*common, f"self_training.fine_tune.epochs={args.fine_tune_epochs}"], "self_train"),
    }
    if args.variant:
        method, *overrides = args.variant
        variant = f"{method} ({', '.join(overrides)})"
        plans[variant] = (["consistency", "--methods", method, *start], [*common, *budget, *overrides], "consistency")
        args.arms.append(variant)
    arms = {}
    for arm in args.arms:
        command, sets, stage = plans[arm]
        artifacts, seconds = run_arm(args, command, sets, stage)
        trained = made_by(stage, artifacts)
        offset = 0.0 if arm == "baseline-long" else base_seconds  # the continuations spent the baseline's time first
        arms[arm] = {"command_seconds": seconds, "trained": trained, "evaluate": evaluation_of(trained, artifacts),
                     "offset": offset}
    arms.update(trained_arms(args.trained, base_seconds))
    write_results(args, baseline, arms)


def trained_arms(named_artifacts: list[str], base_seconds: float) -> dict[str, dict]:
    """``NAME=DIR`` arms: models trained from the baseline already, each with its evaluation in the home."""
    evaluations = [path.parent for path in sorted((settings.artifact_root() / "evaluate").glob("*/manifest.json"))]
    arms = {}
    for name, directory in (text.split("=", 1) for text in named_artifacts):
        trained = Path(directory).resolve()
        arms[name] = {"command_seconds": None, "trained": trained, "evaluate": evaluation_of(trained, evaluations),
                      "offset": base_seconds}
    return arms


def write_results(args, baseline: Path, arms: dict[str, dict]) -> None:
    rows = [{"arm": "baseline (start of the continuations)", "train_minutes": round(epoch_seconds(baseline) / 60, 1),
             "val_accuracy": metrics(baseline)["best_val_accuracy"], "test_accuracy": None, "command_seconds": None}]
    rows += [{"arm": name, "train_minutes": round((arm["offset"] + epoch_seconds(arm["trained"])) / 60, 1),
              "val_accuracy": metrics(arm["trained"])["best_val_accuracy"],
              "test_accuracy": metrics(arm["evaluate"])["test_accuracy"], "command_seconds": arm["command_seconds"]}
             for name, arm in arms.items()]
    name = args.name or f"consistency-budget-{args.preset}"
    figure, axes = plt.subplots(figsize=(7, 4))
    base_curve = curve(baseline, 0.0)
    axes.plot(base_curve["minutes"], base_curve["val_accuracy"], color="grey", label="baseline")
    for arm_name, arm in arms.items():
        points = curve(arm["trained"], arm["offset"])
        axes.plot(points["minutes"], points["val_accuracy"], label=textwrap.fill(arm_name, 40))  # a variant's name lists its overrides
    axes.set(xlabel="training minutes (epochs' time, this machine)", ylabel="validation top-1", title=f"{args.preset} preset, seed {args.seed}")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(RESULTS / f"{name}.png", dpi=120)
    summary = {"preset": args.preset, "seed": args.seed, "command": "python bench/consistency_budget.py " + " ".join(sys.argv[1:]),
               "machine": describe(),
               "baseline_artifact": str(baseline), "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {' vs '.join(arms)} on one training budget, `{args.preset}` preset, seed {args.seed}", "",
             "| arm | training minutes | val top-1 (kept) | test top-1 | command s |", "|---|---|---|---|---|",
             *(f"| {r['arm']} | {r['train_minutes']} | {r['val_accuracy']:.2%} | "
               f"{'—' if r['test_accuracy'] is None else format(r['test_accuracy'], '.2%')} | {r['command_seconds'] or '—'} |"
               for r in rows),
             "", "Training minutes: the epochs' own time (the baseline's, then the arm's), resumed epochs included; "
             "labeling passes, imports and tracking are not in them.",
             "", f"![learning curves]({name}.png)", "", f"Command: `{summary['command']}`", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
