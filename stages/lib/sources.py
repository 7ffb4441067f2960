"""Data sources: where the split's images and labels come from.

A source reads a path and yields a ``Dataset``: the class names, a training pool (labeled and
unlabeled images) and the source's own test set where it has one, every image as (S, S, 3) uint8.
The split stage does the rest. ``SOURCES`` maps each ``DataConfig.source`` to its reader:

- ``cifar100``, ``cifar100-coarse``: the official archive, fine (100) or coarse (20) labels;
- ``folder``: ``ROOT/labeled/<class>/*``, ``ROOT/unlabeled/**/*``, optional ``ROOT/test/<class>/*``;
- ``parquet``: a table (or a folder of tables) with ``image`` (encoded bytes, or a path relative to
  the table) and ``label`` (class name or integer; null = unlabeled), optional ``split`` (train/test).

Images are decoded by Pillow (PNG, JPEG, WebP, BMP), converted to RGB and brought to
``image_size`` by ``resize``; what was converted is counted in ``Dataset.converted``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from pydantic import Field

from stages.lib import cifar
from stages.lib.catalog import DataError, ImageTable
from stages.lib.config import StrictModel

log = logging.getLogger(__name__)

SourceName = Literal["cifar100", "cifar100-coarse", "folder", "parquet"]
UNLABELED = -1  # the label of a training-pool image without one
FOLDER_LAYOUT = "ROOT/labeled/<class name>/*, ROOT/unlabeled/**/*, optional ROOT/test/<class name>/*"


class DataConfig(StrictModel):
    """Which source the split reads, and the size every image is brought to."""

    source: SourceName = Field("cifar100", description="cifar100, cifar100-coarse, folder or parquet")
    image_size: int | None = Field(
        None, ge=8, le=1024,
        description="side of the square images, in pixels; None = the source's own (32 for CIFAR-100, else the most "
                    "common shorter side)")
    resize: Literal["crop", "pad", "stretch"] = Field(
        "crop", description="crop: shorter side to image_size, then the centre; pad: longer side, then black borders; "
                            "stretch: both sides, the aspect ratio lost")


@dataclass(frozen=True)
class Dataset:
    """Each part's ids are unique within the source, its images (N, S, S, 3) uint8 and its labels
    class indices, UNLABELED where the source gives none."""

    classes: list[str]  # by class index
    train: ImageTable  # labeled and unlabeled
    test: ImageTable | None  # the source's own test set; None = the split takes one from the labeled images
    converted: dict[str, int] = field(default_factory=dict)  # images converted (or repeats dropped), by what was done


CIFAR_SOURCES = ("cifar100", "cifar100-coarse")  # read from the official archive


def locate(source: SourceName, path: str | Path | None) -> Path:
    """What the split reads for ``source``: the verified CIFAR-100 archive (``path``, else
    ``$CIFAR100_ARCHIVE``, else the download cache), or the folder or table at ``path``."""
    if source in CIFAR_SOURCES:
        return cifar.resolve_archive(path)
    if path is None:
        raise DataError(f"split.data.source is {source}: give its path with --data PATH")
    if not Path(path).exists():
        raise DataError(f"{path} does not exist: give the path of the {source} source with --data PATH")
    return Path(path)


def infer_source(path: Path) -> SourceName | None:
    """The source a path holds: a folder with ``labeled/`` (folder), a Parquet table or a folder of them
    (parquet); None for anything else, such as the CIFAR-100 archive."""
    if path.is_dir() and (path / "labeled").is_dir():
        return "folder"
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return "parquet"
    return None


def read_source(config: DataConfig, path: Path) -> Dataset:
    """The dataset at ``path``, as ``config.source`` reads it. Raises ``DataError`` naming the file and the fix."""
    dataset = SOURCES[config.source](Path(path), config)
    log.info("source %s at %s: %d classes, %d training images (%d labeled), %d test images, %dx%d pixels%s",
             config.source, path, len(dataset.classes), len(dataset.train), int((dataset.train.labels >= 0).sum()),
             len(dataset.test) if dataset.test else 0, *dataset.train.images.shape[1:3],
             f"; converted: {dataset.converted}" if dataset.converted else "")
    return dataset


def _cifar(labels: Literal["fine", "coarse"]) -> Callable[[Path, DataConfig], Dataset]:
    def read(path: Path, config: DataConfig) -> Dataset:
        train, test, classes = cifar.load(path, labels)
        converted: Counter[str] = Counter()
        images = {name: _resized_array(part.images, config, converted) for name, part in (("train", train), ("test", test))}
        return Dataset(
            classes,
            ImageTable(_ids("train", len(train.labels)), images["train"], train.labels),
            ImageTable(_ids("test", len(test.labels)), images["test"], test.labels),
            dict(converted),
        )

    return read


def _ids(prefix: str, count: int) -> np.ndarray:
    return np.array([f"{prefix}-{i:05d}" for i in range(count)])


def _resized_array(images: np.ndarray, config: DataConfig, converted: Counter[str]) -> np.ndarray:
    """CIFAR's (N, 32, 32, 3) images at ``config.image_size``."""
    size = config.image_size or images.shape[1]
    if size == images.shape[1]:
        return images
    converted["resized"] += len(images)
    return np.stack([np.asarray(_fit(Image.fromarray(image), size, config.resize)) for image in images])


