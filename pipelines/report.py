"""``ssl-pipeline report``: one page for a study, read back from its MLflow runs, beside the seed's numbers.

The table has one line per experiment (self-training: per confidence threshold) and unlabeled set:
test top-1 mean ± std over the study's training seeds, validation top-1, training minutes, and the
seed study's result for the same experiment; above it, the preset and what the study changed of it (``ssl.overrides``); below it, where
filtering helped or hurt, self-training per threshold (the seed's figure 5, drawn from the table) and
what the outlier filter kept beside the seed's nu and kept fraction. The other figures are the ones the
seed shows, downloaded from the stage runs that logged them. Written as
``report.md`` and ``report.html`` (with ``figures/``) and logged to the study's parent run under
``report/``, with ``runs.parquet``: one row per configuration run, preset and overrides included,
so rows of several studies can be put side by side.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import markdown
import pandas as pd
from mlflow.tracking import MlflowClient

from pipelines import settings, tracking
from stages.lib.errors import InvalidSetting
from stages.lib.machine import cpus, processor_name
from stages.lib.seed_study import EXPERIMENTS, SEED_FILTERED, SEED_ITERATIONS, SEED_OUTLIERS, SEED_RESULTS, SEED_SELF_TRAINING

NO_FILTERING_EFFECT = "- no experiment ran on both unlabeled sets with the same training seed"


def experiments_of(objective: str) -> tuple[str, ...]:
    """The study's experiments on one pretraining objective (``<objective>_<mode>``, as the study flow
    splits them): its modes share one pretrain stage, so its figures are in the runs of any of them."""
    return tuple(name for name in EXPERIMENTS if name.split("_", 1)[0] == objective)


# (stage, experiments whose runs may hold it or None for any, file under the stage run's figures/, caption),
# in the seed's order
FIGURES = (
    ("evaluate", ("baseline",), "network.png", "The baseline network (the seed's figure 1)"),
    ("evaluate", ("baseline",), "learning_curves.png", "Baseline learning curves (figure 2)"),
    ("evaluate", ("self_training",), "learning_curves.png", "Self-training learning curves across iterations (figures 3-4)"),
    ("self_train", ("self_training",), "iterations.png", "Self-training per iteration: validation, samples, pseudo-label accuracy"),
    ("pretrain", experiments_of("autoencoder"), "reconstructions.png", "Autoencoder reconstructions under the originals (figures 7-8)"),
    ("pretrain", experiments_of("autoencoder"), "pretraining_curves.png", "Autoencoder pretraining per epoch: loss, PSNR, k-NN probe"),
    ("outliers", None, "typical_and_atypical.png", "Most and least typical unlabeled images (figure 9)"),
    ("outliers", None, "score_histogram.png", "One-class scores and the cut"),
    ("outliers", None, "kept_per_class.png", "Kept fraction per true class"),
    ("pretrain", experiments_of("simclr"), "similarity_matrix.png", "SimCLR similarity matrix of a batch of view pairs (figure 10)"),
    ("pretrain", experiments_of("simclr"), "pretraining_curves.png",
     "SimCLR pretraining per epoch: contrastive loss, positive-pair accuracy, k-NN probe"),
)


def study_runs(client: MlflowClient, study: str) -> list:
    experiment = client.get_experiment_by_name(settings.experiment_name())
    if experiment is None:
        raise InvalidSetting(f"no MLflow experiment {settings.experiment_name()!r} at {settings.tracking_uri()}")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_STUDY}` = '{study}'", max_results=5000)
    if not runs:
        raise InvalidSetting(f"no runs tagged {tracking.TAG_STUDY} = {study!r} at {settings.tracking_uri()}: "
                         "give the study name that `ssl-pipeline study` printed")
    return runs


THRESHOLD_PARAM = "self_training.selection.threshold"  # a self-training configuration run's param


def threshold_of(run) -> float | None:
    """A self-training configuration run's confidence threshold; None for the other experiments' runs."""
    value = run.data.params.get(THRESHOLD_PARAM)
    return None if value is None else float(value)


def experiment_label(experiment: str, threshold: float) -> str:
    """The experiment as the report names it: self-training with its threshold (NaN: none recorded)."""
    return experiment if math.isnan(threshold) else f"{experiment}, threshold {threshold:g}"


def with_optional_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Tables of reports written before a column was recorded (``runs.parquet``) get it empty (NaN)."""
    return table.assign(**{column: math.nan for column in ("test_single_view", "threshold") if column not in table})


