"""Pseudo-label stage: a model's confident predictions on the unlabeled split, as training labels
(the rule: ``stages.lib.pseudo_labels``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from stages.lib import catalog
from stages.lib.catalog import ImageTable
from stages.lib.pseudo_labels import PseudoLabelConfig, audit_accuracy, pseudo_label
from stages.lib.stage import Stage, main

log = logging.getLogger(__name__)


def selection_metrics(pseudo_labels: pd.DataFrame, unlabeled: ImageTable, audit: ImageTable) -> dict[str, float]:
    return {
        "selected": len(pseudo_labels),
        "selected_fraction": len(pseudo_labels) / len(unlabeled),
        "pseudo_label_accuracy": audit_accuracy(pseudo_labels, audit),
        "mean_confidence": float(pseudo_labels["confidence"].mean()),
        "classes_covered": int(pseudo_labels["label"].nunique()),
    }


def run(config: PseudoLabelConfig, inputs: Mapping[str, Path], output: Path) -> None:
    unlabeled = catalog.read_table(inputs["split"], "unlabeled")
    model = catalog.load_classifier(inputs["model"], catalog.read_dataset_info(inputs["split"]))
    pseudo_labels = pseudo_label(model, unlabeled, config, iteration=1)
    metrics = selection_metrics(pseudo_labels, unlabeled, catalog.read_table(inputs["split"], "unlabeled_audit"))
    catalog.write_pseudo_labels(output, pseudo_labels)
    catalog.write_metrics(output, metrics)
    log.info("%d of %d unlabeled images pass threshold %s (pseudo-label accuracy %.3f)", metrics["selected"],
             len(unlabeled), config.threshold, metrics["pseudo_label_accuracy"])


STAGE = Stage("pseudo_label", PseudoLabelConfig, run, inputs=("split", "model"),
              summary="Label the unlabeled split with a model; keep the confident predictions (threshold, per-class cap).")

if __name__ == "__main__":
    sys.exit(main(STAGE))
