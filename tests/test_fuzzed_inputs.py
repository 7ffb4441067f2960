"""Random mutations of valid inputs at three readers: the pipeline's config parser (through the
command line), the Parquet source reader and an artifact's manifest reader.

Each mutated input is accepted or refused with a clear error: a ``UserError`` from a reader, exit
code 2 and one ``error:`` line from the command. Never another exception (a traceback), and never a
changed input file. Each test counts what it generated and what was refused, and prints the tally.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.cli import main
from pipelines.config import load_pipeline_config
from stages.lib.artifacts import MANIFEST, read_manifest, verify
from stages.lib.errors import UserError
from stages.lib.sources import DataConfig, read_parquet

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# any YAML/JSON value: what a user could type where a field's value goes
SCALARS = (st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=3), max_leaves=6)


class Tally:
    """How many generated inputs were tried, and how many refused with a clear error."""

    def __init__(self, name: str):
        self.name, self.tried, self.refused = name, 0, 0

    def report(self) -> None:
        print(f"\n{self.name}: {self.refused} of {self.tried} generated inputs refused cleanly, "
              f"{self.tried - self.refused} accepted, none raised anything else")


@pytest.fixture
def tally(request):
    counted = Tally(request.node.name)
    yield counted
    counted.report()


def digest(path: Path) -> str:
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def mutate(data, path: list, action: str, value):
    """``data`` with the node at ``path`` replaced by ``value``, deleted, or given an unknown key."""
    if not path:
        return value if action != "add" else data
    head, *rest = path
    node = data[head]
    if rest:
        data[head] = mutate(node, rest, action, value)
    elif action == "replace":
        data[head] = value
    elif action == "delete":
        del data[head]
    elif isinstance(node, dict):
        node["not_a_field"] = value
    return data


def paths_of(data, prefix: tuple = ()) -> list[tuple]:
    """Every key path of nested dicts and lists."""
    paths = [prefix]
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        paths += paths_of(value, (*prefix, key))
    return paths


SMOKE = load_pipeline_config("smoke").model_dump(mode="json")
CONFIG_PATHS = [p for p in paths_of(SMOKE) if p and p[0] != "preset"]


@FUZZ
@given(path=st.sampled_from(CONFIG_PATHS), action=st.sampled_from(["replace", "delete", "add"]), value=VALUES)
def test_mutated_config_files_are_accepted_or_refused_clearly(path, action, value, capsys, tally):
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "config.yaml"
        overrides = mutate(json.loads(json.dumps(SMOKE)), list(path), action, value)
        overrides.pop("preset", None)
        config.write_text(yaml.safe_dump(overrides))
        before = digest(config)
        capsys.readouterr()
        code = main(["config", "--preset", "smoke", "--config", str(config)])
        err = capsys.readouterr().err
        assert digest(config) == before
    tally.tried += 1
    assert code in (0, 2), err
    if code == 2:
        tally.refused += 1
        assert err.startswith("error: ") and err.count("error: ") == 1 and "Traceback" not in err, err


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_TABLE = {"image": [png(i) for i in range(6)], "label": ["cat", "dog", "cat", "dog", None, "cat"],
               "split": ["train", "train", "train", "train", "train", "test"], "id": [f"r{i}" for i in range(6)]}
COLUMN_VALUES = st.lists(st.none() | st.binary(max_size=40) | st.text(max_size=10) | st.integers(-5, 5)
                         | st.sampled_from([png(7), "train", "test", "cat"]), min_size=6, max_size=6)


def column_of(values: list) -> pa.Array:
    """An Arrow column of ``values``, of one type: mixed values become their text."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) > 1:
        values = [None if v is None else str(v) for v in values]
    return pa.array(values)


@FUZZ
@given(column=st.sampled_from(["image", "label", "split", "id"]), action=st.sampled_from(["replace", "delete", "bytes"]),
       values=COLUMN_VALUES, offset=st.integers(0, 10**6), garbage=st.binary(min_size=1, max_size=64))
def test_mutated_parquet_tables_are_accepted_or_refused_clearly(column, action, values, offset, garbage, tally):
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "images.parquet"
        columns = {name: pa.array(value) for name, value in VALID_TABLE.items()}
        if action == "replace":
            columns[column] = column_of(values)
        elif action == "delete":
            del columns[column]
        pq.write_table(pa.table(columns), table)
        if action == "bytes":  # damage the file itself
            content = bytearray(table.read_bytes())
            at = offset % len(content)
            content[at:at + len(garbage)] = garbage
            table.write_bytes(bytes(content))
        before = digest(table)
        tally.tried += 1
        try:
            read_parquet(table, DataConfig(source="parquet", image_size=8))
        except UserError as error:
            tally.refused += 1
            assert str(table) in str(error)  # names the file
        assert digest(table) == before


@pytest.fixture(scope="module")
def small_artifact(split_artifact, tmp_path_factory) -> Path:
    """A copy of the smoke split, whose files the manifest reader checks."""
    copy = tmp_path_factory.mktemp("artifact") / "split"
    shutil.copytree(split_artifact, copy)
    return copy




@FUZZ
@given(data=st.data(), action=st.sampled_from(["replace", "delete", "add", "bytes"]), value=VALUES,
       offset=st.integers(0, 10**6), garbage=st.binary(min_size=1, max_size=32))
def test_mutated_manifests_are_accepted_or_refused_clearly(small_artifact, data, action, value, offset, garbage, tally):
    original = json.loads((small_artifact / MANIFEST).read_text())
    with tempfile.TemporaryDirectory() as scratch:
        artifact = Path(scratch) / "split"
        shutil.copytree(small_artifact, artifact)
        if action == "bytes":
            content = bytearray((artifact / MANIFEST).read_bytes())
            at = offset % len(content)
            content[at:at + len(garbage)] = garbage
            (artifact / MANIFEST).write_bytes(bytes(content))
        else:
            path = data.draw(st.sampled_from([p for p in paths_of(original) if p]))
            (artifact / MANIFEST).write_text(json.dumps(mutate(json.loads(json.dumps(original)), list(path), action,
                                                                value)))
        before = digest(artifact)
        tally.tried += 1
        with contextlib.suppress(UserError):
            read_manifest(artifact)
        try:
            verify(artifact)
        except UserError as error:
            tally.refused += 1
            assert str(artifact) in str(error)
        assert digest(artifact) == before