# ---------------------------------------------------------------------------------------------
# decoding: one file or one encoded value -> an RGB array of the configured size


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, its own size
    conversions: tuple[str, ...]  # e.g. ("grayscale",)


def decode(data: bytes, origin: str) -> Decoded:
    """An encoded image as RGB. ``origin`` (a file, or a table's row) names it in errors."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # a truncated file fails here, not at open
            image = ImageOps.exif_transpose(opened)  # a photo's EXIF orientation: upright, as a viewer shows it
            mode = image.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{origin}: not a readable image ({error}). Remove it, or replace it with a PNG, JPEG, WebP or "
                        "BMP file that opens in an image viewer.") from None
    return Decoded(*_to_rgb(image, mode))


def _to_rgb(image: Image.Image, mode: str) -> tuple[Image.Image, tuple[str, ...]]:
    if mode == "RGB":
        return image, ()
    if mode.startswith("I"):  # 16-bit grayscale (Pillow opens it as I;16 or I): keep the top 8 bits
        values = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(values).convert("RGB"), ("16-bit",)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size)  # transparent pixels become black
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background, ("alpha",)
    kind = "grayscale" if mode in ("L", "1") else "palette" if mode == "P" else mode.lower()
    return image.convert("RGB"), (kind,)


def _fit(image: Image.Image, size: int, rule: str) -> Image.Image:
    if image.size == (size, size):
        return image
    if rule == "crop":
        return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    if rule == "pad":
        return ImageOps.pad(image, (size, size), Image.Resampling.BICUBIC, color=(0, 0, 0))
    return image.resize((size, size), Image.Resampling.BICUBIC)


def to_array(decoded: Iterable[Decoded], size: int, rule: str, converted: Counter[str]) -> np.ndarray:
    """(N, size, size, 3) uint8 from decoded images, counting conversions and resizes into ``converted``."""
    arrays = []
    for item in decoded:
        converted.update(item.conversions)
        if item.image.size != (size, size):
            converted["resized"] += 1
        arrays.append(np.asarray(_fit(item.image, size, rule), dtype=np.uint8))
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)


def common_size(decoded: list[Decoded]) -> int:
    """The most common shorter side among the images (the size a source without one trains at)."""
    return Counter(min(item.image.size) for item in decoded).most_common(1)[0][0]


def decode_all(items: list[tuple[bytes, str]]) -> list[Decoded]:
    """Decode (encoded image, origin) pairs on every core: Pillow releases the GIL while it decodes."""
    with ThreadPoolExecutor() as pool:
        return list(pool.map(lambda item: decode(*item), items))


Part = tuple[list[bytes], list[str], list[str], list[int]]  # encoded images, origins, ids, labels


def _without_repeats(parts: dict[str, Part]) -> tuple[dict[str, Part], int]:
    """``parts`` with every repeat of an image (identical bytes) dropped, a labeled copy kept before an
    unlabeled one, and how many were dropped. A repeat with another label, or one in the test set of
    an image for training, is an error: a contradiction, or a test that measures a training image."""
    seen: dict[str, tuple[str, str, int]] = {}  # digest -> (part, origin, label) of the copy kept
    kept: dict[str, list[int]] = {name: [] for name in parts}
    labeled_first = sorted(((name, i) for name, part in parts.items() for i in range(len(part[0]))),
                           key=lambda key: parts[key[0]][3][key[1]] == UNLABELED)
    for name, i in labeled_first:
        contents, origins, _, labels = parts[name]
        digest = hashlib.sha256(contents[i]).hexdigest()
        if digest not in seen:
            seen[digest] = (name, origins[i], labels[i])
            kept[name].append(i)
            continue
        first_part, first_origin, first_label = seen[digest]
        if first_part != name:
            raise DataError(f"{origins[i]} and {first_origin} are the same image (identical bytes), for training and for "
                            "testing: the test would measure an image the model trained on. Delete one of them.")
        if labels[i] not in (UNLABELED, first_label):
            raise DataError(f"{origins[i]} and {first_origin} are the same image (identical bytes) with different labels: "
                            "keep it in one class only.")
        log.info("%s repeats %s (identical bytes): it is used once", origins[i], first_origin)
    dropped = sum(len(part[0]) for part in parts.values()) - sum(map(len, kept.values()))
    return {name: tuple([column[i] for i in sorted(kept[name])] for column in parts[name]) for name in parts}, dropped


def _assemble(classes: list[str], parts: dict[str, Part], config: DataConfig) -> Dataset:
    """A Dataset from the encoded images of each part (train, and test where the source has one)."""
    parts, repeats = _without_repeats(parts)
    decoded = {name: decode_all(list(zip(part[0], part[1]))) for name, part in parts.items()}
    everything = [item for items in decoded.values() for item in items]
    size = config.image_size or common_size(everything)
    converted: Counter[str] = Counter({"repeat dropped": repeats} if repeats else {})
    images = {name: ImageTable(np.array(parts[name][2], dtype=str), to_array(items, size, config.resize, converted),
                           np.array(parts[name][3], dtype=np.int32)) for name, items in decoded.items()}
    return Dataset(classes, images["train"], images.get("test"), dict(converted))


# ---------------------------------------------------------------------------------------------
# folder


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` but hidden ones, sorted (the order the split's seeded shuffle starts from)."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def read_folder(root: Path, config: DataConfig) -> Dataset:
    labeled_root = root / "labeled"
    if not labeled_root.is_dir():
        raise DataError(f"{root} has no folder 'labeled': a folder source is laid out as {FOLDER_LAYOUT}. "
                        "Create labeled/<class name>/ with a few images of each class.")
    classes = sorted(path.name for path in labeled_root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise DataError(f"{labeled_root} has no class folders: put each class's images in labeled/<class name>/.")
    index = {name: i for i, name in enumerate(classes)}
    train: list[tuple[Path, int]] = []
    for name in classes:
        files = _files(labeled_root / name)
        if not files:
            raise DataError(f"{labeled_root / name} is empty: add images of class {name!r}, or remove the folder.")
        train += [(path, index[name]) for path in files]
    stray = [path for path in labeled_root.iterdir() if path.is_file() and not path.name.startswith(".")]
    if stray:
        raise DataError(f"{stray[0]} lies in labeled/ outside a class folder: move it into labeled/<class name>/.")
    if (root / "unlabeled").is_dir():
        train += [(path, UNLABELED) for path in _files(root / "unlabeled")]
    parts = {"train": train}
    if (root / "test").is_dir():
        parts["test"] = _test_files(root / "test", index)
    return _assemble(classes, {name: _read_files(root, files) for name, files in parts.items()}, config)


def _test_files(test_root: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    unknown = sorted(path.name for path in test_root.iterdir() if path.is_dir() and path.name not in index)
    if unknown:
        raise DataError(f"{test_root / unknown[0]}: class {unknown[0]!r} of test/ has no folder in labeled/ (its "
                        f"classes: {', '.join(sorted(index))}). Rename it to one of them, or add labeled images of it.")
    return [(path, index[folder.name]) for folder in sorted(test_root.iterdir()) if folder.is_dir()
            for path in _files(folder)]


def _read_files(root: Path, files: list[tuple[Path, int]]) -> Part:
    ids = [path.relative_to(root).as_posix() for path, _ in files]
    return [path.read_bytes() for path, _ in files], [str(path) for path, _ in files], ids, [label for _, label in files]


# ---------------------------------------------------------------------------------------------
# parquet

PARQUET_SCHEMA_HELP = ("columns: image (binary: encoded PNG/JPEG/WebP/BMP bytes; or string: a path relative to the "
                       "table), label (string class name or integer; null = unlabeled), optional split ('train' or 'test') "
                       "and id (string)")


def read_parquet(path: Path, config: DataConfig) -> Dataset:
    tables = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not tables:
        raise DataError(f"{path} holds no .parquet files: give a table, or a folder of tables with {PARQUET_SCHEMA_HELP}.")
    rows = [row for table in tables for row in _table_rows(table)]
    names = sorted({row["label"] for row in rows if row["label"] is not None}, key=_class_order)
    if not names:
        raise DataError(f"{path}: no row has a label. Give at least one labeled image per class in column 'label'.")
    index = {name: i for i, name in enumerate(names)}
    parts: dict[str, Part] = {}
    for row in rows:
        contents, origins, ids, labels = parts.setdefault(row["split"], ([], [], [], []))
        contents.append(row["image"])
        origins.append(row["origin"])
        ids.append(row["id"])
        labels.append(UNLABELED if row["label"] is None else index[row["label"]])
    if "train" not in parts:
        raise DataError(f"{path}: every row has split 'test'. Mark the training rows 'train' (or leave split null).")
    _reject_unknown_test_labels(path, parts, names)
    return _assemble([str(name) for name in names], parts, config)


def _class_order(name: str | int) -> tuple[int, str]:
    return (int(name), "") if isinstance(name, int) else (0, name)


def _table_rows(table_path: Path, labeled: bool = True) -> list[dict]:
    """A table's rows as dicts of image bytes, label, split, id and origin; ``labeled``: the table must
    have a label column (a source's tables; prediction's need not)."""
    try:
        table = pq.read_table(table_path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{table_path}: not a readable Parquet table ({error}). Rewrite it with pyarrow or pandas.") from None
    columns = set(table.schema.names)
    if not ({"image", "label"} if labeled else {"image"}) <= columns:
        raise DataError(f"{table_path} has columns {sorted(columns)}; a parquet source needs {PARQUET_SCHEMA_HELP}.")
    image_type = table.schema.field("image").type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type) or pa.types.is_string(image_type)):
        raise DataError(f"{table_path}: column 'image' is {image_type}; it must be binary or string ({PARQUET_SCHEMA_HELP}).")
    if "label" in columns:
        label_type = table.schema.field("label").type
        if not (pa.types.is_integer(label_type) or pa.types.is_string(label_type) or pa.types.is_null(label_type)):
            raise DataError(f"{table_path}: column 'label' is {label_type}; it must be a string or an integer "
                            f"({PARQUET_SCHEMA_HELP}).")
    data = table.to_pydict()
    data.setdefault("label", [None] * table.num_rows)
    splits = data.get("split") or ["train"] * table.num_rows
    ids = data.get("id") or [f"{table_path.stem}-{i:06d}" for i in range(table.num_rows)]
    rows = []
    for i, (image, label, split, row_id) in enumerate(zip(data["image"], data["label"], splits, ids)):
        origin = f"{table_path}, row {i}"
        if split not in (None, "train", "test"):
            raise DataError(f"{origin}: column 'split' is {split!r}; it must be 'train', 'test' or null.")
        if image is None:
            raise DataError(f"{origin}: column 'image' is null. Give the image's bytes or its path, or drop the row.")
        if isinstance(image, str):
            file = (table_path.parent / image)
            if not file.is_file():
                raise DataError(f"{origin}: column 'image' names {file}, which does not exist. Correct the path "
                                "(relative to the table's folder) or drop the row.")
            origin, image = f"{origin} ({file})", file.read_bytes()
        rows.append({"image": image, "label": label, "split": split or "train", "id": str(row_id), "origin": origin})
    return rows


def _reject_unknown_test_labels(path: Path, parts: dict[str, Part], names: list) -> None:
    train_labels = set(parts["train"][3])
    test_labels = set(parts.get("test", ([], [], [], []))[3])
    if UNLABELED in test_labels:
        raise DataError(f"{path}: a row of split 'test' has no label. Test images need labels; mark it 'train' or label it.")
    unknown = sorted(test_labels - train_labels)
    if unknown:
        raise DataError(f"{path}: class {names[unknown[0]]!r} appears only in test rows. Add labeled training rows of "
                        "it, or drop its test rows.")


def image_items(path: Path) -> list[tuple[str, bytes, str]]:
    """(id, encoded image, origin) of every image at ``path``, for prediction: the files under a
    folder (ids: their paths inside it), or the rows of a Parquet table or a folder of tables
    (ids: the ``id`` column, else table and row)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: give a folder of images or a Parquet table with an 'image' column.")
    tables = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if path.is_dir() and not tables:
        return [(file.relative_to(path).as_posix(), file.read_bytes(), str(file)) for file in _files(path)]
    return [(row["id"], row["image"], row["origin"]) for table in tables for row in _table_rows(table, labeled=False)]


SOURCES: dict[str, Callable[[Path, DataConfig], Dataset]] = {
    "cifar100": _cifar("fine"),
    "cifar100-coarse": _cifar("coarse"),
    "folder": read_folder,
    "parquet": read_parquet,
}
