"""bench/self_training.py: the configuration chosen on validation pooled over seeds, runs of earlier results."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the script imports its sibling consistency_budget
spec = importlib.util.spec_from_file_location("self_training_bench", BENCH / "self_training.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def runs(rows: list[tuple]) -> pd.DataFrame:
    """(seed, threshold, val, test) rows of 4-iteration runs, against a 40% baseline."""
    table = pd.DataFrame(rows, columns=["seed", "threshold", "val_accuracy", "test_accuracy"])
    return table.assign(iterations=4, baseline_test_accuracy=0.40, samples_used=1000, train_seconds=600.0,
                        gain_pts=lambda t: 100 * (t["test_accuracy"] - 0.40))


def test_the_configuration_is_the_best_on_validation_averaged_over_the_seeds():
    # seed 0 alone would choose 0.6; over both seeds 0.85 is better; 0.9 is left out: seed 1 never ran it
    table = runs([(0, 0.6, 0.46, 0.45), (0, 0.85, 0.455, 0.46), (0, 0.9, 0.50, 0.40),
                  (1, 0.6, 0.44, 0.46), (1, 0.85, 0.452, 0.47)])
    pooled = bench.pool(table, seeds=2)
    assert list(pooled["threshold"]) == [0.6, 0.85]
    chosen = bench.choose(pooled)
    assert (chosen["threshold"], chosen["iterations"]) == (0.85, 4)
    assert chosen["val_accuracy_mean"] == pytest.approx(0.4535)
    assert chosen["gain_pts_mean"] == pytest.approx(6.5)
    assert chosen["seed_test_accuracy"] == 0.3411  # the seed study's 0.85 row beside ours


def test_no_configuration_run_by_every_seed_is_an_error():
    with pytest.raises(LookupError, match="no configuration has a run of each of the 2 seeds"):
        bench.pool(runs([(0, 0.6, 0.46, 0.45), (1, 0.85, 0.45, 0.46)]), seeds=2)


def test_an_earlier_results_file_gives_its_runs_in_either_layout(tmp_path):
    provenance = {"baseline_train_seconds": 900.0, "flow_seconds": 5000.0, "sweep": "s", "mlflow_run_id": "r"}
    sweep_row = {"threshold": 0.85, "iterations": 4, "val_accuracy": 0.455, "test_accuracy": 0.46, "vs_baseline_pts": 6.0,
                 "best_iteration": 4, "samples_used": 4700, "pseudo_label_accuracy": 0.92, "train_seconds": 4000.0}
    per_seed = [{"seed": 0, "baseline_test_accuracy": 0.40, "self_training_test_accuracy": 0.46, "gain_pts": 6.0,
                 "val_accuracy": 0.455, "best_iteration": 4, "samples_used": 4700, "train_seconds": 4000.0, **provenance},
                {"seed": 1, "baseline_test_accuracy": 0.41, "self_training_test_accuracy": 0.47, "gain_pts": 6.0,
                 "val_accuracy": 0.451, "best_iteration": 4, "samples_used": 4800, "train_seconds": 4100.0, **provenance}]
    before = tmp_path / "before.json"  # written before the results listed every run
    before.write_text(json.dumps({"chosen_on_validation": {"threshold": 0.85, "iterations": 4},
                                  "per_seed": per_seed, "sweep": [sweep_row]}))
    found = bench.prior_runs(before)
    assert list(found.columns) == bench.RUN_COLUMNS
    assert sorted(zip(found["seed"], found["threshold"])) == [(0, 0.85), (1, 0.85)]  # the sweep's row once
    assert found.set_index("seed").loc[1, "test_accuracy"] == 0.47
    after = tmp_path / "after.json"
    after.write_text(json.dumps({"runs": found.to_dict("records")}))
    again = bench.prior_runs(after)
    pd.testing.assert_frame_equal(again.drop(columns="source"), found.drop(columns="source"))
    assert set(again["source"]) == {str(after)}


def test_a_seed_sweeps_only_what_neither_the_store_nor_a_prior_file_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_PIPELINE_HOME", str(tmp_path / "home"))  # an empty store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prior = tmp_path / "prior.json"
    held = runs([(1, 0.6, 0.45, 0.46), (1, 0.85, 0.451, 0.47), (2, 0.6, 0.45, 0.45)]).assign(
        best_iteration=4, pseudo_label_accuracy=0.9, baseline_train_seconds=900.0, flow_seconds=4000.0, sweep="s",
        mlflow_run_id="r", source="gone")
    prior.write_text(json.dumps({"runs": held[bench.RUN_COLUMNS].to_dict("records")}))
    swept = []
    monkeypatch.setattr(bench, "run_self_training", lambda preset, seed, thresholds, iterations, start, sets:
                        swept.append((seed, thresholds, iterations)))
    args = argparse.Namespace(preset="quick", set=[], home=tmp_path / "home", baselines_home=None)
    grid = [(0.6, 4), (0.85, 4), (0.9, 4)]
    held = bench.prior_runs(prior)
    found = bench.sweep_seed(args, 1, grid, held[held["seed"] == 1])
    assert swept == [(1, [0.9], [4])]  # 0.6 and 0.85 of seed 1 come from the prior file
    assert sorted(found["threshold"]) == [0.6, 0.85] and set(found["source"]) == {str(prior)}
    bench.sweep_seed(args, 2, grid, held[held["seed"] == 2])
    assert swept[1:] == [(2, [0.85], [4]), (2, [0.9], [4])]
    nothing = pd.DataFrame(columns=bench.RUN_COLUMNS)
    assert bench.sweep_seed(args, 0, grid, nothing).empty  # an empty store and no prior file: the whole grid
    assert swept[3:] == [(0, [0.6], [4]), (0, [0.85], [4]), (0, [0.9], [4])]
