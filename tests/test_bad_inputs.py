"""Bad input at every boundary: a clear error that names the problem and the fix, and nothing
written or lost.

Each case builds its bad input under ``tmp_path`` and returns the call that must fail. The test
snapshots ``tmp_path`` (and the shared fixtures the call reads) before and after: no file may
appear, change or vanish — only the hidden lock file of an output may remain.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CIFAR_SHAPED

from pipelines.config import load_pipeline_config, parse_assignment
from stages.lib import catalog
from stages.lib.artifacts import MANIFEST, describe_files
from stages.lib.errors import UserError
from stages.lib.stage import get_stage, main

CASES = {}  # id -> (builder, exception type, pattern naming the problem, pattern naming the fix)


def case(name, error, problem, fix):
    def register(builder):
        CASES[name] = (builder, error, problem, fix)
        return builder
    return register


def rewrite_manifest(artifact: Path) -> None:
    """Make the manifest agree with the files again: the bad content then reaches the readers."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"] = describe_files(artifact)
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def hostile_split(env, table: str, columns: dict, schema: pa.Schema | None = None) -> Path:
    """A copy of the smoke split whose ``table`` holds ``columns``, with a manifest that matches."""
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    pq.write_table(pa.table(columns, schema=schema), catalog.table_path(split, table))
    rewrite_manifest(split)
    return split


LABELED_ROWS = 400  # smoke: 4 labels per class


def labeled_columns(env, **replace):
    table = pq.read_table(catalog.table_path(env["split"], "labeled"))
    columns = {name: table.column(name) for name in table.column_names}
    columns.update(replace)
    return columns


def baseline_on(env, split: Path):
    return lambda: get_stage("baseline").execute(env["smoke"].baseline, {"split": split}, env["tmp"] / "out")


def evaluate_with(env, model_artifact: Path):
    return lambda: get_stage("evaluate").execute(env["smoke"].evaluate, {"split": env["split"], "model": model_artifact},
                                                 env["tmp"] / "out")


def split_with(env, archive: Path):
    return lambda: get_stage("split").execute(env["smoke"].split, {"data": archive}, env["tmp"] / "out")


# -- the CIFAR-100 archive ------------------------------------------------------------------------

@case("archive missing", RuntimeError, r"nope\.tar\.gz does not exist", r"pass its path with --data")
def _(env):
    return split_with(env, env["tmp"] / "nope.tar.gz")


@case("archive truncated", RuntimeError, r"it is truncated\. Nothing was unpickled", r"Download the official archive")
def _(env):
    truncated = env["tmp"] / "cifar-100-python.tar.gz"
    with open(env["archive"], "rb") as source:
        truncated.write_bytes(source.read(1 << 20))
    return split_with(env, truncated)


@case("archive with a wrong checksum", RuntimeError, r"not the official cifar-100-python\.tar\.gz", r"Download the official")
def _(env):
    other = env["tmp"] / "cifar-100-python.tar.gz"
    shutil.copyfile(env["archive"], other)
    with open(other, "r+b") as handle:  # one byte changed, the size kept
        handle.seek(1000)
        handle.write(b"\xff")
    return split_with(env, other)


@case("archive path is a directory", RuntimeError, r"does not exist", r"--data or the CIFAR100_ARCHIVE")
def _(env):
    (env["tmp"] / "folder").mkdir()
    return split_with(env, env["tmp"] / "folder")


# -- Parquet tables -------------------------------------------------------------------------------

@case("table without its label column", catalog.DataError, r"labeled\.parquet has schema", r"Regenerate it with the split stage")
def _(env):
    columns = labeled_columns(env)
    del columns["label"]
    return baseline_on(env, hostile_split(env, "labeled", columns))


@case("images of the wrong size", catalog.DataError, r"fixed_size_binary\[1024\]", r"Regenerate it with the split stage")
def _(env):
    images = pa.array([b"\0" * 1024] * LABELED_ROWS, pa.binary(1024))
    return baseline_on(env, hostile_split(env, "labeled", labeled_columns(env, image=images)))


@case("NaN labels", catalog.DataError, r"label: double", r"Regenerate it with the split stage")
def _(env):
    labels = pa.array(np.full(LABELED_ROWS, np.nan))
    return baseline_on(env, hostile_split(env, "labeled", labeled_columns(env, label=labels)))


@case("null labels", catalog.DataError, r"has schema", r"Regenerate it with the split stage")
def _(env):
    labels = pa.array([None] * LABELED_ROWS, pa.int32())
    return baseline_on(env, hostile_split(env, "labeled", labeled_columns(env, label=labels)))


