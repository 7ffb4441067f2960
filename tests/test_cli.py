import json
import subprocess
import sys

import pytest
import yaml

from pipelines.cli import main


def test_stages_lists_every_stage(capsys):
    assert main(["stages"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["split", "outliers", "baseline", "pseudo_label", "self_train", "pretrain", "fine_tune",
                                                   "consistency", "evaluate", "predict"]


def test_config_resolves_preset_file_and_set(capsys, tmp_path):
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("baseline: {epochs: 5}\n")
    assert main(["config", "--preset", "quick", "--config", str(overrides), "--set", "baseline.seed=3"]) == 0
    shown = capsys.readouterr().out
    config = yaml.safe_load(shown)
    assert (config["preset"], config["baseline"]["epochs"], config["baseline"]["seed"]) == ("quick", 5, 3)
    assert "consistency.classifier.time_budget_minutes: `ssl-pipeline run` plans them from budget (30 minutes)" in shown


def test_bad_override_is_a_clear_error(capsys):
    assert main(["config", "--preset", "smoke", "--set", "baseline.epochs=-1"]) == 2
    error = capsys.readouterr().err
    assert "invalid configuration in preset smoke + --set baseline.epochs=-1" in error
    assert "baseline.epochs: Input should be greater than or equal to 1 (got -1)" in error


def test_stage_command_line_in_a_subprocess(tmp_path, archive):
    config = tmp_path / "split.yaml"
    config.write_text("labels_per_class: 2\nval_per_class: 1\nunlabeled_per_class: 1\ntest_per_class: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "stages.split", "--config", str(config), "--input", f"data={archive}",
         "--output", str(tmp_path / "out")], capture_output=True, text=True, check=True)
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert printed["digest"] == manifest["digest"] and manifest["files"]["labeled.parquet"]["rows"] == 200


def test_stage_command_line_rejects_bad_config(tmp_path, capsys):
    config = tmp_path / "split.yaml"
    config.write_text("labels_per_clas: 2\n")
    assert main(["stage", "split", "--config", str(config), "--input", "data=x", "--output", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert f"invalid configuration in {config}" in error and "labels_per_clas: not a field here" in error
    assert not (tmp_path / "o").exists()


def test_self_train_rejects_a_bad_grid_before_any_work(capsys):
    assert main(["self-train", "--preset", "smoke", "--thresholds", "0.5", "1.5"]) == 2
    error = capsys.readouterr().err
    assert "the sweep grid (threshold 1.5, iterations 2)" in error
    assert "selection.threshold: Input should be less than or equal to 1 (got 1.5)" in error


def test_study_rejects_a_bad_threshold_before_any_work(capsys):
    assert main(["study", "--preset", "smoke", "--experiments", "self_training", "--thresholds", "0"]) == 2
    assert "selection.threshold: Input should be greater than 0 (got 0.0)" in capsys.readouterr().err


def test_a_comparison_gives_the_baseline_accuracy_and_the_flow_time_apart(capsys):
    """The minutes are the whole flow's: printed beside the baseline's accuracy, they read as its time."""
    from pipelines.cli import _print_comparison

    _print_comparison({"table": [{"method": "fixmatch", "test_accuracy": 0.4189}], "baseline_test_accuracy": 0.4014,
                       "mlflow_run_id": "0" * 32}, minutes=39.1)
    assert f"baseline test top-1 40.14%; the flow took 39.1 min. MLflow run {'0' * 32}" in capsys.readouterr().out


def test_a_budget_with_no_room_to_train_fails_before_any_work(capsys):
    assert main(["run", "--preset", "smoke", "--minutes", "1"]) == 2
    error = capsys.readouterr().err
    assert "budget: Value error, a budget of 1 minutes leaves nothing to train once reserve_minutes (1.5)" in error


def test_a_mistake_ends_with_one_message_and_a_bug_with_its_traceback(capsys, monkeypatch):
    from pipelines import cli

    assert main(["config", "--preset", "smoke", "--set", "baseline.epochs=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and err.count("error: ") == 1
    monkeypatch.setattr(cli, "command_stages", lambda args: {}["a bug"])
    with pytest.raises(KeyError):  # not caught: Python prints its traceback, exit code 1
        main(["stages"])
