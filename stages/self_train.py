"""Self-training stage: pseudo-label -> retrain on labeled + pseudo-labeled data -> validate, repeated.

As in the seed study (exercise 2): start from a trained model; labeled images weigh
``labeled_weight`` (2), pseudo-labeled ones their confidence; each iteration fine-tunes the
previous model with a lower learning rate and slightly more dropout and L2. Iteration 1 trains on
the pseudo_label stage's output (labels of the input model); later iterations label the unlabeled
set again with the current model. The kept model is the best iteration on validation, the input
model (iteration 0) included, so self-training can never make the kept model worse on validation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import pandas as pd
from pydantic import Field

from stages.lib import catalog, figures
from stages.lib.artifacts import ArtifactError, read_manifest
from stages.lib.catalog import ITERATIONS_FILE, DatasetInfo, ImageTable
from stages.lib.config import StrictModel
from stages.lib.pseudo_labels import PseudoLabelConfig, audit_accuracy, pseudo_label
from stages.lib.stage import Stage, main
from stages.lib.training import Schedule, TrainConfig, build_classifier, fit_classifier, validation_metrics

log = logging.getLogger(__name__)


class FineTuneConfig(Schedule):
    """How each self-training iteration retrains the previous model; everything not named here
    (architecture, augmentation, batch size, weight decay, precision, ...) is the input model's own."""

    epochs: int = Field(10, ge=1, description="epochs per iteration; the cosine decay spans them")
    learning_rate: float = Field(5e-4, gt=0, description="peak learning rate, below the baseline's")
    warmup_epochs: int = Field(0, ge=0)
    dropout_increase: float = Field(0.05, ge=0, lt=1, description="added to every dropout rate of the model")
    l2_increase: float = Field(0.001, ge=0, description="added to the L2 penalty of the model")
    early_stopping_patience: int | None = Field(
        4, ge=1, description="epochs without val improvement before the iteration stops; None = never"
    )


class SelfTrainConfig(StrictModel):
    """Self-training: pseudo-label -> retrain on labeled + selected -> validate, ``iterations`` times."""

    iterations: int = Field(4, ge=1, description="pseudo-label/retrain rounds")
    selection: PseudoLabelConfig = PseudoLabelConfig()
    labeled_weight: float = Field(2.0, gt=0, description="sample weight of every labeled image")
    pseudo_weight: Literal["confidence", "one"] = Field(
        "confidence", description="sample weight of a pseudo-labeled image: its confidence, or 1"
    )
    fine_tune: FineTuneConfig = FineTuneConfig()


def trained_with(model_artifact: Path) -> TrainConfig:
    """The TrainConfig a model artifact's model was built and trained with."""
    manifest = read_manifest(model_artifact)
    if manifest["stage"] == "baseline":
        return TrainConfig.model_validate(manifest["config"])
    if manifest["stage"] == "self_train":
        return TrainConfig.model_validate(manifest["train_config"])
    raise ArtifactError(f"{model_artifact} holds a {manifest['stage']} artifact; self-training starts from a "
                        "baseline or self_train model artifact")


def fine_tune_config(base: TrainConfig, tune: FineTuneConfig, iteration: int) -> TrainConfig:
    """The base model's config with the fine-tuning schedule and the extra regularisation."""
    arch = base.architecture
    return TrainConfig.model_validate({
        **base.model_dump(),
        "architecture": {
            **arch.model_dump(),
            "block_dropout": [rate + tune.dropout_increase for rate in arch.block_dropout],
            "head_dropout": arch.head_dropout + tune.dropout_increase,
            "l2": arch.l2 + tune.l2_increase,
        },
        "epochs": tune.epochs,
        "learning_rate": tune.learning_rate,
        "warmup_epochs": tune.warmup_epochs,
        "early_stopping_patience": tune.early_stopping_patience,
        "seed": base.seed + iteration,  # fresh shuffling and augmentation every iteration
    })


def training_set(labeled: ImageTable, unlabeled: ImageTable, pseudo_labels: pd.DataFrame,
                 config: SelfTrainConfig) -> tuple[ImageTable, np.ndarray]:
    """Labeled images then pseudo-labeled ones, with their sample weights (N,).

    Built from the pseudo-label table alone: the audit labels are not an argument.
    """
    rows = pd.Index(unlabeled.ids).get_indexer(pseudo_labels["id"])
    confidence = pseudo_labels["confidence"].to_numpy(np.float32)
    table = ImageTable(
        ids=np.concatenate([labeled.ids, unlabeled.ids[rows]]),
        images=np.concatenate([labeled.images, unlabeled.images[rows]]),
        labels=np.concatenate([labeled.labels, pseudo_labels["label"].to_numpy(np.int32)]),
    )
    pseudo_weight = confidence if config.pseudo_weight == "confidence" else np.ones_like(confidence)
    weights = np.concatenate([np.full(len(labeled), config.labeled_weight, np.float32), pseudo_weight])
    return table, weights


def retrain(previous: keras.Model, config: TrainConfig, data: DatasetInfo, train: ImageTable, validation: ImageTable,
            weights: np.ndarray):
    """A fresh network of ``config`` (its dropout and L2) holding ``previous``'s weights, fitted."""
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(config, data)
    model.set_weights(previous.get_weights())
    return fit_classifier(model, config, train, validation, weights)


@dataclass
class Iteration:
    number: int
    model: keras.Model
    row: dict[str, float]  # the iterations table's row
    history: pd.DataFrame | None = None  # per epoch; None for iteration 0
    labels: pd.DataFrame | None = None  # the pseudo-labels it trained on; None for iteration 0