@case("negative labels", catalog.DataError, r"'label' holds 1 values outside 0\.\.99, e\.g\. -3", r"Regenerate it")
def _(env):
    labels = labeled_columns(env)["label"].to_numpy().copy()
    labels[7] = -3
    return baseline_on(env, hostile_split(env, "labeled", labeled_columns(env, label=pa.array(labels, pa.int32())),
                                          CIFAR_SHAPED.schema("labeled")))


@case("labels past the last class", catalog.DataError, r"outside 0\.\.99, e\.g\. 100", r"Regenerate it")
def _(env):
    labels = labeled_columns(env)["label"].to_numpy().copy()
    labels[:5] = 100
    return baseline_on(env, hostile_split(env, "labeled", labeled_columns(env, label=pa.array(labels, pa.int32())),
                                          CIFAR_SHAPED.schema("labeled")))


@case("duplicate ids", catalog.DataError, r"'id' repeats 1 ids", r"Regenerate it")
def _(env):
    ids = labeled_columns(env)["id"].to_pylist()
    ids[1] = ids[0]
    return baseline_on(env, hostile_split(env, "labeled", labeled_columns(env, id=pa.array(ids, pa.string())),
                                          CIFAR_SHAPED.schema("labeled")))


@case("empty table", catalog.DataError, r"labeled\.parquet has no rows", r"Regenerate it")
def _(env):
    empty = {name: column.slice(0, 0) for name, column in labeled_columns(env).items()}
    return baseline_on(env, hostile_split(env, "labeled", empty, CIFAR_SHAPED.schema("labeled")))


@case("outliers fitted on no labeled data", catalog.DataError, r"labeled\.parquet has no rows", r"Regenerate it")
def _(env):
    empty = {name: column.slice(0, 0) for name, column in labeled_columns(env).items()}
    split = hostile_split(env, "labeled", empty, CIFAR_SHAPED.schema("labeled"))
    return lambda: get_stage("outliers").execute(env["smoke"].outliers, {"split": split}, env["tmp"] / "out")


@case("table changed after its manifest", RuntimeError, r"labeled\.parquet has (rows|sha256)", r"rerun the split stage")
def _(env):
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    table = pq.read_table(catalog.table_path(split, "labeled"))
    pq.write_table(table.slice(0, 10), catalog.table_path(split, "labeled"))
    return baseline_on(env, split)


@case("manifest with other row counts", RuntimeError, r"has rows 400, but .* records 4000", r"rerun the split stage")
def _(env):
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    manifest = json.loads((split / MANIFEST).read_text())
    manifest["files"]["labeled.parquet"]["rows"] = 4000
    (split / MANIFEST).write_text(json.dumps(manifest))
    return baseline_on(env, split)


@case("artifact without a manifest", RuntimeError, r"manifest\.json is missing", r"Rerun the stage that writes it")
def _(env):
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    (split / MANIFEST).unlink()
    return baseline_on(env, split)


@case("corrupt manifest", RuntimeError, r"manifest\.json is not valid JSON", r"rerun the stage")
def _(env):
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    (split / MANIFEST).write_text('{"stage": "split", ')
    return baseline_on(env, split)


@case("file of the manifest missing", RuntimeError, r"validation\.parquet is listed in .* but missing", r"rerun the split stage")
def _(env):
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    catalog.table_path(split, "validation").unlink()
    return baseline_on(env, split)


@case("unreadable Parquet file", RuntimeError, r"is not a readable Parquet file", r"rerun the split stage")
def _(env):
    split = env["tmp"] / "split"
    shutil.copytree(env["split"], split)
    catalog.table_path(split, "test").write_bytes(b"PAR1 not really")
    return baseline_on(env, split)


# -- configuration --------------------------------------------------------------------------------

def pipeline_config(*overrides):
    return lambda env: lambda: load_pipeline_config("smoke", list(overrides))


for name, override, problem in [
    ("unknown field", {"baselines": {}}, r"baselines: not a field here"),
    ("unknown nested field", {"baseline": {"architecture": {"filterz": [8]}}}, r"baseline\.architecture\.filterz: not a field"),
    ("negative learning rate", {"baseline": {"learning_rate": -1}}, r"baseline\.learning_rate: Input should be greater than 0"),
    ("epochs of the wrong type", {"baseline": {"epochs": "many"}}, r"baseline\.epochs: Input should be a valid integer"),
    ("threshold above 1", {"self_training": {"selection": {"threshold": 1.5}}}, r"self_training\.selection\.threshold"),
    ("no labels per class", {"split": {"labels_per_class": 0}}, r"split\.labels_per_class"),
    ("unknown method", {"consistency": {"method": "mixmatch"}}, r"consistency\.method"),
]:
    case(f"config: {name}", ValueError, problem, r"ssl-pipeline config --preset NAME")(pipeline_config(override))


@case("config: unknown preset", ValueError, r"unknown preset 'fast'", r"choose one of .*quick")
def _(env):
    return lambda: load_pipeline_config("fast")