def is_configuration_run(run) -> bool:
    """A study's configuration run: it has an experiment but is neither a stage's run nor a
    self-training iteration's (those carry the experiment too)."""
    tags = run.data.tags
    return tracking.TAG_EXPERIMENT in tags and tracking.TAG_STAGE not in tags and tracking.TAG_ITERATION not in tags


def configuration_table(runs: list) -> pd.DataFrame:
    """One row per finished configuration run: experiment, threshold (self-training's), unlabeled set, seed
    and its metrics."""
    rows = [{"experiment": run.data.tags[tracking.TAG_EXPERIMENT], "threshold": threshold_of(run),
             "unlabeled": run.data.tags[tracking.TAG_UNLABELED], "seed": int(run.data.tags[tracking.TAG_SEED]),
             "val_accuracy": run.data.metrics.get("best_val_accuracy"), "test_accuracy": run.data.metrics.get("test_accuracy"),
             "test_single_view": run.data.metrics.get("test_accuracy_single_view", math.nan),
             "train_minutes": run.data.metrics.get("train_minutes"), "run_id": run.info.run_id}
            for run in runs if is_configuration_run(run) and run.info.status == "FINISHED"]
    if not rows:  # no column to convert: an empty table, which write_report turns into a clear error
        return pd.DataFrame()
    return pd.DataFrame(rows).astype({"threshold": float})  # None -> NaN


def seed_result(experiment: str, threshold: float, unlabeled: str) -> str:
    """The seed study's result for the same experiment: at the same threshold where it ran that one."""
    if unlabeled == "filtered":
        return SEED_FILTERED
    seed = SEED_SELF_TRAINING.get(threshold, {}) if experiment == "self_training" else {}
    if "seed_test_accuracy" in seed:
        return f"{seed['seed_test_accuracy']:.2%} (threshold {threshold:g}, {SEED_ITERATIONS} iterations)"
    return f"{seed['seed_note']} (threshold {threshold:g})" if "seed_note" in seed else SEED_RESULTS[experiment]


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (experiment, threshold, unlabeled set), in the seed's order, with its result beside."""
    order = {name: i for i, name in enumerate(SEED_RESULTS)}
    grouped = with_optional_columns(table).groupby(["experiment", "threshold", "unlabeled"], sort=False, dropna=False)
    summary = grouped.agg(seeds=("seed", "nunique"), test_mean=("test_accuracy", "mean"), test_std=("test_accuracy", "std"),
                          single_view_mean=("test_single_view", "mean"), val_mean=("val_accuracy", "mean"),
                          minutes=("train_minutes", "mean")).reset_index()
    summary["seed_study"] = [seed_result(*key) for key in zip(summary["experiment"], summary["threshold"], summary["unlabeled"])]
    return summary.sort_values(["experiment", "threshold", "unlabeled"], key=lambda column: column.map(order)
                               if column.name == "experiment" else column).reset_index(drop=True)


def mean_and_std(mean: float, std: float) -> str:
    """``mean ± std`` as percentages; one seed has no standard deviation (NaN), so none is shown."""
    return f"{mean:.2%} (one seed)" if math.isnan(std) else f"{mean:.2%} ± {std:.2%}"


def percent_or_dash(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2%}"


def filtering_effect(table: pd.DataFrame) -> list[str]:
    """Per experiment (and threshold) run on both sets, from its configuration runs (one row per
    experiment, threshold, unlabeled set, seed): filtered minus all in test points, on the training
    seeds both sets hold (a seed's baseline moves every experiment of that seed alike), judged by
    ``filtering_verdict``."""
    lines = []
    configurations = with_optional_columns(table).groupby(["experiment", "threshold"], dropna=False)
    for (experiment, threshold), runs in sorted(configurations, key=lambda group: (list(SEED_RESULTS).index(group[0][0]),
                                                                                   group[0][1])):
        by_set = runs.pivot_table(index="seed", columns="unlabeled", values="test_accuracy")
        if {"all", "filtered"} <= set(by_set.columns) and len(paired := (by_set["filtered"] - by_set["all"]).dropna()):
            lines.append(f"- {experiment_label(experiment, threshold)}: {filtering_verdict(100 * paired)}")
    return lines


