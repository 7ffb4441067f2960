"""bench/confidence.py: the fraction of unlabeled images over each threshold and their audited accuracy."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from stages.lib import catalog
from stages.lib.catalog import load_classifier

spec = importlib.util.spec_from_file_location("confidence_bench", Path(__file__).parents[1] / "bench" / "confidence.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_each_threshold_gives_the_images_passing_and_how_often_they_are_right(split_artifact, model_artifact, tmp_path,
                                                                                 monkeypatch):
    unlabeled = catalog.read_table(split_artifact, "unlabeled")
    probabilities = load_classifier(model_artifact).predict(unlabeled.images.astype("float32"), batch_size=500, verbose=0)
    truth = catalog.read_table(split_artifact, "unlabeled_audit").labels
    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == truth
    median = float(np.median(confidence))
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["confidence.py", "--split", str(split_artifact), "--model", str(model_artifact),
                                      "--thresholds", "0", repr(median), "1.01", "--name", "c"])
    bench.main()
    summary = json.loads((tmp_path / "c.json").read_text())
    everything, half, none = summary["rows"]
    assert summary["accuracy"] == everything["accuracy"] == right.mean()
    assert everything["passing"] == 1.0
    assert half["passing"] == (confidence >= median).mean() >= 0.5
    assert half["accuracy"] == right[confidence >= median].mean()
    assert none == {"threshold": 1.01, "passing": 0.0, "accuracy": None}
    assert "| 1.01 | 0.0% | — |" in (tmp_path / "c.md").read_text()
    assert np.isclose(summary["mean_confidence"], confidence.mean(), atol=1e-6)