@case("config: --set without a value", ValueError, r"--set 'baseline\.seed'", r"expected KEY\.PATH=VALUE")
def _(env):
    return lambda: parse_assignment("baseline.seed")


def cli_exit(argv):
    code = main(get_stage("split"), argv)
    if code != 0:
        raise SystemExit(code)


@case("stage config file that is not YAML", SystemExit, r"config\.yaml is not valid YAML", r"correct its syntax")
def _(env):
    config = env["tmp"] / "config.yaml"
    config.write_text("labels_per_class: [4\n")
    return lambda: cli_exit(["--config", str(config), "--input", f"data={env['archive']}", "--output", str(env["tmp"] / "out")])


# -- models ---------------------------------------------------------------------------------------

def model_artifact_with(env, model: keras.Model | None = None, raw: bytes | None = None) -> Path:
    artifact = env["tmp"] / "model"
    shutil.copytree(env["model"], artifact)
    if model is not None:
        model.save(artifact / "model.keras")
    if raw is not None:
        (artifact / "model.keras").write_bytes(raw)
    rewrite_manifest(artifact)
    return artifact


def tiny_classifier(shape, classes):
    inputs = keras.Input(shape)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(keras.layers.Flatten()(inputs)))


@case("model file missing", RuntimeError, r"model\.keras is missing", r"must be a trained classifier's artifact")
def _(env):
    return evaluate_with(env, env["split"])  # a split artifact where a model artifact belongs


@case("model of another input shape", RuntimeError, r"input shape \(16, 16, 3\), but .* need \(32, 32, 3\)", r"trained by this pipeline")
def _(env):
    return evaluate_with(env, model_artifact_with(env, tiny_classifier((16, 16, 3), 100)))


@case("model with 10 classes", RuntimeError, r"number of classes 10, but .* need 100", r"trained by this pipeline on this split's data")
def _(env):
    return evaluate_with(env, model_artifact_with(env, tiny_classifier((32, 32, 3), 10)))


@case("model of other class names", RuntimeError, r"predicts the classes class 0, class 1, .* but the split's are apple",
      r"trained by this pipeline on this split's data")
def _(env):
    artifact = model_artifact_with(env)
    catalog.write_dataset_info(artifact, CIFAR_SHAPED)
    rewrite_manifest(artifact)
    return evaluate_with(env, artifact)


@case("model file that is not a model", RuntimeError, r"is not a loadable Keras model", r"retrain it")
def _(env):
    return evaluate_with(env, model_artifact_with(env, raw=b"PK\x03\x04 garbage"))


# -- paths ----------------------------------------------------------------------------------------

@case("output already exists", FileExistsError, r"out already exists: artifacts are never overwritten", r"Choose another output directory")
def _(env):
    (env["tmp"] / "out").mkdir()
    (env["tmp"] / "out" / "keep.txt").write_text("earlier work")
    return split_with(env, env["archive"])


@case("output below a file", UserError, r"cannot write in .*not-a-dir", r"choose an output directory")
def _(env):
    (env["tmp"] / "not-a-dir").write_text("a file")
    return lambda: get_stage("split").execute(env["smoke"].split, {"data": env["archive"]},
                                               env["tmp"] / "not-a-dir" / "out")


@case("input artifact that does not exist", RuntimeError, r"nowhere/manifest\.json is missing", r"Rerun the stage")
def _(env):
    return baseline_on(env, env["tmp"] / "nowhere")


@case("input under the wrong name", ValueError, r"missing: \['split'\], unknown: \['splits'\]", r"takes inputs split")
def _(env):
    return lambda: get_stage("baseline").execute(env["smoke"].baseline, {"splits": env["split"]}, env["tmp"] / "out")


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` except outputs' lock files."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for root in roots for path in sorted(Path(root).rglob("*"))
            if path.is_file() and not path.name.endswith(".lock")}


def test_the_suite_covers_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_rejected_clearly_and_loses_nothing(name, tmp_path, archive, split_artifact, model_artifact, smoke, capsys):
    builder, error, problem, fix = CASES[name]
    env = {"tmp": tmp_path, "archive": archive, "split": split_artifact, "model": model_artifact, "smoke": smoke}
    call = builder(env)
    before = snapshot(tmp_path, split_artifact, model_artifact)
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value) + capsys.readouterr().err  # the CLI case prints its message
    assert re.search(problem, message), f"{name}: the message does not name the problem:\n{message}"
    assert re.search(fix, message), f"{name}: the message does not name the fix:\n{message}"
    assert snapshot(tmp_path, split_artifact, model_artifact) == before, f"{name}: files were written or lost"
    assert not any(path.name.startswith((".out.tmp-", ".out.work")) for path in tmp_path.iterdir())
