"""Split stage: stratified, seeded split of CIFAR-100 into labeled / validation / unlabeled / test."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from stages.lib import catalog, cifar
from stages.lib.config import StrictModel
from stages.lib.stage import Stage, main

log = logging.getLogger(__name__)


class SplitConfig(StrictModel):
    labels_per_class: int = Field(90, ge=1, description="labeled training images per class")
    val_per_class: int = Field(10, ge=1, description="labeled validation images per class")
    unlabeled_per_class: int | None = Field(
        None, ge=0, description="unlabeled images per class; None = every image left over"
    )
    test_per_class: int | None = Field(
        None, ge=1, le=100, description="test images per class; None = the whole official test set"
    )
    seed: int = Field(0, description="seed of the per-class shuffle")

    @model_validator(mode="after")
    def _fits_in_cifar(self) -> SplitConfig:
        used = self.labels_per_class + self.val_per_class + (self.unlabeled_per_class or 0)
        if used > cifar.TRAIN_IMAGES_PER_CLASS:
            raise ValueError(
                f"labels_per_class + val_per_class + unlabeled_per_class = {used}, but CIFAR-100 "
                f"has {cifar.TRAIN_IMAGES_PER_CLASS} training images per class: lower one of them"
            )
        return self


def stratified_indices(labels: np.ndarray, counts: Mapping[str, int | None], seed: int) -> dict[str, np.ndarray]:
    """Disjoint index sets, ``counts[name]`` per class (None = all remaining), sorted.

    Each class is shuffled once with a generator seeded by (seed, class), so a class's picks do
    not depend on the other classes or on the order of ``counts`` beyond their sizes.
    """
    picked: dict[str, list[np.ndarray]] = {name: [] for name in counts}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled = np.random.default_rng([seed, int(label)]).permutation(members)
        start = 0
        for name, count in counts.items():
            stop = len(shuffled) if count is None else start + count
            if stop > len(shuffled):
                raise ValueError(f"class {label} has {len(shuffled)} images, fewer than the {stop} asked for")
            picked[name].append(shuffled[start:stop])
            start = stop
    return {name: np.sort(np.concatenate(parts)) for name, parts in picked.items()}


def first_per_class(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """The first ``per_class`` indices of each class in file order (all when None)."""
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def run(config: SplitConfig, inputs: Mapping[str, Path], output: Path) -> None:
    train, test, classes = cifar.load(inputs["archive"])
    parts = stratified_indices(
        train.labels,
        {"labeled": config.labels_per_class, "validation": config.val_per_class,
         "unlabeled": config.unlabeled_per_class},
        config.seed,
    )
    test_rows = first_per_class(test.labels, config.test_per_class)
    train_ids = np.array([f"train-{i:05d}" for i in range(len(train.labels))])
    test_ids = np.array([f"test-{i:05d}" for i in range(len(test.labels))])
    for name in ("labeled", "validation"):
        rows = parts[name]
        catalog.write_table(output, name, train_ids[rows], train.images[rows], train.labels[rows])
    rows = parts["unlabeled"]
    catalog.write_table(output, "unlabeled", train_ids[rows], train.images[rows])
    catalog.write_table(output, "unlabeled_audit", train_ids[rows], labels=train.labels[rows])
    catalog.write_table(output, "test", test_ids[test_rows], test.images[test_rows], test.labels[test_rows])
    (output / catalog.CLASSES_FILE).write_text(json.dumps(classes, indent=1) + "\n")
    log.info("split: %s", {name: len(rows) for name, rows in parts.items()} | {"test": len(test_rows)})


STAGE = Stage("split", SplitConfig, run, inputs=("archive",), sources=("archive",),
              summary="Stratified, seeded split of CIFAR-100 into labeled, validation, unlabeled and test Parquet.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
