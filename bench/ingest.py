"""How fast images come in and go out: the split of CIFAR-100 from its archive, the ingest of the
same 50,000 training images as a folder of PNG files and as a Parquet table of encoded PNGs, and
prediction with the quick preset's network from a folder of PNG files. Byte-identical repeats in the
training set are written once.

The folder and the table are written first (not timed) from the archive's training images, one
folder per fine class. Each figure is the median of ``--repeats`` runs in this process. Writes
bench/results/<--name>.{json,md}.

    CIFAR100_ARCHIVE=... .venv/bin/python bench/ingest.py [--images 50000] [--predict-images 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from stages.lib import cifar
from stages.lib.machine import describe

RESULTS = Path(__file__).parent / "results"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def write_sources(archive: Path, count: int, root: Path) -> tuple[Path, Path, int]:
    """The first ``count`` training images as ROOT/labeled/<class>/<i>.png, and as one table of encoded
    PNGs, each image once: the training set holds byte-identical images, some under two labels, which
    a source refuses. Also returns how many images that leaves."""
    train, _, classes = cifar.load(archive)
    unique: dict[bytes, tuple[int, int]] = {}  # PNG -> (index, label), the first copy
    for i, (image, label) in enumerate(zip(train.images[:count], train.labels[:count])):
        unique.setdefault(png(image), (i, int(label)))
    folder = root / "folder"
    for data, (i, label) in unique.items():
        path = folder / "labeled" / classes[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    table = root / "images.parquet"
    pq.write_table(pa.table({"image": pa.array(list(unique), pa.binary()),
                             "label": [classes[label] for _, label in unique.values()]}), table)
    return folder, table, len(unique)


def timed(function, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return seconds


def split_seconds(archive: Path, scratch: Path, repeats: int) -> list[float]:
    """The split stage (the default config: 90 + 10 labeled per class) from the archive, manifest included."""
    from stages import split

    outputs = iter(scratch / f"split-{i}" for i in range(repeats))
    return timed(lambda: split.STAGE.execute(split.SplitConfig(), {"data": archive}, next(outputs)), repeats)


def ingest_seconds(source: str, path: Path, repeats: int) -> list[float]:
    from stages.lib.sources import DataConfig, read_source

    return timed(lambda: read_source(DataConfig(source=source), path), repeats)


def predict_seconds(folder: Path, count: int, scratch: Path, repeats: int) -> list[float]:
    """The predict stage over ``count`` PNG files with the quick preset's network (untrained: the rate
    does not depend on the weights), decoding included."""
    from pipelines.config import load_pipeline_config
    from stages import predict
    from stages.lib import catalog
    from stages.lib.training import build_classifier

    images = scratch / "to-predict"
    for i, file in enumerate(sorted(folder.rglob("*.png"))[:count]):
        images.mkdir(exist_ok=True)
        shutil.copyfile(file, images / f"{i:05d}.png")
    data = catalog.DatasetInfo([str(label) for label in range(100)], (32, 32, 3), "crop")
    model = scratch / "model"
    model.mkdir()
    build_classifier(load_pipeline_config("quick").baseline, data).save(model / catalog.MODEL_FILE)
    catalog.write_dataset_info(model, data)
    outputs = iter(scratch / f"predict-{i}" for i in range(repeats + 1))
    run = lambda: predict.STAGE.execute(predict.PredictConfig(), {"model": model, "images": images}, next(outputs))  # noqa: E731
    run()  # builds the inference function once
    return timed(run, repeats)


def row(what: str, images: int, seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"what": what, "images": images, "seconds": [round(s, 2) for s in seconds], "median_seconds": round(median, 2),
            "images_per_second": round(images / median)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--predict-images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="ingest")
    args = parser.parse_args()
    archive = cifar.resolve_archive()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder, table, count = write_sources(archive, args.images, scratch)
        rows = [row("split stage from the CIFAR-100 archive (60,000 images)", 60_000, split_seconds(archive, scratch, args.repeats)),
                row(f"folder of {count:,} PNG files", count, ingest_seconds("folder", folder, args.repeats)),
                row(f"Parquet table of {count:,} encoded PNGs", count, ingest_seconds("parquet", table, args.repeats)),
                row(f"predict stage, quick network, {args.predict_images:,} PNG files", args.predict_images,
                    predict_seconds(folder, args.predict_images, scratch, args.repeats))]
    machine = describe()
    report = {"machine": machine, "rows": rows, "command": f"python bench/ingest.py --images {args.images} "
              f"--predict-images {args.predict_images} --repeats {args.repeats}"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Images in and out ({machine['processor']}, {machine['cpus']} CPUs)", "",
             f"Vector extensions: {', '.join(machine['vector']) or 'none'}. Median of {args.repeats} runs in one process; "
             "decoding, resizing to 32x32 where needed and the checks included.", "",
             "| what | images | seconds (median; each run) | images/s |", "|---|---|---|---|",
             *[f"| {r['what']} | {r['images']:,} | {r['median_seconds']} ({', '.join(map(str, r['seconds']))}) | "
               f"{r['images_per_second']:,} |" for r in rows], "", f"Command: `{report['command']}`", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
