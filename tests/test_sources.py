"""Data sources: a folder of image files, Parquet tables of encoded images, CIFAR-100's coarse labels."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages.lib.catalog import DataError
from stages.lib.sources import UNLABELED, DataConfig, decode, read_source

RNG = np.random.default_rng(0)
CLASSES = ("cat", "dog", "fox")


def image(size=(40, 30), mode="RGB", value=None) -> Image.Image:
    """A random image of ``size`` (width, height), or one of a single ``value``."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = RNG.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8) if value is None else \
        np.full((size[1], size[0], channels), value, np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def save(img: Image.Image, path, format="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format)


def encoded(img: Image.Image, format="PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Three classes of 4 labeled 40x30 images (one JPEG, one grayscale), 5 unlabeled, 2 test images per class."""
    root = tmp_path / "images"
    for name in CLASSES:
        for i in range(4):
            save(image(), root / "labeled" / name / f"{i}.png")
        for i in range(2):
            save(image(), root / "test" / name / f"{i}.png")
    save(image(), root / "labeled" / "cat" / "photo.jpg", "JPEG")
    save(image(mode="L"), root / "labeled" / "dog" / "gray.png")
    for i in range(5):
        save(image(size=(64, 64)), root / "unlabeled" / "batch" / f"{i}.webp", "WEBP")
    return root


def test_folder_reads_classes_labels_and_test_images(folder):
    data = read_source(DataConfig(source="folder", image_size=16), folder)
    assert data.classes == list(CLASSES)
    assert data.train.images.shape == (3 * 4 + 2 + 5, 16, 16, 3) and data.train.images.dtype == np.uint8
    assert np.bincount(data.train.labels[data.train.labels >= 0]).tolist() == [5, 5, 4]
    assert (data.train.labels == UNLABELED).sum() == 5
    assert "labeled/cat/photo.jpg" in data.train.ids and "unlabeled/batch/0.webp" in data.train.ids
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.converted == {"grayscale": 1, "resized": len(data.train) + len(data.test)}


def test_folder_size_defaults_to_the_most_common_shorter_side(folder):
    data = read_source(DataConfig(source="folder"), folder)
    assert data.train.images.shape[1:] == (30, 30, 3)  # 20 of the 25 images are 40x30, 5 are 64x64
    assert data.converted["resized"] == 25  # a 40x30 image is cropped to 30x30


def test_reading_twice_gives_the_same_arrays(folder):
    first, second = (read_source(DataConfig(source="folder", image_size=16), folder) for _ in range(2))
    assert np.array_equal(first.train.images, second.train.images) and list(first.train.ids) == list(second.train.ids)


@pytest.mark.parametrize("rule, corner", [("crop", 255), ("pad", 0), ("stretch", 255)])
def test_resize_rules(tmp_path, rule, corner):
    """A white 40x20 image in 20x20: cropping or stretching keeps the corner white, padding adds black bars."""
    save(image((40, 20), value=255), tmp_path / "labeled" / "a" / "0.png")
    data = read_source(DataConfig(source="folder", image_size=20, resize=rule), tmp_path)
    assert data.train.images[0, 0, 0, 0] == corner and data.train.images[0, 10, 10, 0] == 255


def test_alpha_and_16_bit_images_become_rgb_and_are_counted(tmp_path):
    save(image(mode="RGBA"), tmp_path / "labeled" / "a" / "rgba.png")
    wide = Image.fromarray(np.full((30, 40), 65535, np.uint16))
    save(wide, tmp_path / "labeled" / "a" / "deep.png")
    data = read_source(DataConfig(source="folder"), tmp_path)
    assert data.converted["alpha"] == 1 and data.converted["16-bit"] == 1
    deep = data.train.images[list(data.train.ids).index("labeled/a/deep.png")]
    assert (deep == 255).all()


def table(rows: dict, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


def test_parquet_with_encoded_images_class_names_and_splits(tmp_path):
    images = [encoded(image()) for _ in range(8)]
    table({"image": images, "label": ["b", "a", None, "a", "b", None, "a", "b"],
           "split": ["train"] * 6 + ["test"] * 2}, tmp_path / "data.parquet")
    data = read_source(DataConfig(source="parquet"), tmp_path / "data.parquet")
    assert data.classes == ["a", "b"]
    assert data.train.labels.tolist() == [1, 0, UNLABELED, 0, 1, UNLABELED]
    assert data.test.labels.tolist() == [0, 1] and data.train.ids[0] == "data-000000"


def test_parquet_with_paths_and_integer_labels_in_a_folder_of_tables(tmp_path):
    for i in range(4):
        save(image(), tmp_path / "files" / f"{i}.png")
    table({"image": ["files/0.png", "files/1.png"], "label": [2, 10]}, tmp_path / "part-0.parquet")
    table({"image": ["files/2.png", "files/3.png"], "label": [2, None], "id": ["x", "y"]}, tmp_path / "part-1.parquet")
    data = read_source(DataConfig(source="parquet"), tmp_path)
    assert data.classes == ["2", "10"] and data.test is None
    assert data.train.labels.tolist() == [0, 1, 0, UNLABELED] and data.train.ids.tolist()[2:] == ["x", "y"]


def test_cifar100_coarse_has_20_classes(archive):
    data = read_source(DataConfig(source="cifar100-coarse"), archive)
    assert len(data.classes) == 20 and "fish" in data.classes
    assert np.bincount(data.train.labels).tolist() == [2500] * 20 and len(data.test) == 10_000


# bad data: each error names the file (or the row) and the fix

def bad_case(tmp_path, make, message, source="folder"):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        read_source(DataConfig(source=source), tmp_path if source == "folder" else tmp_path / "t.parquet")


def not_an_image(root):
    save(image(), root / "labeled" / "a" / "0.png")
    (root / "labeled" / "a" / "notes.png").write_text("not a picture")


def truncated_jpeg(root):
    save(image(), root / "labeled" / "a" / "0.png")
    data = encoded(image((64, 64)), "JPEG")
    (root / "labeled" / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])


def empty_class(root):
    save(image(), root / "labeled" / "a" / "0.png")
    (root / "labeled" / "b").mkdir()


def class_only_in_test(root):
    save(image(), root / "labeled" / "a" / "0.png")
    save(image(), root / "test" / "zebra" / "0.png")


def test_repeats_of_an_image_are_used_once(tmp_path):
    """CIFAR-100's own training set holds byte-identical images: a repeat is dropped and counted, the labeled copy kept."""
    picture = image()
    for path in ("labeled/a/0.png", "labeled/a/1.png", "unlabeled/copy.png"):
        save(picture, tmp_path / path)
    save(image(), tmp_path / "labeled" / "a" / "2.png")
    data = read_source(DataConfig(source="folder"), tmp_path)
    assert data.train.ids.tolist() == ["labeled/a/0.png", "labeled/a/2.png"] and data.converted["repeat dropped"] == 2


def labeled_twice(root):
    picture = image()
    save(picture, root / "labeled" / "a" / "0.png")
    save(picture, root / "labeled" / "b" / "0.png")


def train_image_in_test(root):
    picture = image()
    save(picture, root / "labeled" / "a" / "0.png")
    save(picture, root / "test" / "a" / "copy.png")


def no_labeled_folder(root):
    save(image(), root / "unlabeled" / "0.png")


def stray_file(root):
    save(image(), root / "labeled" / "a" / "0.png")
    save(image(), root / "labeled" / "loose.png")


@pytest.mark.parametrize("make, message", [
    (not_an_image, r"labeled/a/notes.png: not a readable image .* Remove it"),
    (truncated_jpeg, r"labeled/a/cut.jpg: not a readable image .*truncated"),
    (empty_class, r"labeled/b is empty: add images of class 'b', or remove the folder"),
    (class_only_in_test, r"test/zebra: class 'zebra' of test/ has no folder in labeled/"),
    (labeled_twice, r"labeled/b/0.png and .*labeled/a/0.png are the same image .* with different labels: keep it in one"),
    (train_image_in_test, r"test/a/copy.png and .*labeled/a/0.png are the same image .*for training and for testing"),
    (no_labeled_folder, r"has no folder 'labeled'.*Create labeled/<class name>/"),
    (stray_file, r"labeled/loose.png lies in labeled/ outside a class folder"),
], ids=lambda value: getattr(value, "__name__", None))
def test_bad_folders(tmp_path, make, message):
    bad_case(tmp_path, make, message)


def missing_path(root):
    table({"image": ["gone.png"], "label": ["a"]}, root / "t.parquet")


def wrong_columns(root):
    table({"picture": [encoded(image())], "label": ["a"]}, root / "t.parquet")


def unlabeled_test_row(root):
    table({"image": [encoded(image()), encoded(image())], "label": ["a", None], "split": ["train", "test"]}, root / "t.parquet")


def bad_split_value(root):
    table({"image": [encoded(image())], "label": ["a"], "split": ["validation"]}, root / "t.parquet")


def not_parquet(root):
    (root / "t.parquet").write_text("id,image\n")


def no_labels(root):
    table({"image": [encoded(image())], "label": pa.array([None], pa.string())}, root / "t.parquet")


@pytest.mark.parametrize("make, message", [
    (missing_path, r"t.parquet, row 0: column 'image' names .*gone.png, which does not exist"),
    (wrong_columns, r"t.parquet has columns \['label', 'picture'\]; a parquet source needs columns: image"),
    (unlabeled_test_row, r"a row of split 'test' has no label"),
    (bad_split_value, r"t.parquet, row 0: column 'split' is 'validation'; it must be 'train', 'test' or null"),
    (not_parquet, r"t.parquet: not a readable Parquet table"),
    (no_labels, r"no row has a label"),
], ids=lambda value: getattr(value, "__name__", None))
def test_bad_tables(tmp_path, make, message):
    bad_case(tmp_path, make, message, source="parquet")


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned 90 degrees
    path = tmp_path / "labeled" / "a" / "photo.jpg"
    path.parent.mkdir(parents=True)
    image((40, 20)).save(path, "JPEG", exif=exif)
    assert decode(path.read_bytes(), str(path)).image.size == (20, 40)
