"""Pseudo-label stage: a model's confident predictions on the unlabeled split, as training labels.

``select`` is the whole selection rule (threshold, optional per-class cap) as a pure function;
``pseudo_label`` applies a model and that rule, and the self-training stage calls it every
iteration. The audit labels of the unlabeled images only measure how right the pseudo-labels
are: they never reach ``select`` or any training set.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages import data
from stages.artifacts import parent_entry, staged_output, verify, write_manifest
from stages.baseline import METRICS_FILE, load_classifier
from stages.config import PseudoLabelConfig
from stages.data import PSEUDO_LABEL_SCHEMA, DataError, ImageTable
from stages.ssl_methods import confident, hard_pseudo_labels
from stages.stage import Stage, main

log = logging.getLogger(__name__)

PSEUDO_LABELS_FILE = "pseudo_labels.parquet"


class EmptySelection(ValueError):
    """No prediction passed the selection: there is nothing to train on."""


def predict(model: keras.Model, unlabeled: ImageTable, batch_size: int) -> pd.DataFrame:
    """One row per unlabeled image: id, predicted label, confidence (its probability)."""
    probabilities = model.predict(unlabeled.images.astype("float32"), batch_size=batch_size, verbose=0)
    labels, confidence = (keras.ops.convert_to_numpy(column) for column in hard_pseudo_labels(probabilities))
    return pd.DataFrame({"id": unlabeled.ids, "label": labels.astype(np.int32), "confidence": confidence.astype(np.float32)})


def select(predictions: pd.DataFrame, threshold: float, max_per_class: int | None = None) -> pd.DataFrame:
    """Rows with confidence >= threshold; with a cap, only the most confident ``max_per_class`` of
    each predicted label, so frequent classes cannot swamp the rest. Keeps the input order."""
    chosen = predictions[confident(predictions["confidence"].to_numpy(), threshold)]
    if max_per_class is not None:
        # stable sort: among equal confidences the earlier row wins
        ranked = chosen.sort_values("confidence", ascending=False, kind="stable")
        chosen = chosen.loc[ranked.groupby("label", sort=False).head(max_per_class).index].sort_index()
    return chosen


def pseudo_label(model: keras.Model, unlabeled: ImageTable, config: PseudoLabelConfig, iteration: int) -> pd.DataFrame:
    """The selected pseudo-labels of one iteration (PSEUDO_LABEL_SCHEMA's columns)."""
    predictions = predict(model, unlabeled, config.batch_size)
    chosen = select(predictions, config.threshold, config.max_per_class)
    if chosen.empty:
        raise EmptySelection(
            f"iteration {iteration}: no prediction reaches selection.threshold {config.threshold} (the most "
            f"confident is {predictions['confidence'].max():.3f}): lower the threshold"
        )
    return chosen.assign(iteration=np.int32(iteration)).reset_index(drop=True)


def audit_accuracy(pseudo_labels: pd.DataFrame, audit: ImageTable) -> float:
    """Fraction of pseudo-labels equal to the true label: a measurement, never a training input."""
    truth = pd.Series(audit.labels, index=audit.ids)
    return float((truth.loc[pseudo_labels["id"]].to_numpy() == pseudo_labels["label"].to_numpy()).mean())


def write_pseudo_labels(directory: Path, pseudo_labels: pd.DataFrame) -> Path:
    path = Path(directory) / PSEUDO_LABELS_FILE
    table = pa.Table.from_pandas(pseudo_labels[PSEUDO_LABEL_SCHEMA.names], schema=PSEUDO_LABEL_SCHEMA,
                                 preserve_index=False)
    pq.write_table(table, path, compression="snappy")
    return path


def read_pseudo_labels(artifact: Path, unlabeled: ImageTable) -> pd.DataFrame:
    """A pseudo-label table, checked against the schema and against the unlabeled set it labels."""
    path = Path(artifact) / PSEUDO_LABELS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: {artifact} is not a pseudo_label artifact. Run the pseudo_label stage.")
    table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(PSEUDO_LABEL_SCHEMA):
        raise DataError(f"{path} has schema\n{table.schema}\nbut pseudo-labels need\n{PSEUDO_LABEL_SCHEMA}\n"
                        "Regenerate it with the pseudo_label stage.")
    frame = table.to_pandas()
    unknown = frame.loc[~frame["id"].isin(unlabeled.ids), "id"]
    if len(unknown):
        raise DataError(
            f"{path}: field 'id' has {len(unknown)} ids that are not in the unlabeled table (e.g. "
            f"{', '.join(unknown.head(3))}): these pseudo-labels were made for another split. "
            "Rerun the pseudo_label stage on this split."
        )
    if frame["id"].duplicated().any():
        raise DataError(f"{path}: field 'id' repeats {frame['id'][frame['id'].duplicated()].iloc[0]!r}; "
                        "each unlabeled image takes one pseudo-label. Rerun the pseudo_label stage.")
    return frame


def selection_metrics(pseudo_labels: pd.DataFrame, unlabeled: ImageTable, audit: ImageTable) -> dict[str, float]:
    return {
        "selected": len(pseudo_labels),
        "selected_fraction": len(pseudo_labels) / len(unlabeled),
        "pseudo_label_accuracy": audit_accuracy(pseudo_labels, audit),
        "mean_confidence": float(pseudo_labels["confidence"].mean()),
        "classes_covered": int(pseudo_labels["label"].nunique()),
    }


def run(config: PseudoLabelConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    split, trained = Path(inputs["split"]), Path(inputs["model"])
    verify(split)
    verify(trained)
    unlabeled = data.read_table(split, "unlabeled")
    model = load_classifier(trained)
    pseudo_labels = pseudo_label(model, unlabeled, config, iteration=1)
    metrics = selection_metrics(pseudo_labels, unlabeled, data.read_table(split, "unlabeled_audit"))
    with staged_output(output) as tmp:
        write_pseudo_labels(tmp, pseudo_labels)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        manifest = write_manifest(
            tmp, "pseudo_label", config.model_dump(mode="json"),
            {"split": parent_entry(split), "model": parent_entry(trained)}, started,
            extra={"reads": ["split/unlabeled.parquet", "split/unlabeled_audit.parquet"]},
        )
    log.info("%d of %d unlabeled images pass threshold %s (pseudo-label accuracy %.3f)", metrics["selected"],
             len(unlabeled), config.threshold, metrics["pseudo_label_accuracy"])
    return manifest


STAGE = Stage(
    name="pseudo_label",
    summary="Label the unlabeled split with a model; keep the confident predictions (threshold, per-class cap).",
    config_type=PseudoLabelConfig,
    inputs=("split", "model"),
    run=run,
)

if __name__ == "__main__":
    sys.exit(main(STAGE))
