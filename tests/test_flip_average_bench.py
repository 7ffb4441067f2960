"""bench/flip_average.py: single-view and flip-averaged top-1 off the test set, with the paired error."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.lib import catalog
from stages.lib.catalog import load_classifier

spec = importlib.util.spec_from_file_location("flip_average_bench", Path(__file__).parents[1] / "bench" / "flip_average.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_single_and_averaged_by_hand():
    views = np.zeros((2, 4, 3))
    views[0] = [[0.6, 0.4, 0], [0.6, 0.4, 0], [0.1, 0.9, 0], [0, 0, 1]]  # right, wrong, right, wrong (labels below)
    views[1] = [[0.6, 0.4, 0], [0.1, 0.9, 0], [0.95, 0.05, 0], [0, 0, 1]]  # the mean: right, right, wrong, wrong
    scores = bench.single_and_averaged(views, np.array([0, 1, 1, 0]))
    assert scores["single"] == 0.5 and scores["averaged"] == 0.5
    assert scores["gain_standard_error"] == pytest.approx(np.std([0, 1, -1, 0], ddof=1) / 2)


def test_each_model_gets_both_sets_from_both_predictions(split_artifact, model_artifact, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["flip_average.py", "--split", str(split_artifact), "--models", str(model_artifact),
                                      "--name", "f"])
    bench.main()
    (row,) = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert row["model"] == f"baseline/{model_artifact.name}" and row["trained_on_unlabeled_images"] is False
    model = load_classifier(model_artifact)
    validation = catalog.read_table(split_artifact, "validation")
    single = model.predict(validation.images.astype("float32"), verbose=0)
    mirrored = model.predict(validation.images[:, :, ::-1].astype("float32"), verbose=0)
    assert row["validation"]["single"] == pytest.approx((single.argmax(axis=1) == validation.labels).mean())
    assert row["validation"]["averaged"] == pytest.approx(((single + mirrored).argmax(axis=1) == validation.labels).mean())
    assert row["unlabeled_images"] == len(catalog.read_table(split_artifact, "unlabeled_audit").labels)
    assert f"| baseline/{model_artifact.name} | no |" in (tmp_path / "f.md").read_text()