def filtering_verdict(change: pd.Series) -> str:
    """Whether filtering helped or hurt, from the filtered-minus-all change in test points per training
    seed: only when a paired t-test over the seeds puts the mean change away from zero (p < 0.05);
    one seed cannot tell a change from the seed-to-seed spread, so it gets the number alone."""
    from scipy.stats import ttest_1samp

    change = change.round(4)  # float noise: equal changes must have no spread
    seeds = ", ".join(map(str, change.index))
    if len(change) == 1:
        return (f"filtered minus all {change.iloc[0]:+.2f} pts on test (training seed {seeds} alone: "
                "too few seeds to tell it from seed-to-seed noise)")
    if change.std() > 0:
        p_value = ttest_1samp(change, 0.0).pvalue
    else:  # every seed moved alike: no spread for the test to divide by
        p_value = 0.0 if change.mean() != 0 else 1.0
    if p_value >= 0.05:
        verdict = "no clear effect of filtering"
    else:
        verdict = "filtering helped" if change.mean() > 0 else "filtering hurt"
    return (f"{verdict} ({change.mean():+.2f} ± {change.std():.2f} pts on test, mean ± std over training seeds "
            f"{seeds}; paired t-test p = {p_value:.2f})")


def outlier_filter_lines(runs: list) -> list[str]:
    """One line per outlier-filter artifact the study used (by digest): scorer, nu, what it kept of the
    unlabeled images and what it left outside of the labeled ones it was fitted on."""
    by_digest = {run.data.tags[tracking.TAG_DIGEST]: run for run in runs
                 if run.data.tags.get(tracking.TAG_STAGE) == "outliers" and tracking.TAG_DIGEST in run.data.tags}
    lines = []
    for run in by_digest.values():
        metrics = run.data.metrics
        lines.append(f"- `{run.data.params.get('scorer', '?')}`, nu {metrics['nu']:.2f}: kept {metrics['kept']:,.0f} of "
                     f"{metrics['kept'] + metrics['dropped']:,.0f} unlabeled images ({metrics['kept_fraction']:.1%}); "
                     f"{metrics['train_outside_fraction']:.1%} of the labeled images fall outside its boundary")
    return lines


def collect_figures(client: MlflowClient, runs: list, directory: Path) -> list[tuple[str, str]]:
    """(file under ``directory``, caption) of each of ``FIGURES`` that a stage run of the study logged,
    or, for a stage the study took from the cache, the run that made its artifact; self-training's
    once per threshold (its configuration run's, the stage run's parent), lowest first."""
    thresholds = {run.info.run_id: threshold_of(run) for run in runs if is_configuration_run(run)}
    found = []
    directory.mkdir(parents=True, exist_ok=True)
    for stage, experiments, name, caption in FIGURES:
        shown: dict[float | None, tuple[str, str]] = {}  # by threshold, None: not self-training
        for run in runs:
            tags = run.data.tags
            if tags.get(tracking.TAG_STAGE) != stage or (experiments and tags.get(tracking.TAG_EXPERIMENT) not in experiments):
                continue
            if (threshold := thresholds.get(tags.get("mlflow.parentRunId"))) in shown:
                continue
            # a cached stage's light run holds no figures; the run it names does (none named: made elsewhere)
            source = tags.get(tracking.TAG_CACHED_FROM) if tags.get(tracking.TAG_CACHED) == "true" else run.info.run_id
            if source is None or name not in {Path(f.path).name for f in client.list_artifacts(source, "figures")}:
                continue
            at = "" if threshold is None else f"-t{threshold:g}"
            target = f"{stage}-{tags.get(tracking.TAG_EXPERIMENT) if experiments else 'any'}{at}-{name}"
            with tempfile.TemporaryDirectory() as download:
                shutil.copyfile(client.download_artifacts(source, f"figures/{name}", download), directory / target)
            shown[threshold] = (target, caption if threshold is None else f"{caption}, threshold {threshold:g}")
        found += [shown[key] for key in sorted(shown, key=lambda threshold: threshold or 0.0)]
    return found


def threshold_comparison(summary: pd.DataFrame, directory: Path) -> list[str]:
    """Markdown of self-training per threshold: where the study ran two or more, the seed's figure 5
    (test top-1 per threshold and unlabeled set against our baseline and the seed's results), drawn
    into ``directory``; else which one ran. Nothing when self-training did not run."""
    self_training = summary[(summary["experiment"] == "self_training") & summary["threshold"].notna()]
    thresholds = sorted(self_training["threshold"].unique())
    if len(thresholds) < 2:
        return [f"Self-training ran at one threshold ({thresholds[0]:g}); `ssl-pipeline study --thresholds 0.6 0.85 0.9` "
                "compares the seed's three.", ""] if thresholds else []
    from stages.lib import figures  # imports Keras: only for a study that has this figure

    baseline = summary.loc[summary["experiment"] == "baseline", "test_mean"].mean()
    seed = {threshold: row["seed_test_accuracy"] for threshold, row in SEED_SELF_TRAINING.items() if "seed_test_accuracy" in row}
    figures.thresholds_per_unlabeled_set(self_training, baseline, seed, directory / "self_training-thresholds.png")
    caption = "Self-training per threshold: test top-1 against our baseline and the seed's (figure 5)"
    return [f"![{caption}](figures/self_training-thresholds.png)", "", caption, ""]


