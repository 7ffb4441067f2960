"""The catalog: the name of every artifact file, the tables' explicit pyarrow schemas, and the one
way each kind of file is read and written (tables, pseudo-labels, metrics, trained classifiers).

Images are stored as HxWx3 uint8 bytes in a ``fixed_size_binary(H*W*3)`` column: the size is
enforced by the schema and the column reads straight into a NumPy array without copying rows. An
artifact with tables describes its data in ``dataset.json`` (``DatasetInfo``: the class names and
the image shape), and so does every trained classifier, which then predicts without a config.
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
from stages.lib.errors import UserError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

_ID = pa.field("id", pa.string(), nullable=False)  # stable within the source: "train-00042", "labeled/cat/1.png"
_LABEL = pa.field("label", pa.int32(), nullable=False)  # class index into DatasetInfo.classes
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
DATASET_FILE = "dataset.json"  # split, outliers and every classifier: DatasetInfo

# table name -> (file inside the split artifact, its columns)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "labeled": ("labeled.parquet", ("id", "image", "label")),
    "validation": ("validation.parquet", ("id", "image", "label")),
    "unlabeled": ("unlabeled.parquet", ("id", "image")),
    # true labels of the unlabeled images the source had them for: for measuring pseudo-labels, never training
    "unlabeled_audit": ("unlabeled_audit.parquet", ("id", "label")),
    "test": ("test.parquet", ("id", "image", "label")),
}
MAY_BE_EMPTY = ("unlabeled", "unlabeled_audit")  # a source may have no unlabeled images


class DataError(UserError, ValueError):
    """A table that does not match the schema the catalog promises."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a split's data is, and what a classifier trained on it takes and predicts."""

    classes: list[str]  # by class index
    image_shape: tuple[int, int, int]  # (height, width, 3)
    resize: str  # how an image of another size is brought to image_shape (sources.DataConfig.resize)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    def schema(self, table: str) -> pa.Schema:
        image = pa.field("image", pa.binary(self.image_bytes), nullable=False)
        return pa.schema([{"id": _ID, "image": image, "label": _LABEL}[column] for column in TABLES[table][1]])


def write_dataset_info(artifact: Path, info: DatasetInfo, **details: Any) -> None:
    """``dataset.json``: the classes and image shape, and ``details`` for people (the source, conversions)."""
    record = {"classes": info.classes, "image_shape": list(info.image_shape), "resize": info.resize, **details}
    (Path(artifact) / DATASET_FILE).write_text(json.dumps(record, indent=1) + "\n")


def read_dataset_info(artifact: Path) -> DatasetInfo:
    path = Path(artifact) / DATASET_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {Path(artifact)} was not made by this version of the pipeline. "
                            "Rerun the stage that made it (the split, or the classifier's training stage).")
    record_read(path)
    record = json.loads(path.read_text())
    return DatasetInfo(record["classes"], tuple(record["image_shape"]), record["resize"])


def split_counts(split: Path) -> dict[str, int]:
    """Rows per table of a split, as its ``dataset.json`` gives them."""
    return json.loads((Path(split) / DATASET_FILE).read_text())["counts"]


@dataclass(frozen=True)
class ImageTable:
    ids: np.ndarray  # (N,) str
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray | None  # (N,) int32, None for unlabeled data

    def __len__(self) -> int:
        return len(self.ids)


def table_path(artifact: Path, name: str) -> Path:
    return Path(artifact) / TABLES[name][0]


def write_table(artifact: Path, name: str, info: DatasetInfo, ids: np.ndarray, images=None, labels=None) -> Path:
    """Write one catalog table; columns the table lacks must be None."""
    schema = info.schema(name)
    columns = {"id": pa.array(ids, pa.string())}
    if "image" in schema.names:
        flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(ids) * info.image_bytes)
        columns["image"] = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(info.image_bytes), len(ids), [None, pa.py_buffer(flat)]
        )
    if "label" in schema.names:
        columns["label"] = pa.array(labels, pa.int32())
    table = pa.table(columns, schema=schema)
    path = table_path(artifact, name)
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
    """Read one catalog table, checking it against the artifact's ``dataset.json``."""
    info = read_dataset_info(artifact)
    schema = info.schema(name)
    path = table_path(artifact, name)
    table = _read_parquet(path, schema, f"{name!r} table", "split")
    images = None
    if "image" in schema.names:
        column = table.column("image").combine_chunks()
        flat = np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * info.image_bytes,
                             offset=column.offset * info.image_bytes)
        images = flat.reshape(-1, *info.image_shape)
    labels = table.column("label").to_numpy() if "label" in schema.names else None
    ids = table.column("id").to_numpy(zero_copy_only=False)
    _check_rows(path, ids, labels, info.num_classes, empty_allowed=name in MAY_BE_EMPTY)
    return ImageTable(ids, images, labels)


def _check_rows(path: Path, ids: np.ndarray, labels: np.ndarray | None, num_classes: int, empty_allowed: bool) -> None:
    """What a schema cannot say: rows exist, ids are unique, labels are the split's classes."""
    fix = "Regenerate it with the split stage."
    if len(ids) == 0 and not empty_allowed:
        raise DataError(f"{path} has no rows. {fix}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: column 'id' repeats {int((counts > 1).sum())} ids, e.g. {unique[counts > 1][0]!r}. {fix}")
    bad = labels[(labels < 0) | (labels >= num_classes)] if labels is not None else ()
    if len(bad):
        raise DataError(f"{path}: column 'label' holds {len(bad)} values outside 0..{num_classes - 1}, e.g. {int(bad[0])}. {fix}")


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


def save_classifier(directory: Path, model: keras.Model, history: pd.DataFrame, metrics: dict[str, Any],
                    data: DatasetInfo) -> dict[str, Any]:
    """A trained classifier's artifact files: model.keras, the SavedModel, the per-epoch history, the
    metrics and the ``data`` it was trained on. Returns the manifest fields that say how it was saved."""
    import keras

    model.save(directory / MODEL_FILE)
    exported = export_saved_model(model, directory / SAVED_MODEL_DIR)
    history.to_parquet(directory / HISTORY_FILE, index=False)
    write_metrics(directory, metrics)
    write_dataset_info(directory, data)
    return {"backend": keras.backend.backend(), "saved_model": exported}


def load_classifier(artifact: Path, data: DatasetInfo | None = None) -> keras.Model:
    """The classifier of a model artifact (baseline, self_train, fine_tune, consistency), checked to
    take ``data``'s images and predict its classes (default: the data it was trained on)."""
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
    trained_on = read_dataset_info(artifact)
    data = data or trained_on
    wanted = {"input shape": (tuple(model.input_shape[1:]), data.image_shape),
              "number of classes": (model.output_shape[-1], data.num_classes)}
    for what, (actual, expected) in wanted.items():
        if actual != expected:
            raise ArtifactError(f"{path} has {what} {actual}, but the split's images need {expected}: "
                                "use a classifier trained by this pipeline on this split's data")
    if trained_on.classes != data.classes:
        raise ArtifactError(f"{path} predicts the classes {_some(trained_on.classes)}, but the split's are "
                            f"{_some(data.classes)}: use a classifier trained by this pipeline on this split's data")
    return model


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" ... ({len(names)})" if len(names) > 4 else "")
