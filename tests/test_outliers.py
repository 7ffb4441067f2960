"""The outlier stage: the nu property of both scorers, the filtered split, bad input."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_pipeline_config
from stages import outliers
from stages.lib import catalog
from stages.lib.artifacts import verify
from stages.lib.config import ConfigError


def synthetic_images(count: int, kind: str, seed: int) -> np.ndarray:
    """``flat``: grey images of one brightness range with pixel noise (the typical ones); ``noise``:
    uniform random pixels (atypical of them). (count, 32, 32, 3) uint8."""
    rng = np.random.default_rng(seed)
    if kind == "flat":
        level = rng.uniform(100, 150, (count, 1, 1, 1))
        return np.clip(level + rng.normal(0, 8, (count, 32, 32, 3)), 0, 255).astype(np.uint8)
    return rng.integers(0, 256, (count, 32, 32, 3)).astype(np.uint8)


@pytest.mark.parametrize("nu", [0.1, 0.5])
def test_one_class_network_leaves_about_nu_of_its_training_images_outside(smoke, nu):
    config = smoke.outliers.model_copy(update={"nu": nu, "epochs": 3})
    train, held_out, odd = (synthetic_images(400, "flat", 0), synthetic_images(400, "flat", 1),
                            synthetic_images(100, "noise", 2))
    train_scores, scores, history = outliers.SCORERS["one_class_nn"](config, train, np.concatenate([held_out, odd]), {})
    assert history["radius_squared"].iloc[-1] < history["radius_squared"].iloc[0]  # the sphere shrinks as it trains
    assert outliers.outside_fraction(train_scores) == pytest.approx(nu, abs=0.02)
    assert outliers.outside_fraction(scores[:400]) == pytest.approx(nu, abs=0.1)  # new images of the same kind
    assert outliers.outside_fraction(scores[400:]) == 1.0  # every noise image is atypical


def test_one_class_svm_on_frozen_features_keeps_the_nu_property(split_artifact, model_artifact, smoke):
    labeled = catalog.read_table(split_artifact, "labeled").images
    config = smoke.outliers.model_copy(update={"scorer": "one_class_svm", "nu": 0.3})
    train_scores, scores, _ = outliers.SCORERS["one_class_svm"](config, labeled, synthetic_images(50, "noise", 3),
                                                             {"split": split_artifact, "model": model_artifact})
    assert outliers.outside_fraction(train_scores) == pytest.approx(0.3, abs=0.05)
    assert len(scores) == 50


def test_the_stage_writes_a_split_without_the_atypical_images(split_artifact, smoke, tmp_path):
    manifest = outliers.STAGE.execute(smoke.outliers.model_copy(update={"nu": 0.5}), {"split": split_artifact}, tmp_path / "out")
    out = tmp_path / "out"
    verify(out)
    scores = pd.read_parquet(out / "scores.parquet")
    unlabeled = catalog.read_table(split_artifact, "unlabeled")
    assert list(scores["id"]) == list(unlabeled.ids)
    assert (scores["kept"] == (scores["score"] >= 0)).all()
    kept = catalog.read_table(out, "unlabeled")
    assert list(kept.ids) == list(scores.loc[scores["kept"], "id"])
    assert list(catalog.read_table(out, "unlabeled_audit").ids) == list(kept.ids)
    for name in ("labeled", "validation", "test"):  # the input's own tables, byte for byte
        assert manifest["files"][f"{name}.parquet"]["sha256"] == json.loads(
            (split_artifact / "manifest.json").read_text())["files"][f"{name}.parquet"]["sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kept"] == len(kept) and metrics["kept"] + metrics["dropped"] == len(unlabeled)
    assert metrics["train_outside_fraction"] == pytest.approx(0.5, abs=0.05)
    assert {p.name for p in (out / "figures").iterdir()} == {"typical_and_atypical.png", "score_histogram.png",
                                                              "kept_per_class.png"}
    history = pd.read_parquet(out / "history.parquet")
    assert list(history["epoch"]) == [1, 2] and {"loss", "outside_fraction", "radius_squared"} <= set(history.columns)


@pytest.mark.parametrize("nu", [0, 1.5, -0.1])
def test_nu_outside_the_unit_interval_is_refused(nu):
    with pytest.raises(ConfigError, match=r"outliers\.nu"):
        load_pipeline_config("smoke", [{"outliers": {"nu": nu}}])


def test_the_svm_scorer_needs_a_model(split_artifact, smoke, tmp_path):
    config = smoke.outliers.model_copy(update={"scorer": "one_class_svm"})
    with pytest.raises(ValueError, match=r"one_class_svm.*--input model=DIR.*outliers.scorer=one_class_nn"):
        outliers.STAGE.execute(config, {"split": split_artifact}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_the_one_class_network_trains_on_the_jax_backend(split_artifact, smoke, tmp_path):
    (tmp_path / "config.json").write_text(smoke.outliers.model_dump_json())
    subprocess.run([sys.executable, "-m", "stages.outliers", "--config", str(tmp_path / "config.json"),
                    "--input", f"split={split_artifact}", "--output", str(tmp_path / "out")],
                   env={**os.environ, "KERAS_BACKEND": "jax"}, check=True, capture_output=True)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train_outside_fraction"] == pytest.approx(smoke.outliers.nu, abs=0.02)