def flow_duration(info, now_ms: float | None = None) -> str:
    """How long the study's parent run took, or has run so far when it has not ended (a report asked for mid-study)."""
    if info.end_time:
        return f"flow run {(info.end_time - info.start_time) / 60000:.1f} min"
    now_ms = time.time() * 1000 if now_ms is None else now_ms
    return f"flow run still running, {(now_ms - info.start_time) / 60000:.1f} min so far"


def stage_minutes(runs: list) -> float:
    """Minutes of stage work behind the study's results: each artifact it used counted once (by
    digest), cached ones included at what they took when made. A study finished over several
    invocations, each taking what the last one left from the cache, took this much, not its last flow run."""
    seconds = {run.data.tags[tracking.TAG_DIGEST]: run.data.metrics.get("stage_seconds", 0.0)
               for run in runs if tracking.TAG_DIGEST in run.data.tags}
    return sum(seconds.values()) / 60


def write_report(study: str, output: Path | None = None) -> Path:
    """The study's report in ``output`` (created; default ``<home>/reports/<study>``); also logged to its
    parent run. Returns report.md."""
    output = output or settings.home() / "reports" / study
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    runs = study_runs(client, study)
    table = configuration_table(runs)
    if table.empty:
        raise InvalidSetting(f"study {study!r} has no finished configuration run yet")
    summary = summary_table(table)
    parent = next(run for run in runs if "mlflow.parentRunId" not in run.data.tags)
    preset = parent.data.tags.get(tracking.TAG_PRESET, "?")
    overrides = parent.data.tags.get(tracking.TAG_OVERRIDES, "not recorded")  # studies before the tag existed
    output.mkdir(parents=True, exist_ok=True)
    figures = collect_figures(client, runs, output / "figures")
    lines = [
        f"# Study {study}: the seed's experiments, ours beside theirs", "",
        f"Preset `{preset}` (changed: `{overrides}`), training seeds "
        f"{', '.join(map(str, sorted(table['seed'].unique())))}; {flow_duration(parent.info)}, stages "
        f"{stage_minutes(runs):.1f} min (each artifact once, cached ones at what they took to make) on "
        f"{cpus()} CPUs ({processor_name()}); MLflow parent run "
        f"`{parent.info.run_id}`.", "",
        "| experiment | unlabeled | seeds | test top-1 (mean ± std) | single view | val top-1 | training min | seed study |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {experiment_label(r.experiment, r.threshold)} | {r.unlabeled} | {r.seeds} | {mean_and_std(r.test_mean, r.test_std)} | "
          f"{percent_or_dash(r.single_view_mean)} | {r.val_mean:.2%} | {r.minutes:.1f} | {r.seed_study} |"
          for r in summary.itertuples()),
        "", "`unlabeled`: `all` = every unlabeled image, `filtered` = those the outlier stage kept, `none` = the "
        "experiment uses none. Test top-1 is what the evaluate stage recorded: with `evaluate.flip_average` (the "
        "default) each test image's softmax averaged with its mirror image's; `single view`: the image alone, as the "
        "seed study and validation measure it (mean over seeds; — where the evaluation recorded only one view). "
        "Training minutes: the configuration's own stages (the shared split, baseline and outlier filter excluded).", "",
        "## Filtering", "", *(filtering_effect(table) or [NO_FILTERING_EFFECT]), "",
        *(["## Self-training thresholds", "", *thresholds] if (thresholds := threshold_comparison(summary, output / "figures"))
          else []),
        *(["## Outlier filter", "", *outliers, "", SEED_OUTLIERS, ""] if (outliers := outlier_filter_lines(runs)) else []),
        "## Figures", "", *(f"![{caption}](figures/{name})\n\n{caption}\n" for name, caption in figures),
    ]
    text = "\n".join(lines)
    (output / "report.md").write_text(text)
    (output / "report.html").write_text(f"<!doctype html><meta charset='utf-8'><title>Study {study}</title>\n"
                                        + markdown.markdown(text, extensions=["tables"]))
    table.assign(preset=preset, overrides=overrides).to_parquet(output / "runs.parquet", index=False)
    client.log_artifacts(parent.info.run_id, str(output), "report")
    return output / "report.md"
