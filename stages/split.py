"""Split stage: a data source's images, split per class into labeled / validation / unlabeled / test.

Every class's labeled images are shuffled with a seed of their own and dealt out in order: the
labeled training images, validation, test (where the source has no test set of its own), and what
is left joins the unlabeled images with its labels hidden (kept apart as audit labels, to measure
pseudo-labels). The source's own unlabeled images join them without audit labels.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from stages.lib import catalog, sources
from stages.lib.catalog import DataError, DatasetInfo
from stages.lib.config import StrictModel
from stages.lib.sources import UNLABELED, DataConfig
from stages.lib.stage import Stage, main

log = logging.getLogger(__name__)

PerClass = int | float  # a count, or a fraction (0..1) of each class's labeled images


class SplitConfig(StrictModel):
    """The defaults are CIFAR-100's protocol as fractions, so that they scale with the source: 90 + 10
    of its 500 images per class, 10,000 labels with its fine labels and with its coarse ones alike."""

    data: DataConfig = DataConfig()
    labels_per_class: PerClass = Field(0.18, gt=0, description="labeled training images per class (a count or a fraction)")
    val_per_class: PerClass = Field(0.02, gt=0, description="labeled validation images per class (a count or a fraction)")
    unlabeled_per_class: int | None = Field(
        None, ge=0, description="labeled images per class left over that join the unlabeled ones; None = all "
                                "(the source's own unlabeled images always join)")
    test_per_class: PerClass | None = Field(
        None, gt=0, description="test images per class: the first of each class in the source's test set (None = all), "
                                "or, for a source without one, taken from its labeled images (then required)")
    seed: int = Field(0, description="seed of the per-class shuffle")

    @model_validator(mode="after")
    def _fractions_below_one(self) -> SplitConfig:
        for name in ("labels_per_class", "val_per_class", "test_per_class"):
            value = getattr(self, name)
            if isinstance(value, float) and value >= 1:
                raise ValueError(f"{name} is {value}: give a whole count of images, or a fraction below 1")
        return self


def class_counts(per_class: Mapping[str, PerClass | None], available: int) -> dict[str, int | None]:
    """Counts for a class of ``available`` labeled images: a fraction becomes a count (at least 1)."""
    return {name: max(1, round(value * available)) if isinstance(value, float) else value
            for name, value in per_class.items()}


def stratified_indices(labels: np.ndarray, per_class: Mapping[str, PerClass | None], seed: int,
                       classes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Disjoint index sets, ``per_class[name]`` of each class (None = all remaining), sorted.

    Each class is shuffled once with a generator seeded by (seed, class), so a class's picks do
    not depend on the other classes or on the order of ``per_class`` beyond their sizes.
    """
    picked: dict[str, list[np.ndarray]] = {name: [] for name in per_class}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled = np.random.default_rng([seed, int(label)]).permutation(members)
        start = 0
        for name, count in class_counts(per_class, len(shuffled)).items():
            stop = len(shuffled) if count is None else start + count
            if stop > len(shuffled):
                asked = " + ".join(list(per_class)[:list(per_class).index(name) + 1])
                class_name = classes[label] if classes else str(label)
                raise DataError(f"class {class_name!r} has {len(shuffled)} labeled images, fewer "
                                f"than the {stop} that {asked} ask for: lower them, give fractions of each class "
                                "(split.labels_per_class=0.8), or add images of that class")
            picked[name].append(shuffled[start:stop])
            start = stop
    return {name: np.sort(np.concatenate(parts)) for name, parts in picked.items()}


def first_per_class(labels: np.ndarray, per_class: PerClass | None) -> np.ndarray:
    """The first ``per_class`` indices of each class in file order (all when None)."""
    if per_class is None:
        return np.arange(len(labels))
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return np.sort(np.concatenate([rows[:class_counts({"test": per_class}, len(rows))["test"]] for rows in members]))


def run(config: SplitConfig, inputs: Mapping[str, Path], output: Path) -> None:
    dataset = sources.read_source(config.data, inputs["data"])
    train, test = dataset.train, dataset.test
    per_class = {"labels_per_class": config.labels_per_class, "val_per_class": config.val_per_class}
    if test is None:
        if config.test_per_class is None:
            raise DataError(f"{inputs['data']} has no test set of its own: set split.test_per_class (a count or a "
                            "fraction of each class's labeled images) to take one from them")
        per_class["test_per_class"] = config.test_per_class
    per_class["unlabeled_per_class"] = config.unlabeled_per_class
    labeled = np.flatnonzero(train.labels != UNLABELED)
    parts = {name: labeled[rows] for name, rows in
             stratified_indices(train.labels[labeled], per_class, config.seed, dataset.classes).items()}
    info = DatasetInfo(dataset.classes, tuple(train.images.shape[1:]), config.data.resize)
    for name, field in (("labeled", "labels_per_class"), ("validation", "val_per_class")):
        rows = parts[field]
        catalog.write_table(output, name, info, train.ids[rows], train.images[rows], train.labels[rows])
    hidden = parts["unlabeled_per_class"]  # labeled images whose labels the split hides
    rows = np.sort(np.concatenate([hidden, np.flatnonzero(train.labels == UNLABELED)]))
    catalog.write_table(output, "unlabeled", info, train.ids[rows], train.images[rows])
    catalog.write_table(output, "unlabeled_audit", info, train.ids[hidden], labels=train.labels[hidden])
    if test is None:
        test, test_rows = train, parts["test_per_class"]
    else:
        test_rows = first_per_class(test.labels, config.test_per_class)
    catalog.write_table(output, "test", info, test.ids[test_rows], test.images[test_rows], test.labels[test_rows])
    counts = {"labeled": len(parts["labels_per_class"]), "validation": len(parts["val_per_class"]), "unlabeled": len(rows),
              "unlabeled_audit": len(hidden), "test": len(test_rows)}
    catalog.write_dataset_info(output, info, source=config.data.source, counts=counts, converted=dataset.converted)
    log.info("split: %s", counts)


STAGE = Stage("split", SplitConfig, run, inputs=("data",), sources=("data",),
              summary="Stratified, seeded split of a data source into labeled, validation, unlabeled and test Parquet.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
