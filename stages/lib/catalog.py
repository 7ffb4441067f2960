"""The catalog: the name of every artifact file, the tables' explicit pyarrow schemas, and the one
way each kind of file is read and written (tables, pseudo-labels, metrics, trained classifiers).

Images are stored as 32x32x3 uint8 HWC bytes in a ``fixed_size_binary(3072)`` column: the size
is enforced by the schema and the column reads straight into a NumPy array without copying rows.
Every read goes through ``record_read``, so a stage's manifest lists the files it read.
Keras is imported only by the functions that save or load a model: tracking reads the file names
here without it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.lib.artifacts import ArtifactError, record_read

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

NUM_CLASSES = 100  # CIFAR-100's fine labels
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

# a trained classifier's artifact (baseline, self_train, fine_tune, consistency)
MODEL_FILE = "model.keras"  # to train on and to evaluate
SAVED_MODEL_DIR = "saved_model"  # to serve (TensorFlow SavedModel)
HISTORY_FILE = "history.parquet"  # one row per epoch
METRICS_FILE = "metrics.json"  # every stage's summary numbers
FIGURES_DIR = "figures"  # every stage's PNGs
ITERATIONS_FILE = "iterations.parquet"  # self_train: one row per iteration (0 = the input model)
PSEUDO_LABELS_FILE = "pseudo_labels.parquet"  # pseudo_label, self_train: PSEUDO_LABEL_SCHEMA
# pretrain: the encoder alone (for fine_tune's two-step), and the objective's whole network with
# what builds it again (for fine_tune's joint training)
ENCODER_FILE = "encoder.keras"
OBJECTIVE_WEIGHTS = "objective.weights.h5"
OBJECTIVE_SETUP_FILE = "objective.json"
# evaluate: per test class, and per test image
PER_CLASS_FILE = "per_class.parquet"
PREDICTIONS_FILE = "predictions.parquet"
CLASSES_FILE = "classes.json"  # split: the class names, by label

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


def _read_parquet(path: Path, schema: pa.Schema, what: str, stage: str) -> pa.Table:
    """The table at ``path``, noted as read and checked against ``schema``; errors name ``what`` it should
    be and the ``stage`` that writes it."""
    if not path.is_file():
        raise DataError(f"{path} is missing: {path.parent} has no {what}. Rerun the {stage} stage.")
    record_read(path)
    table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(schema):
        raise DataError(f"{path} has schema\n{table.schema}\nbut {what} needs\n{schema}\n"
                        f"Regenerate it with the {stage} stage.")
    return table


def read_table(artifact: Path, name: str) -> ImageTable:
    """Read one catalog table, checking its schema against the catalog's."""
    filename, schema = TABLES[name]
    path = Path(artifact) / filename
    table = _read_parquet(path, schema, f"{name!r} table", "split")
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


def read_classes(split: Path) -> list[str]:
    """The split's class names, by label."""
    return json.loads((Path(split) / CLASSES_FILE).read_text())


def write_pseudo_labels(directory: Path, pseudo_labels: pd.DataFrame) -> Path:
    path = Path(directory) / PSEUDO_LABELS_FILE
    table = pa.Table.from_pandas(pseudo_labels[PSEUDO_LABEL_SCHEMA.names], schema=PSEUDO_LABEL_SCHEMA,
                                 preserve_index=False)
    pq.write_table(table, path, compression="snappy")
    return path


def read_pseudo_labels(artifact: Path, unlabeled: ImageTable) -> pd.DataFrame:
    """A pseudo-label table, checked against the schema and against the unlabeled set it labels."""
    path = Path(artifact) / PSEUDO_LABELS_FILE
    frame = _read_parquet(path, PSEUDO_LABEL_SCHEMA, "pseudo-label table", "pseudo_label").to_pandas()
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


def write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    (Path(directory) / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")


def read_metrics(artifact: Path) -> dict[str, Any]:
    return json.loads((Path(artifact) / METRICS_FILE).read_text())


def figures_dir(directory: Path) -> Path:
    """The output's figures folder, created."""
    folder = Path(directory) / FIGURES_DIR
    folder.mkdir(exist_ok=True)
    return folder


def export_saved_model(model: keras.Model, path: Path) -> bool:
    """Write a SavedModel with a ``serve`` endpoint; False when TensorFlow is not installed.

    ``model.export`` calls the model without ``training=False``, and Keras' random augmentation
    layers then default to training mode: the served predictions would be augmented. The
    endpoint here passes ``training=False`` explicitly.
    """
    import keras

    if importlib.util.find_spec("tensorflow") is None:
        log.warning("TensorFlow is not installed: no SavedModel is exported, only %s", MODEL_FILE)
        return False
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")],
    )
    archive.write_out(str(path), verbose=False)
    return True


def save_classifier(directory: Path, model: keras.Model, history: pd.DataFrame, metrics: dict[str, Any]) -> dict[str, Any]:
    """A trained classifier's artifact files: model.keras, the SavedModel, the per-epoch history and
    the metrics. Returns the manifest fields that say how it was saved."""
    import keras

    model.save(directory / MODEL_FILE)
    exported = export_saved_model(model, directory / SAVED_MODEL_DIR)
    history.to_parquet(directory / HISTORY_FILE, index=False)
    write_metrics(directory, metrics)
    return {"backend": keras.backend.backend(), "saved_model": exported}


def load_classifier(artifact: Path) -> keras.Model:
    """The classifier of a model artifact (baseline, self_train, fine_tune, consistency), checked to
    take the catalog's images and to predict the CIFAR-100 classes."""
    import keras

    path = Path(artifact) / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the model input must be a trained classifier's artifact "
                            "(baseline, self_train, fine_tune or consistency stage)")
    record_read(path)
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises several types for a damaged or foreign file
        raise ArtifactError(f"{path} is not a loadable Keras model ({type(error).__name__}: {error}); "
                            "retrain it with the stage that made it") from None
    wanted = {"input shape": (tuple(model.input_shape[1:]), IMAGE_SHAPE),
              "number of classes": (model.output_shape[-1], NUM_CLASSES)}
    for what, (actual, expected) in wanted.items():
        if actual != expected:
            raise ArtifactError(f"{path} has {what} {actual}, but the pipeline's images need {expected}: "
                                "use a classifier trained by this pipeline on CIFAR-100")
    return model
