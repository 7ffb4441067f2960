"""bench/gpu/ as a GPU machine runs it, on the CPU with a tiny budget: the archive sent in parts,
joined there and checked by the split stage, then FixMatch for a wall-clock budget on JAX and the report."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.lib.artifacts import sha256_file

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_gpu_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_archive_parts_join_to_the_same_bytes(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(os.urandom(1000))  # not a multiple of the part count
    parts = script("pack").split_archive(archive, tmp_path / "sent")
    assert [part.parent.name for part in parts] == ["call1", "call2", "call3"]
    (tmp_path / "there").mkdir()
    joined = script("run").join_parts(str(tmp_path / "sent" / "*" / "*.part*"), tmp_path / "there")
    assert sha256_file(joined) == sha256_file(archive)


def test_the_first_call_carries_less_archive_by_the_wheels_it_also_carries(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(os.urandom(1000))
    sizes = [part.stat().st_size for part in script("pack").split_archive(archive, tmp_path / "sent", first_call_bytes=90)]
    assert sizes == [274, 364, 362]  # 1090 bytes in three calls of at most 364


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_the_benchmark_trains_for_its_budget_on_jax_and_reports(archive, tmp_path):
    script("pack").split_archive(archive, tmp_path / "sent")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(BENCH / "run.py"), "--preset", "smoke", "--minutes", "0.2",
                    "--parts", str(tmp_path / "sent" / "*" / "*.part*"), "--work", str(tmp_path / "work"), "--out", str(out)],
                   env={**os.environ, "KERAS_BACKEND": "jax"}, check=True, capture_output=True, text=True)
    result = json.loads((out / "gpu-smoke.json").read_text())
    assert result["backend"] == "jax" and result["method"] == "fixmatch"
    assert result["steps"] > 0 and result["images_per_second"] > 0 and 0 <= result["test_accuracy"] <= 1
    assert result["test_images"] == 300  # the smoke preset's test subset
    assert {path.name for path in out.iterdir()} == {"gpu-smoke.json", "gpu-smoke.md", "gpu-smoke-history.parquet",
                                                     "gpu-smoke-learning-curves.png"}
