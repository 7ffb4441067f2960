"""The seed study as one flow: every experiment of ``docs/seed-study.md``, on all and on filtered unlabeled data.

One split; per training seed a baseline (labeled data only, so both unlabeled sets share it) and,
when asked, the outlier stage's filtered split. Then per unlabeled set and experiment one MLflow
configuration run: self-training (pseudo_label -> self_train -> evaluate, one run per confidence
threshold, as the seed compared them) or an encoder objective fine-tuned one way
(pretrain -> fine_tune -> evaluate). Every stage is cached, so a rerun with one
more seed or experiment trains only that. Every run of one study carries ``ssl.study``;
configuration runs also carry ``ssl.experiment``, ``ssl.unlabeled`` and ``ssl.seed`` and the
metrics ``best_val_accuracy``, ``test_accuracy`` and ``train_minutes``: ``ssl-pipeline report``
reads them back.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from pipelines import tracking
from pipelines.config import PipelineConfig, load_pipeline_config, pretraining_grid, study_grid, sweep_grid, with_training_seed
from pipelines.engine import SEQUENTIAL
from pipelines.flow import (
    Configuration,
    StageRun,
    Steps,
    configuration_steps,
    finish_all,
    locate_data,
    log_comparison,
    pipeline_run,
)
from pipelines.pretraining import pretrain_configuration
from pipelines.self_training import self_train_configuration


def tagged(steps: Steps, seed: int, unlabeled: str, experiment: str) -> Steps:
    return replace(steps, tags={**steps.tags, tracking.TAG_SEED: str(seed), tracking.TAG_UNLABELED: unlabeled,
                                tracking.TAG_EXPERIMENT: experiment})


def run_experiment(steps: Steps, config: PipelineConfig, experiment: str, split: Path | StageRun, model: StageRun,
                   label: str, thresholds: list[float] | None) -> list[tuple[float | None, Configuration]]:
    """(confidence threshold, configuration) of each configuration of one experiment on one split, each
    submitted under its configuration run: self-training has one per threshold (none given: the
    config's); the other experiments have one, without a threshold."""
    if experiment == "self_training":
        return [(point.selection.threshold, self_train_configuration(steps, point, config, split, model, label))
                for point in sweep_grid(config.self_training, thresholds, None)]
    objective, mode = experiment.split("_", 1)
    [(pretrain, fine_tune)] = pretraining_grid(config, [objective], [mode])
    return [(None, pretrain_configuration(steps, pretrain, fine_tune, config, split, label)[0])]


def baseline_experiment(steps: Steps, config: PipelineConfig, split: Path) -> Configuration:
    """The supervised baseline and its evaluation under a configuration run of their own, submitted."""
    nested = configuration_steps(steps, f"baseline seed={config.baseline.seed}",
                                 {"preset": config.preset, "baseline": config.baseline.model_dump()})
    model = nested.submit("baseline", config.baseline, {"split": split})
    return Configuration(nested, model, nested.submit("evaluate", config.evaluate, {"split": split, "model": model}))


@flow(name="ssl-study", task_runner=SEQUENTIAL)
def study_pipeline(config: PipelineConfig = load_pipeline_config(), seeds: list[int] | None = None,
                   experiments: list[str] | None = None, unlabeled: list[str] | None = None,
                   thresholds: list[float] | None = None, launcher: str = "in-process",
                   data: str | None = None) -> dict[str, Any]:
    """The seed study's experiments x unlabeled sets (``all``, ``filtered``) x training seeds, self-training
    at each of ``thresholds``. The baseline runs for every seed whatever ``experiments`` holds:
    self-training starts from it."""
    seeds, experiments, unlabeled = study_grid(config, seeds, experiments, unlabeled)  # bad names fail before any work
    sweep_grid(config.self_training, thresholds, None)  # and bad thresholds
    study = f"{flow_run.name}-{str(flow_run.id)[:8]}"
    submitted = []  # (seed, unlabeled set, experiment, threshold, configuration), in the table's order
    with pipeline_run(config, launcher, {tracking.TAG_STUDY: study}) as (steps, metrics):
        split = steps.run("split", config.split, {"data": locate_data(config, data)})
        for seed in seeds:
            seeded = with_training_seed(config, seed)
            baseline = baseline_experiment(tagged(steps, seed, "none", "baseline"), seeded, split)
            submitted.append((seed, "none", "baseline", None, baseline))
            splits = {"all": split}
            if "filtered" in unlabeled:
                needs_model = seeded.outliers.scorer == "one_class_svm"
                splits["filtered"] = steps.submit("outliers", seeded.outliers,
                                                  {"split": split, **({"model": baseline.model} if needs_model else {})})
            for variant in unlabeled:
                for experiment in (e for e in experiments if e != "baseline"):
                    submitted += [(seed, variant, experiment, threshold, configuration) for threshold, configuration in
                                  run_experiment(tagged(steps, seed, variant, experiment), seeded, experiment,
                                                 splits[variant], baseline.model, f"{variant} seed={seed} ", thresholds)]
        done = finish_all([configuration for *_, configuration in submitted])
        rows = [study_row(seed, variant, experiment, run_metrics, threshold) for (seed, variant, experiment, threshold, _), (
            _, _, run_metrics) in zip(submitted, done, strict=True)]
        log_comparison(steps.parent_run_id, rows)
        metrics.update({f"{row['unlabeled']}_{row['experiment']}{threshold_suffix(row['threshold'])}_seed{row['seed']}"
                        "_test_accuracy": row["test_accuracy"] for row in rows})
    return {**metrics, "study": study, "mlflow_run_id": steps.parent_run_id, "table": rows}


def threshold_suffix(threshold: float | None) -> str:
    return "" if threshold is None else f"_t{threshold}"


def study_row(seed: int, unlabeled: str, experiment: str, run_metrics: dict[str, float],
              threshold: float | None = None) -> dict[str, Any]:
    """One row of the study's table, from the metrics its configuration run was closed with."""
    return {"experiment": experiment, "threshold": threshold, "unlabeled": unlabeled, "seed": seed,
            "val_accuracy": run_metrics["best_val_accuracy"], "test_accuracy": run_metrics["test_accuracy"],
            "train_minutes": run_metrics["train_minutes"]}
