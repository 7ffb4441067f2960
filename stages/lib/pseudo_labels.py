"""Pseudo-labels: a model's confident predictions on unlabeled images, as training labels.

``select`` is the whole selection rule (threshold, optional per-class cap) as a pure function;
``pseudo_label`` applies a model and that rule: the pseudo_label stage once, the self-training
stage every iteration. The audit labels of the unlabeled images only measure how right the
pseudo-labels are: they never reach ``select`` or any training set.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
from pydantic import Field

from stages.lib.catalog import ImageTable
from stages.lib.config import StrictModel
from stages.lib.errors import UserError
from stages.lib.models import INFERENCE_BATCH
from stages.lib.ssl_methods import confident, hard_pseudo_labels


class PseudoLabelConfig(StrictModel):
    """Which predictions on the unlabeled set become pseudo-labels."""

    threshold: float = Field(0.85, gt=0, le=1, description="keep predictions whose confidence is at least this")
    max_per_class: int | None = Field(
        None, ge=1, description="keep at most this many per predicted class, the most confident; None = no cap"
    )
    batch_size: int = Field(INFERENCE_BATCH, ge=1, description="inference batch size")


class EmptySelection(UserError, ValueError):
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
    """Fraction of pseudo-labels equal to the true label, over the images the source gave one for (NaN
    where it gave none): a measurement, never a training input."""
    truth = pd.Series(audit.labels, index=audit.ids)
    known = pseudo_labels[pseudo_labels["id"].isin(truth.index)]
    if known.empty:
        return float("nan")
    return float((truth.loc[known["id"]].to_numpy() == known["label"].to_numpy()).mean())
