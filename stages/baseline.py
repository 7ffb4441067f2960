"""Baseline stage: the supervised classifier trained on the labeled split only."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.lib import catalog
from stages.lib.models import resolve_precision
from stages.lib.stage import Stage, main
from stages.lib.training import TrainConfig, train_classifier

log = logging.getLogger(__name__)


def run(config: TrainConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    data = catalog.read_dataset_info(inputs["split"])
    train, validation = catalog.read_table(inputs["split"], "labeled"), catalog.read_table(inputs["split"], "validation")
    log.info("training %s in %s on %d labeled images of %d classes, validating on %d", config.architecture.name,
             resolve_precision(config.precision), len(train), data.num_classes, len(validation))
    result = train_classifier(config, data, train, validation)
    best = result.history.iloc[result.best_epoch - 1]
    # "best_" = at the kept epoch; the unprefixed names are the per-epoch history's
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "best_val_accuracy": float(best["val_accuracy"]),
        "best_val_top5_accuracy": float(best["val_top5_accuracy"]),
        "best_val_loss": float(best["val_loss"]),
        "best_train_accuracy": float(best["accuracy"]),
        "best_train_loss": float(best["loss"]),
        "parameters": result.model.count_params(),
        "train_seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 1),  # training images / epoch wall time
    }
    log.info("best epoch %d: val accuracy %.4f", result.best_epoch, metrics["best_val_accuracy"])
    return catalog.save_classifier(output, result.model, result.history, metrics, data)


STAGE = Stage("baseline", TrainConfig, run, inputs=("split",),
              summary="Train the supervised classifier on the labeled split; keep the best validation epoch.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
