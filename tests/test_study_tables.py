"""bench/study_tables.py: several studies' reports into one table."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

spec = importlib.util.spec_from_file_location("study_tables", Path(__file__).parents[1] / "bench" / "study_tables.py")
study_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_tables)


def report(directory: Path, rows: list[tuple], recorded: bool = True) -> Path:
    """A report directory whose runs.parquet holds (experiment, unlabeled, seed, test accuracy) rows."""
    directory.mkdir()
    table = pd.DataFrame(rows, columns=["experiment", "unlabeled", "seed", "test_accuracy"]).assign(
        val_accuracy=0.4, train_minutes=10.0, run_id="r")
    if recorded:
        table = table.assign(preset="quick", overrides="none")
    table.to_parquet(directory / "runs.parquet", index=False)
    return directory


def test_seeds_of_several_reports_are_put_together_and_a_shared_baseline_counted_once(tmp_path):
    first = report(tmp_path / "seed0", [("baseline", "none", 0, 0.40), ("simclr_joint", "all", 0, 0.43)], recorded=False)
    second = report(tmp_path / "seed1", [("baseline", "none", 0, 0.40), ("baseline", "none", 1, 0.42),
                                         ("simclr_joint", "all", 1, 0.45)])
    rows = study_tables.report_rows([first, second])
    assert sorted(map(tuple, rows[["experiment", "seed"]].to_numpy())) == [
        ("baseline", 0), ("baseline", 1), ("simclr_joint", 0), ("simclr_joint", 1)]
    assert set(rows["overrides"]) == {"not recorded", "none"}
    text = study_tables.markdown(rows, "cmd")
    assert "| simclr_joint | all | 2 | 44.00% ± 1.41% | +3.00 |" in text


def test_reports_that_disagree_on_a_run_are_refused(tmp_path):
    amd = report(tmp_path / "amd", [("baseline", "none", 0, 0.4080)])
    intel = report(tmp_path / "intel", [("baseline", "none", 0, 0.4052)])
    with pytest.raises(SystemExit, match=r"'seed': 0\} differs between reports: .*amd: 40.80%; .*intel: 40.52%"):
        study_tables.report_rows([amd, intel])
    with pytest.raises(SystemExit, match="no such file"):
        study_tables.report_rows([tmp_path / "nowhere"])


def test_filtering_is_judged_on_the_training_seeds_both_sets_hold(tmp_path):
    unfiltered = report(tmp_path / "all", [("baseline", "none", 0, 0.40), ("simclr_joint", "all", 0, 0.43),
                                           ("simclr_joint", "all", 1, 0.45), ("autoencoder_joint", "all", 0, 0.41)])
    filtered = report(tmp_path / "filtered", [("simclr_joint", "filtered", 0, 0.41), ("simclr_joint", "filtered", 2, 0.50),
                                              ("autoencoder_joint", "filtered", 1, 0.44)])
    rows = study_tables.report_rows([unfiltered, filtered])
    # seed 0 alone pairs for SimCLR (0.41 - 0.43); the means over all seeds (45.5% vs 44.0%) would say it helped.
    # The autoencoder ran the two sets on different seeds: no verdict.
    assert study_tables.filtering_effect(rows) == [
        "- simclr_joint: filtered minus all -2.00 pts on test (training seed 0 alone: too few seeds to tell it from "
        "seed-to-seed noise)"]
    assert "## Filtering\n\n- simclr_joint: filtered minus all -2.00" in study_tables.markdown(rows, "cmd")
    alone = study_tables.report_rows([unfiltered])
    assert study_tables.NO_FILTERING_EFFECT in study_tables.markdown(alone, "cmd")
    three_seeds = pd.DataFrame({"experiment": "self_training", "unlabeled": ["all"] * 3 + ["filtered"] * 3,
                                "seed": [0, 1, 2] * 2, "test_accuracy": [0.46, 0.47, 0.46, 0.45, 0.475, 0.47]})
    assert study_tables.filtering_effect(three_seeds) == [  # changes -1, +0.5, +1: the seeds disagree
        "- self_training: no clear effect of filtering (+0.17 ± 1.04 pts on test, mean ± std over training seeds "
        "0, 1, 2; paired t-test p = 0.81)"]
    consistent = three_seeds.assign(test_accuracy=[0.46, 0.47, 0.46, 0.44, 0.45, 0.445])
    assert study_tables.filtering_effect(consistent) == [  # changes -2, -2, -1.5
        "- self_training: filtering hurt (-1.83 ± 0.29 pts on test, mean ± std over training seeds 0, 1, 2; "
        "paired t-test p = 0.01)"]
    identical = consistent.assign(test_accuracy=[0.46, 0.47, 0.46, 0.44, 0.45, 0.44])
    assert "filtering hurt (-2.00 ± 0.00 pts" in study_tables.filtering_effect(identical)[0]  # no spread at all


def test_self_training_at_two_thresholds_is_two_configurations_not_a_disagreement(tmp_path):
    study = report(tmp_path / "thresholds", [("self_training", "all", 1, 0.45), ("self_training", "all", 1, 0.47),
                                             ("self_training", "filtered", 1, 0.44), ("self_training", "filtered", 1, 0.48)])
    table = pd.read_parquet(study / "runs.parquet").assign(threshold=[0.6, 0.85, 0.6, 0.85])
    table.to_parquet(study / "runs.parquet", index=False)
    rows = study_tables.report_rows([study])
    assert len(rows) == 4
    text = study_tables.markdown(rows, "cmd")
    assert "| self_training, threshold 0.6 | all | 1 | 45.00% (one seed) |" in text
    assert "- self_training, threshold 0.85: filtered minus all +1.00 pts on test" in text
