"""Predict stage: label new images with a trained classifier.

The model input is a classifier's artifact (or a registered model the CLI fetched into that
layout): ``model.keras`` and ``dataset.json``, whose class names and image shape are all that
prediction needs. The images are a folder of image files or a Parquet table (``image``: encoded
bytes or a path), decoded as the data source decodes them and brought to the model's size by the
resize rule it was trained with. Writes ``predictions.parquet`` (and ``predictions.csv`` on request):
per image its id, the predicted class's index, name and probability, and the top 5.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from stages.lib import catalog, figures, sources
from stages.lib.catalog import DataError
from stages.lib.config import StrictModel
from stages.lib.models import INFERENCE_BATCH
from stages.lib.stage import Stage, main

log = logging.getLogger(__name__)

TOP = 5
PREDICTIONS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),  # the file's path inside the folder, or the table's id
    pa.field("label", pa.int32(), nullable=False),  # the predicted class's index
    pa.field("class", pa.string(), nullable=False),  # ... and its name
    pa.field("probability", pa.float32(), nullable=False),
    pa.field("top5_classes", pa.list_(pa.string()), nullable=False),  # most probable first
    pa.field("top5_probabilities", pa.list_(pa.float32()), nullable=False),
])


class PredictConfig(StrictModel):
    batch_size: int = Field(1024, ge=1, description="images decoded and predicted at a time")
    inference_batch_size: int = Field(INFERENCE_BATCH, ge=1, description="images per forward pass")
    csv: bool = Field(False, description="write predictions.csv beside the Parquet table (top 5 as 'name:p;...')")


def predict_batches(model, data: catalog.DatasetInfo, items: list[tuple[str, bytes, str]], config: PredictConfig,
                    converted: Counter[str]) -> np.ndarray:
    """Probabilities (N, C) of the encoded images of ``items``, decoded and predicted ``batch_size`` at a time."""
    parts, started = [], time.perf_counter()
    for start in range(0, len(items), config.batch_size):
        chunk = items[start:start + config.batch_size]
        decoded = sources.decode_all([(encoded, origin) for _, encoded, origin in chunk])
        images = sources.to_array(decoded, data.image_shape[0], data.resize, converted)
        parts.append(model.predict(images.astype("float32"), batch_size=config.inference_batch_size, verbose=0))
        done = start + len(chunk)
        log.info("predicted %d/%d images (%.0f images/s)", done, len(items), done / (time.perf_counter() - started))
    return np.concatenate(parts)


def predictions_table(ids: list[str], probabilities: np.ndarray, classes: list[str]) -> pa.Table:
    names = np.asarray(classes, dtype=object)
    top = np.argsort(-probabilities, axis=1)[:, :TOP]
    best = top[:, 0]
    return pa.table({
        "id": ids, "label": best.astype(np.int32), "class": names[best],
        "probability": probabilities[np.arange(len(best)), best].astype(np.float32),
        "top5_classes": [list(row) for row in names[top]],
        "top5_probabilities": [list(row) for row in np.take_along_axis(probabilities, top, axis=1).astype(np.float32)],
    }, schema=PREDICTIONS_SCHEMA)


def write_csv(table: pa.Table, path: Path) -> None:
    frame = table.to_pandas()
    frame["top5"] = [";".join(f"{name}:{p:.4f}" for name, p in zip(names, probabilities))
                     for names, probabilities in zip(frame.pop("top5_classes"), frame.pop("top5_probabilities"))]
    frame.to_csv(path, index=False)


def run(config: PredictConfig, inputs: Mapping[str, Path], output: Path) -> None:
    data = catalog.read_dataset_info(inputs["model"])
    model = catalog.load_classifier(inputs["model"])
    items = sources.image_items(inputs["images"])
    if not items:
        raise DataError(f"{inputs['images']} holds no images: give a folder of image files or a table with rows.")
    ids = [item_id for item_id, _, _ in items]
    if len(set(ids)) < len(ids):
        repeated = next(item_id for item_id, count in Counter(ids).items() if count > 1)
        raise DataError(f"{inputs['images']}: id {repeated!r} names more than one image; give each row its own id.")
    log.info("predicting %d images with %d classes at %s", len(items), data.num_classes, data.image_shape)
    converted: Counter[str] = Counter()
    started = time.perf_counter()
    probabilities = predict_batches(model, data, items, config, converted)
    seconds = time.perf_counter() - started
    table = predictions_table(ids, probabilities, data.classes)
    pq.write_table(table, output / catalog.PREDICTIONS_FILE, compression="snappy")
    if config.csv:
        write_csv(table, output / "predictions.csv")
    counts = pd.Series(table.column("class").to_pylist()).value_counts().reindex(data.classes, fill_value=0)
    pd.DataFrame({"class": counts.index, "images": counts.to_numpy()}).to_parquet(output / "class_counts.parquet", index=False)
    figures.class_distribution(counts, catalog.figures_dir(output) / "class_distribution.png")
    metrics = {"images": len(items), "classes_predicted": int((counts > 0).sum()),
               "mean_probability": float(table.column("probability").to_numpy().mean()),
               "images_per_second": round(len(items) / seconds, 1),
               **{f"converted_{kind.replace('-', '_')}": count for kind, count in converted.items()}}
    catalog.write_metrics(output, metrics)
    log.info("predicted %d images (%.0f/s): %d classes, mean probability %.3f", len(items), metrics["images_per_second"],
             metrics["classes_predicted"], metrics["mean_probability"])


STAGE = Stage("predict", PredictConfig, run, inputs=("model", "images"), sources=("model", "images"),
              summary="Label new images (a folder or a Parquet table) with a trained classifier: class, probability, top 5.")

if __name__ == "__main__":
    sys.exit(main(STAGE))
