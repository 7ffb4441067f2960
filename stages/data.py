"""The catalog of tabular artifacts: file names, explicit pyarrow schemas, reading and writing.

Images are stored as 32x32x3 uint8 HWC bytes in a ``fixed_size_binary(3072)`` column: the size
is enforced by the schema and the column reads straight into a NumPy array without copying rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.config import NUM_CLASSES

IMAGE_SHAPE = (32, 32, 3)
IMAGE_BYTES = int(np.prod(IMAGE_SHAPE))

_ID = pa.field("id", pa.string(), nullable=False)  # stable: "<official split>-<index>"
_IMAGE = pa.field("image", pa.binary(IMAGE_BYTES), nullable=False)
_LABEL = pa.field("label", pa.int32(), nullable=False)  # CIFAR-100 fine label, 0..99

LABELED_SCHEMA = pa.schema([_ID, _IMAGE, _LABEL])
UNLABELED_SCHEMA = pa.schema([_ID, _IMAGE])
AUDIT_SCHEMA = pa.schema([_ID, _LABEL])
# predicted label of an unlabeled image, the model's probability for it, and the self-training
# iteration whose training set the row joins
PSEUDO_LABEL_SCHEMA = pa.schema([
    _ID, _LABEL, pa.field("confidence", pa.float32(), nullable=False), pa.field("iteration", pa.int32(), nullable=False),
])

# an outliers artifact's score of every unlabeled image (positive = inside the one-class boundary)
# and whether the image is kept in its filtered unlabeled table
OUTLIER_SCORES_FILE = "scores.parquet"
OUTLIER_SCORE_SCHEMA = pa.schema([
    _ID, pa.field("score", pa.float32(), nullable=False), pa.field("kept", pa.bool_(), nullable=False),
])

# named here so that tracking can find them without importing the stages (and Keras): a classifier
# artifact's Keras model (to train on), and a self_train artifact's one row per iteration (0 = the input model)
MODEL_FILE = "model.keras"
ITERATIONS_FILE = "iterations.parquet"

# table name -> (file inside the split artifact, schema)
TABLES: dict[str, tuple[str, pa.Schema]] = {
    "labeled": ("labeled.parquet", LABELED_SCHEMA),
    "validation": ("validation.parquet", LABELED_SCHEMA),
    "unlabeled": ("unlabeled.parquet", UNLABELED_SCHEMA),
    # true labels of the unlabeled images: for measuring pseudo-label accuracy, never training
    "unlabeled_audit": ("unlabeled_audit.parquet", AUDIT_SCHEMA),
    "test": ("test.parquet", LABELED_SCHEMA),
}


class DataError(ValueError):
    """A table that does not match the schema the catalog promises."""


@dataclass(frozen=True)
class ImageTable:
    ids: np.ndarray  # (N,) str
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray | None  # (N,) int32, None for unlabeled data

    def __len__(self) -> int:
        return len(self.ids)


def table_path(artifact: Path, name: str) -> Path:
    return Path(artifact) / TABLES[name][0]


def write_table(artifact: Path, name: str, ids: np.ndarray, images=None, labels=None) -> Path:
    """Write one catalog table; columns the schema lacks must be None."""
    filename, schema = TABLES[name]
    columns = {"id": pa.array(ids, pa.string())}
    if "image" in schema.names:
        flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(ids) * IMAGE_BYTES)
        columns["image"] = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(IMAGE_BYTES), len(ids), [None, pa.py_buffer(flat)]
        )
    if "label" in schema.names:
        columns["label"] = pa.array(labels, pa.int32())
    table = pa.table(columns, schema=schema)
    path = Path(artifact) / filename
    pq.write_table(table, path, compression="snappy")
    return path


def read_table(artifact: Path, name: str) -> ImageTable:
    """Read one catalog table, checking its schema against the catalog's."""
    filename, schema = TABLES[name]
    path = Path(artifact) / filename
    if not path.is_file():
        raise DataError(f"{path} is missing: {artifact} has no {name!r} table. Rerun the split stage.")
    table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(schema):
        raise DataError(
            f"{path} has schema\n{table.schema}\nbut the {name!r} table needs\n{schema}\n"
            "Regenerate it with the split stage."
        )
    images = None
    if "image" in schema.names:
        column = table.column("image").combine_chunks()
        buffer = column.buffers()[1]
        flat = np.frombuffer(buffer, np.uint8, count=len(column) * IMAGE_BYTES, offset=column.offset * IMAGE_BYTES)
        images = flat.reshape(-1, *IMAGE_SHAPE)
    labels = table.column("label").to_numpy() if "label" in schema.names else None
    ids = table.column("id").to_numpy(zero_copy_only=False)
    _check_rows(path, ids, labels)
    return ImageTable(ids, images, labels)


def _check_rows(path: Path, ids: np.ndarray, labels: np.ndarray | None) -> None:
    """What a schema cannot say: rows exist, ids are unique, labels are CIFAR-100 classes."""
    fix = "Regenerate it with the split stage."
    if len(ids) == 0:
        raise DataError(f"{path} has no rows. {fix}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: column 'id' repeats {int((counts > 1).sum())} ids, e.g. {unique[counts > 1][0]!r}. {fix}")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)] if labels is not None else ()
    if len(bad):
        raise DataError(f"{path}: column 'label' holds {len(bad)} values outside 0..{NUM_CLASSES - 1}, e.g. {int(bad[0])}. {fix}")
