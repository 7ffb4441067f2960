"""A user's own images through the pipeline: an image folder (another size, some grayscale), CIFAR-100's
20 coarse labels, and a Parquet table of encoded PNGs, each through split -> baseline -> evaluate ->
predict on the smoke preset; and the same by the command line, the registered champion included."""

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.config import load_pipeline_config
from stages.lib import catalog
from stages.lib.artifacts import verify
from stages.lib.stage import get_stage

CLASSES = ("disc", "ring", "stripes")


def drawing(kind: str, rng: np.random.Generator, size=(40, 30)) -> Image.Image:
    """A noisy picture of one of three kinds, so that the classes differ."""
    width, height = size
    y, x = np.mgrid[:height, :width]
    radius = np.hypot(x - width / 2, y - height / 2) / min(size)
    shape = {"disc": radius < 0.3, "ring": abs(radius - 0.3) < 0.08, "stripes": (x // 4) % 2 == 0}[kind]
    pixels = np.where(shape[..., None], rng.integers(150, 256, 3), rng.integers(0, 100, 3)) + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 labeled 40x30 images per class (every fourth grayscale), 9 unlabeled of 64x48, 3 test images per class."""
    root = tmp_path_factory.mktemp("own") / "images"
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        for part, count in (("labeled", 12), ("test", 3)):
            (root / part / kind).mkdir(parents=True)
            for i in range(count):
                image = drawing(kind, rng)
                (image.convert("L") if i % 4 == 3 else image).save(root / part / kind / f"{i}.png")
        (root / "unlabeled" / kind).mkdir(parents=True)  # any layout below unlabeled/
        for i in range(3):
            drawing(kind, rng, (64, 48)).save(root / "unlabeled" / kind / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def image_table(tmp_path_factory):
    """A table of encoded PNGs: 12 labeled per class, 9 unlabeled, 3 per class marked test."""
    rng = np.random.default_rng(1)
    rows = [(png(drawing(kind, rng)), kind, "train") for kind in CLASSES for _ in range(12)]
    rows += [(png(drawing(kind, rng)), None, "train") for kind in CLASSES for _ in range(3)]
    rows += [(png(drawing(kind, rng)), kind, "test") for kind in CLASSES for _ in range(3)]
    path = tmp_path_factory.mktemp("table") / "images.parquet"
    pq.write_table(pa.table({"image": [r[0] for r in rows], "label": [r[1] for r in rows], "split": [r[2] for r in rows]}), path)
    return path


def smoke_with(source: str):
    return load_pipeline_config("smoke", [{"split": {"data": {"source": source}}}])


def through_the_pipeline(config, data_path, tmp_path, images_to_predict):
    """split -> baseline -> evaluate -> predict; each artifact, by stage."""
    made = {"split": tmp_path / "split"}
    get_stage("split").execute(config.split, {"data": data_path}, made["split"])
    for stage, stage_config, inputs in (("baseline", config.baseline, {"split": made["split"]}),
                                        ("evaluate", config.evaluate, {"split": made["split"], "model": tmp_path / "baseline"}),
                                        ("predict", config.predict, {"model": tmp_path / "baseline", "images": images_to_predict})):
        made[stage] = tmp_path / stage
        get_stage(stage).execute(stage_config, inputs, made[stage])
        verify(made[stage])
    return made


def test_image_folder_end_to_end(image_folder, tmp_path):
    made = through_the_pipeline(smoke_with("folder"), image_folder, tmp_path, image_folder / "unlabeled")
    data = catalog.read_dataset_info(made["split"])
    assert data.classes == list(CLASSES) and data.image_shape == (30, 30, 3)
    described = json.loads((made["split"] / catalog.DATASET_FILE).read_text())
    assert described["converted"]["grayscale"] == 9 and described["converted"]["resized"] == 3 * (12 + 3 + 3)
    # 4 labeled, 2 validation, 2 leftovers hidden among the unlabeled, with the folder's 9 unlabeled images
    assert described["counts"] == {"labeled": 12, "validation": 6, "unlabeled": 15, "unlabeled_audit": 6, "test": 9}
    per_class = pd.read_parquet(made["evaluate"] / catalog.PER_CLASS_FILE)
    assert per_class["name"].tolist() == list(CLASSES) and per_class["images"].tolist() == [3, 3, 3]
    predictions = pd.read_parquet(made["predict"] / catalog.PREDICTIONS_FILE)
    assert len(predictions) == 9 and set(predictions["class"]) <= set(CLASSES)
    assert predictions["id"].iloc[0] == "disc/0.jpg" and len(predictions["top5_classes"].iloc[0]) == 3
    assert np.allclose([sum(p) for p in predictions["top5_probabilities"]], 1, atol=1e-4)  # all 3 classes are the top 5
    assert catalog.read_metrics(made["predict"])["converted_resized"] == 9


def test_coarse_labels_end_to_end(archive, tmp_path, image_table):
    made = through_the_pipeline(smoke_with("cifar100-coarse"), archive, tmp_path, image_table)
    data = catalog.read_dataset_info(made["split"])
    assert data.num_classes == 20 and data.classes[:2] == ["aquatic_mammals", "fish"]
    assert catalog.read_metrics(made["evaluate"])["test_images"] == 20 * 3
    predictions = pd.read_parquet(made["predict"] / catalog.PREDICTIONS_FILE)
    assert predictions["id"].tolist()[:2] == ["images-000000", "images-000001"] and predictions["label"].max() < 20


def test_parquet_of_encoded_pngs_end_to_end(image_table, tmp_path):
    made = through_the_pipeline(smoke_with("parquet"), image_table, tmp_path, image_table)
    assert catalog.read_dataset_info(made["split"]).image_shape == (30, 30, 3)
    assert catalog.read_metrics(made["evaluate"])["test_images"] == 9
    assert catalog.read_metrics(made["predict"])["images"] == 54


def test_a_model_refuses_data_of_other_classes(image_folder, archive, tmp_path):
    from stages.lib.artifacts import ArtifactError

    made = through_the_pipeline(smoke_with("folder"), image_folder, tmp_path, image_folder / "test")
    coarse = tmp_path / "coarse"
    get_stage("split").execute(smoke_with("cifar100-coarse").split, {"data": archive}, coarse)
    with pytest.raises(ArtifactError, match=r"has input shape \(30, 30, 3\), but the split's images need \(32, 32, 3\)"):
        get_stage("evaluate").execute(load_pipeline_config("smoke").evaluate, {"split": coarse, "model": made["baseline"]},
                                      tmp_path / "out")


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def test_run_and_predict_from_the_command_line(image_folder, tmp_path, fresh_home):
    """``run --data FOLDER``, then ``predict`` with the registered champion, as a user types them."""
    import os

    env = {**os.environ}
    run = cli("run", "--preset", "smoke", "--data", str(image_folder), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fixmatch" in run.stdout and "models:/tests-classifier@champion" in run.stdout
    output = tmp_path / "out" / "labels.parquet"
    predicted = cli("predict", "--preset", "smoke", "--model", "models:/tests-classifier@champion",
                    "--images", str(image_folder / "unlabeled"), "--output", str(output), "--csv", env=env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "9 images" in predicted.stdout
    assert len(pd.read_parquet(output)) == 9
    assert pd.read_csv(output.with_suffix(".csv"))["top5"].str.count(";").eq(2).all()


# bad data met past the source: each error names the file or field and the fix, and nothing is written

def small_folder(root, per_class=3, unlabeled=0, test=False):
    rng = np.random.default_rng(2)
    for kind in CLASSES:
        (root / "labeled" / kind).mkdir(parents=True)
        for i in range(per_class):
            drawing(kind, rng).save(root / "labeled" / kind / f"{i}.png")
        if test:
            (root / "test" / kind).mkdir(parents=True)
            drawing(kind, rng).save(root / "test" / kind / "0.png")
    (root / "unlabeled").mkdir()
    for i in range(unlabeled):
        drawing("disc", rng).save(root / "unlabeled" / f"{i}.png")
    return root


def split_of(root, tmp_path, **split):
    config = load_pipeline_config("smoke", [{"split": {"data": {"source": "folder"}, **split}}])
    get_stage("split").execute(config.split, {"data": root}, tmp_path / "split")
    return tmp_path / "split"


def test_a_class_with_too_few_images_is_named(tmp_path):
    root = small_folder(tmp_path / "images", per_class=5)
    with pytest.raises(catalog.DataError, match="class 'disc' has 5 labeled images, fewer than the 6 that labels_per_class "
                                                r"\+ val_per_class ask for: lower them, give fractions"):
        split_of(root, tmp_path)
    assert not (tmp_path / "split").exists()


def test_fractions_fit_any_class_size(tmp_path):
    root = small_folder(tmp_path / "images", per_class=10)
    split = split_of(root, tmp_path, labels_per_class=0.5, val_per_class=0.2, test_per_class=0.2, unlabeled_per_class=None)
    assert catalog.split_counts(split) == {"labeled": 15, "validation": 6, "unlabeled": 3, "unlabeled_audit": 3, "test": 6}


def test_a_source_without_a_test_set_needs_test_per_class(tmp_path):
    root = small_folder(tmp_path / "images", per_class=12)
    with pytest.raises(catalog.DataError, match="has no test set of its own: set split.test_per_class"):
        split_of(root, tmp_path, test_per_class=None)


def test_no_unlabeled_images_stops_ssl_with_the_way_out(tmp_path):
    root = small_folder(tmp_path / "images", per_class=6, test=True)
    split = split_of(root, tmp_path, unlabeled_per_class=0)
    assert catalog.split_counts(split)["unlabeled"] == 0 and len(catalog.read_table(split, "unlabeled")) == 0
    config = load_pipeline_config("smoke")
    with pytest.raises(catalog.DataError, match=r"unlabeled.parquet has no images, and fixmatch learns from unlabeled ones: "
                                                r".*ssl-pipeline run --supervised-only"):
        get_stage("consistency").execute(config.consistency.model_copy(update={"warm_start": False}), {"split": split},
                                         tmp_path / "consistency")
    get_stage("baseline").execute(config.baseline, {"split": split}, tmp_path / "baseline")  # the supervised path runs


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), r"holds no images"),
    (lambda root: (root.mkdir(), (root / "a.png").write_text("text")), r"a.png: not a readable image"),
    (lambda root: (root.mkdir(), pq.write_table(pa.table({"image": [png(drawing("disc", np.random.default_rng(0)))] * 2,
                                                           "id": ["x", "x"]}), root / "t.parquet")),
     r"id 'x' names more than one image"),
], ids=["empty folder", "not an image", "repeated id"])
def test_bad_images_to_predict(model_artifact, tmp_path, make, message):
    make(tmp_path / "new")
    with pytest.raises(catalog.DataError, match=message):
        get_stage("predict").execute(load_pipeline_config("smoke").predict, {"model": model_artifact, "images": tmp_path / "new"},
                                     tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_path_that_is_no_source_exits_2(capsys):
    from pipelines.cli import main

    assert main(["run", "--preset", "smoke", "--data", "/nowhere/images"]) == 2
    assert "--data /nowhere/images: neither a source (cifar100, cifar100-coarse, folder, parquet) nor an existing path" in \
        capsys.readouterr().err


def test_data_without_unlabeled_images_runs_the_supervised_path(tmp_path, fresh_home):
    import os

    root = small_folder(tmp_path / "images", per_class=6, test=True)
    run = cli("run", "--preset", "smoke", "--data", str(root), "--set", "split.unlabeled_per_class=0", env={**os.environ})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "the data has no unlabeled images: the supervised baseline alone" in run.stderr
    assert "supervised" in run.stdout and "fixmatch" not in run.stdout