def self_train(config: SelfTrainConfig, base: TrainConfig, data: DatasetInfo, start: keras.Model, first_labels: pd.DataFrame,
               tables: Mapping[str, ImageTable]) -> list[Iteration]:
    """Iteration 0 (the input model, validated) and ``config.iterations`` retraining rounds."""
    validation, unlabeled = tables["validation"], tables["unlabeled"]
    done = [Iteration(0, start, {"iteration": 0, "selected": 0, **validation_metrics(start, validation, config.selection.batch_size)})]
    for number in range(1, config.iterations + 1):
        model = done[-1].model
        labels = first_labels if number == 1 else pseudo_label(model, unlabeled, config.selection, number)
        train, weights = training_set(tables["labeled"], unlabeled, labels, config)
        log.info("iteration %d/%d: %d pseudo-labels + %d labeled images", number, config.iterations, len(labels),
                 len(tables["labeled"]))
        result = retrain(model, fine_tune_config(base, config.fine_tune, number), data, train, validation, weights)
        best = result.history.iloc[result.best_epoch - 1]
        row = {
            "iteration": number, "selected": len(labels),
            "pseudo_label_accuracy": audit_accuracy(labels, tables["unlabeled_audit"]),
            "mean_confidence": float(labels["confidence"].mean()),
            **validation_metrics(result.model, validation, config.selection.batch_size),
            # weighted, augmented, regularised: as Keras reports training
            "train_accuracy": float(best["accuracy"]), "train_loss": float(best["loss"]),
            "best_epoch": result.best_epoch, "epochs_run": len(result.history), "train_seconds": result.seconds,
        }
        log.info("iteration %d: val accuracy %.4f (pseudo-label accuracy %.3f)", number, row["val_accuracy"],
                 row["pseudo_label_accuracy"])
        done.append(Iteration(number, result.model, row, result.history.assign(iteration=number), labels))
    return done


def kept_iteration(iterations: list[Iteration], select_on: str) -> Iteration:
    """The best iteration on validation; ties go to the earlier one."""
    sign = -1 if select_on == "val_loss" else 1
    return max(iterations, key=lambda it: (sign * it.row[select_on], -it.number))


def joined_history(iterations: list[Iteration]) -> pd.DataFrame:
    """Every iteration's epochs in one table: ``epoch`` counts across iterations, ``iteration_epoch`` within."""
    history = pd.concat([it.history for it in iterations if it.history is not None], ignore_index=True)
    history = history.rename(columns={"epoch": "iteration_epoch"})
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return history


def run(config: SelfTrainConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    split, start, labels = inputs["split"], inputs["model"], inputs["pseudo_labels"]
    check_first_labels(labels, start, config)
    tables = {name: catalog.read_table(split, name)
              for name in ("labeled", "validation", "unlabeled", "unlabeled_audit")}
    base = trained_with(start)
    first_labels = catalog.read_pseudo_labels(labels, tables["unlabeled"])
    data = catalog.read_dataset_info(split)
    iterations = self_train(config, base, data, catalog.load_classifier(start, data), first_labels, tables)
    kept = kept_iteration(iterations, base.select_on)
    table = pd.DataFrame([it.row for it in iterations])
    history = joined_history(iterations)
    saved = catalog.save_classifier(output, kept.model, history, summary_metrics(table, history, kept), data)
    table.to_parquet(output / ITERATIONS_FILE, index=False)
    catalog.write_pseudo_labels(output, pd.concat([it.labels for it in iterations[1:]], ignore_index=True))
    figures.self_training_iterations({f"threshold {config.selection.threshold}": table},
                                     catalog.figures_dir(output) / "iterations.png")
    kept_config = base if kept.number == 0 else fine_tune_config(base, config.fine_tune, kept.number)
    log.info("kept iteration %d: val accuracy %.4f (input model %.4f)", kept.number, kept.row["val_accuracy"],
             table["val_accuracy"].iloc[0])
    return {"train_config": kept_config.model_dump(mode="json"), **saved}


def check_first_labels(labels: Path, start: Path, config: SelfTrainConfig) -> None:
    """Iteration 1's pseudo-labels must come from the input model with this run's selection."""
    manifest = read_manifest(labels)
    made_by = manifest["parents"].get("model", {}).get("digest")
    if manifest["stage"] != "pseudo_label" or made_by != read_manifest(start)["digest"]:
        raise ArtifactError(f"{labels}: the pseudo_labels input must be the pseudo_label stage's output for the "
                            f"model input {start}; rerun pseudo_label on that model")
    selection = config.selection.model_dump(mode="json")
    if manifest["config"] != selection:
        raise ArtifactError(f"{labels} was selected with {manifest['config']} but selection is {selection}: rerun "
                            "the pseudo_label stage with this run's selection config")


def summary_metrics(table: pd.DataFrame, history: pd.DataFrame, kept: Iteration) -> dict[str, Any]:
    """The kept iteration's numbers; ``best_epoch`` counts epochs across iterations (0: the input model)."""
    row = table.iloc[kept.number]
    before = history[history["iteration"] < kept.number]
    return {
        "best_iteration": kept.number,
        "best_epoch": 0 if kept.number == 0 else len(before) + int(row["best_epoch"]),
        "best_val_accuracy": float(row["val_accuracy"]),
        "best_val_loss": float(row["val_loss"]),
        "best_samples_used": int(row["selected"]),
        "final_samples_used": int(table["selected"].iloc[-1]),
        "iterations_run": len(table) - 1,
        "input_val_accuracy": float(table["val_accuracy"].iloc[0]),
        "parameters": kept.model.count_params(),
        "train_seconds": round(float(table["train_seconds"].sum()), 2),
    }


STAGE = Stage("self_train", SelfTrainConfig, run, inputs=("split", "model", "pseudo_labels"),
              summary="Self-training: pseudo-label, retrain on labeled + pseudo-labeled data, validate; keep the best iteration.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
