"""The study flow on the smoke preset (baseline and self-training, all and filtered unlabeled data) and its report."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.entities import RunInfo
from mlflow.tracking import MlflowClient

from pipelines.config import study_grid
from pipelines.report import (
    collect_figures,
    configuration_table,
    experiment_label,
    flow_duration,
    is_configuration_run,
    mean_and_std,
    stage_minutes,
    summary_table,
    threshold_of,
    write_report,
)
from pipelines.study import study_pipeline

FIGURE_LINK = re.compile(r"!\[[^]]*\]\(figures/([^)]+)\)")  # the file of each figure a report.md shows


def smoke_study(smoke, archive) -> dict:
    return study_pipeline(config=smoke, seeds=[0, 1], experiments=["baseline", "self_training"], data=str(archive))


@pytest.fixture(scope="module")
def study(prefect, fresh_home, archive, smoke):
    return smoke_study(smoke, archive)


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    """``ssl-pipeline report`` as a user runs it after the flow: a new process that finds the store from
    the home alone (no ``MLFLOW_TRACKING_URI``)."""
    output = tmp_path_factory.mktemp("report")
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    subprocess.run([sys.executable, "-m", "pipelines.cli", "report", study["study"], "--output", str(output)],
                   env=env, check=True)
    return output / "report.md"


def test_one_configuration_run_per_seed_experiment_and_unlabeled_set(study):
    client = MlflowClient()
    parent = client.get_run(study["mlflow_run_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.`ssl.study` = '{study['study']}'")
    configurations = {(r.data.tags["ssl.experiment"], r.data.tags["ssl.unlabeled"], r.data.tags["ssl.seed"])
                      for r in runs if is_configuration_run(r)}
    assert configurations == {("baseline", "none", "0"), ("baseline", "none", "1"),
                              *((("self_training", u, s) for u in ("all", "filtered") for s in ("0", "1")))}
    stages = {r.data.tags["ssl.stage"] for r in runs if "ssl.stage" in r.data.tags}
    assert {"split", "outliers", "baseline", "pseudo_label", "self_train", "evaluate"} <= stages
    assert len(study["table"]) == 6


def test_the_filtered_runs_train_on_the_kept_images_only(study):
    client = MlflowClient()
    parent = client.get_run(study["mlflow_run_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.`ssl.study` = '{study['study']}' and "
                              "tags.`ssl.stage` = 'pseudo_label'")
    rows = {r.data.tags["ssl.unlabeled"]: r for r in runs if r.data.tags["ssl.seed"] == "0"}
    outliers = next(r for r in client.search_runs([parent.info.experiment_id], f"tags.`ssl.study` = '{study['study']}' and "
                                                  "tags.`ssl.stage` = 'outliers'"))
    kept = outliers.data.metrics["kept"]
    assert 0 < kept < 200  # smoke: 200 unlabeled images, nu = 0.1
    # smoke's threshold (0.01) selects every image it is given
    assert rows["all"].data.metrics["selected"] == 200
    assert rows["filtered"].data.metrics["selected"] == kept


def test_the_report_holds_the_numbers_mlflow_holds(study, report):
    client = MlflowClient()
    parent = client.get_run(study["mlflow_run_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.`ssl.study` = '{study['study']}'")
    tests = pd.DataFrame([{"experiment": experiment_label(r.data.tags["ssl.experiment"], threshold_of(r) or float("nan")),
                           "unlabeled": r.data.tags["ssl.unlabeled"], "test": r.data.metrics["test_accuracy"],
                           "single": r.data.metrics["test_accuracy_single_view"]}
                          for r in runs if is_configuration_run(r)])
    text = report.read_text()
    for (experiment, unlabeled), values in tests.groupby(["experiment", "unlabeled"]):
        line = next(line for line in text.splitlines() if line.startswith(f"| {experiment} | {unlabeled} |"))
        assert f"| {values['test'].mean():.2%} ± {values['test'].std():.2%} | {values['single'].mean():.2%} |" in line
    # smoke's threshold, which the seed did not run: its best result beside ours
    assert "| self_training, threshold 0.01 | all | 2 |" in text and "34.11% (threshold 0.85" in text
    assert "Self-training ran at one threshold (0.01)" in text
    assert "Preset `smoke` (changed: `none`)" in text
    assert set(pd.read_parquet(report.parent / "runs.parquet")[["preset", "overrides"]].itertuples(index=False)) == {
        ("smoke", "none")}
    assert re.search(r"- self_training, threshold 0.01: (filtering helped|filtering hurt|no clear effect of filtering) "
                     r"\([+-]\d+\.\d\d ± \d+\.\d\d pts on test, mean ± std over training seeds \d+, \d+; "
                     r"paired t-test p = \d\.\d\d\)", text)
    outliers = next(r for r in runs if r.data.tags.get("ssl.stage") == "outliers").data.metrics
    assert (f"- `one_class_nn`, nu 0.10: kept {outliers['kept']:.0f} of 200 unlabeled images "
            f"({outliers['kept_fraction']:.1%}); {outliers['train_outside_fraction']:.1%} of the labeled images") in text
    assert "the seed's 89.8% kept is nu = 0.1 here" in text
    assert (report.parent / "report.html").read_text().count("<tr>") == 4  # header + 3 rows
    images = FIGURE_LINK.findall(text)
    assert {"evaluate-baseline-network.png", "outliers-any-typical_and_atypical.png"} <= set(images)
    assert all((report.parent / "figures" / name).is_file() for name in images)
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= logged


def test_a_study_served_from_the_cache_reports_the_same_figures(study, report, smoke, archive, tmp_path):
    again = smoke_study(smoke, archive)
    client = MlflowClient()
    parent = client.get_run(again["mlflow_run_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.`ssl.study` = '{again['study']}'")
    assert {r.data.tags["ssl.cached"] for r in runs if "ssl.stage" in r.data.tags} == {"true"}
    rerun_report = write_report(again["study"], tmp_path)
    assert FIGURE_LINK.findall(rerun_report.read_text()) == FIGURE_LINK.findall(report.read_text())


def test_self_training_at_two_thresholds_has_a_run_a_row_and_curves_each_and_the_seed_s_figure_5(study, smoke, archive,
                                                                                                  tmp_path):
    """One seed and set, so only the new threshold trains: the rest comes from the module's study's cache.
    A softmax over 100 classes peaks at 0.01 or more, so both thresholds select every image of smoke's barely
    trained models."""
    again = study_pipeline(config=smoke, seeds=[0], experiments=["self_training"], unlabeled=["all"],
                           thresholds=[0.005, 0.01], data=str(archive))
    assert {(row["experiment"], row["threshold"]) for row in again["table"]} == {
        ("baseline", None), ("self_training", 0.005), ("self_training", 0.01)}
    assert {"all_self_training_t0.005_seed0_test_accuracy", "all_self_training_t0.01_seed0_test_accuracy"} <= set(again)
    text = write_report(again["study"], tmp_path).read_text()
    for threshold in ("0.005", "0.01"):
        row = next(r for r in again["table"] if str(r["threshold"]) == threshold)
        assert f"| self_training, threshold {threshold} | all | 1 | {row['test_accuracy']:.2%} (one seed) |" in text
    images = FIGURE_LINK.findall(text)
    assert {"evaluate-self_training-t0.005-learning_curves.png", "evaluate-self_training-t0.01-learning_curves.png",
            "self_train-self_training-t0.005-iterations.png", "self_training-thresholds.png"} <= set(images)
    assert all((tmp_path / "figures" / name).is_file() for name in images)


def test_a_study_without_a_finished_configuration_run_has_an_empty_table():
    """What write_report turns into "has no finished configuration run yet" (a report asked for too early)."""
    running = SimpleNamespace(info=SimpleNamespace(status="RUNNING", run_id="r"),
                              data=SimpleNamespace(tags={"ssl.experiment": "baseline", "ssl.unlabeled": "none", "ssl.seed": "0"},
                                                   params={}, metrics={}))
    assert configuration_table([running]).empty


def test_the_seed_s_result_stands_beside_the_same_threshold():
    table = pd.DataFrame({"experiment": ["self_training"] * 4, "threshold": [0.6, 0.85, 0.9, 0.6],
                          "unlabeled": ["all", "all", "all", "filtered"], "seed": [0] * 4, "test_accuracy": [0.45] * 4,
                          "val_accuracy": [0.44] * 4, "train_minutes": [50.0] * 4})
    assert list(summary_table(table)["seed_study"]) == [
        "29.31% (threshold 0.6, 4 iterations)", "worse than unfiltered (no numbers given)",
        "34.11% (threshold 0.85, 4 iterations)", "too few samples added; no real gain (threshold 0.9)"]


def test_unknown_experiments_and_sets_fail_before_any_work(smoke):
    with pytest.raises(ValueError, match=r"unknown experiment 'mixmatch'.*choose from baseline"):
        study_grid(smoke, None, ["mixmatch"], None)
    with pytest.raises(ValueError, match=r"unknown unlabeled set 'some'"):
        study_grid(smoke, None, None, ["some"])


def test_the_report_gives_a_running_study_its_time_so_far():
    def info(end_time):
        return RunInfo(run_id="r", experiment_id="0", user_id="u", status="RUNNING" if end_time is None else "FINISHED",
                       start_time=1_000_000, end_time=end_time, lifecycle_stage="active")

    assert flow_duration(info(1_000_000 + 90 * 60_000)) == "flow run 90.0 min"
    assert flow_duration(info(None), now_ms=1_000_000 + 12.5 * 60_000) == "flow run still running, 12.5 min so far"


def test_the_report_counts_each_artifact_s_stage_time_once_cached_or_not():
    """Two modes share one pretrain artifact (a second, cached run of it); configuration runs have no digest."""
    def run(tags, seconds=None):
        return SimpleNamespace(data=SimpleNamespace(tags=tags, metrics={} if seconds is None else {"stage_seconds": seconds}))

    runs = [run({"ssl.stage": "split", "ssl.artifact_digest": "a", "ssl.cached": "true"}, 30.0),
            run({"ssl.stage": "pretrain", "ssl.artifact_digest": "b", "ssl.cached": "false"}, 2400.0),
            run({"ssl.stage": "pretrain", "ssl.artifact_digest": "b", "ssl.cached": "true"}, 2400.0),
            run({"ssl.stage": "fine_tune", "ssl.artifact_digest": "c", "ssl.cached": "false"}, 570.0),
            run({"ssl.experiment": "simclr_joint"})]
    assert stage_minutes(runs) == 50.0


def test_the_report_gives_one_seed_no_standard_deviation():
    table = pd.DataFrame({"experiment": ["baseline", "baseline", "simclr_joint"], "unlabeled": ["none", "none", "all"],
                          "seed": [0, 1, 0], "test_accuracy": [0.40, 0.42, 0.3653], "val_accuracy": [0.4, 0.4, 0.36],
                          "train_minutes": [10.0, 10.0, 88.6]})
    summary = summary_table(table)
    cells = {r.experiment: mean_and_std(r.test_mean, r.test_std) for r in summary.itertuples()}
    assert cells == {"baseline": "41.00% ± 1.41%", "simclr_joint": "36.53% (one seed)"}
    # a report written before evaluate recorded the single view has no such column: it shows none
    assert summary["single_view_mean"].isna().all()


def test_a_study_of_a_joint_mode_alone_shows_its_objective_s_pretraining_figures(tmp_path):
    """Both modes of an objective share one pretrain stage: its figures come from whichever ran."""
    class Client:  # the two calls collect_figures makes, over figures/ of each run in `logged`
        def list_artifacts(self, run_id, path):
            return [SimpleNamespace(path=f"figures/{name}") for name in logged[run_id]]

        def download_artifacts(self, run_id, path, directory):
            target = Path(directory) / Path(path).name
            target.write_bytes(run_id.encode())
            return str(target)

    logged = {"pretrain": ["similarity_matrix.png", "pretraining_curves.png"], "baseline": ["learning_curves.png"]}
    runs = [SimpleNamespace(info=SimpleNamespace(run_id="pretrain"),
                            data=SimpleNamespace(tags={"ssl.stage": "pretrain", "ssl.experiment": "simclr_joint"})),
            SimpleNamespace(info=SimpleNamespace(run_id="baseline"),
                            data=SimpleNamespace(tags={"ssl.stage": "evaluate", "ssl.experiment": "baseline"}))]
    found = dict(collect_figures(Client(), runs, tmp_path))
    assert set(found) == {"pretrain-simclr_joint-similarity_matrix.png", "pretrain-simclr_joint-pretraining_curves.png",
                          "evaluate-baseline-learning_curves.png"}
    assert (tmp_path / "pretrain-simclr_joint-similarity_matrix.png").read_bytes() == b"pretrain"
