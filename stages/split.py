"""Split stage: stratified, seeded split of CIFAR-100 into labeled / validation / unlabeled / test."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stages import cifar, data
from stages.artifacts import staged_output, write_manifest
from stages.config import SplitConfig
from stages.stage import Stage, main

log = logging.getLogger(__name__)


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


def run(config: SplitConfig, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
    started = dt.datetime.now(dt.timezone.utc)
    archive = Path(inputs["archive"])
    train, test, classes = cifar.load(archive)
    parts = stratified_indices(
        train.labels,
        {"labeled": config.labels_per_class, "validation": config.val_per_class,
         "unlabeled": config.unlabeled_per_class},
        config.seed,
    )
    test_rows = first_per_class(test.labels, config.test_per_class)
    train_ids = np.array([f"train-{i:05d}" for i in range(len(train.labels))])
    test_ids = np.array([f"test-{i:05d}" for i in range(len(test.labels))])
    with staged_output(output) as tmp:
        for name in ("labeled", "validation"):
            rows = parts[name]
            data.write_table(tmp, name, train_ids[rows], train.images[rows], train.labels[rows])
        rows = parts["unlabeled"]
        data.write_table(tmp, "unlabeled", train_ids[rows], train.images[rows])
        data.write_table(tmp, "unlabeled_audit", train_ids[rows], labels=train.labels[rows])
        data.write_table(tmp, "test", test_ids[test_rows], test.images[test_rows], test.labels[test_rows])
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        manifest = write_manifest(
            tmp, "split", config.model_dump(mode="json"),
            {"archive": {"path": str(archive), "stage": "source", "digest": cifar.SHA256}},
            started,
        )
    rows = {name: entry["rows"] for name, entry in manifest["files"].items() if "rows" in entry}
    log.info("split written to %s: %s", output, rows)
    return manifest


STAGE = Stage(
    name="split",
    summary="Stratified, seeded split of CIFAR-100 into labeled, validation, unlabeled and test Parquet.",
    config_type=SplitConfig,
    inputs=("archive",),
    run=run,
)

if __name__ == "__main__":
    sys.exit(main(STAGE))
