"""The self-training flow on a two-point grid, against the embedded Prefect and MLflow defaults."""

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import sweep_grid
from pipelines.self_training import self_training_pipeline
from stages.lib.config import ConfigError


@pytest.fixture(scope="module")
def sweep(prefect, archive, smoke):
    # one threshold, two iteration counts: the second point reuses the first one's pseudo_label stage
    return self_training_pipeline(config=smoke, thresholds=[0.01], iterations=[1, 2], data=str(archive))


def sweep_runs(sweep):
    client = MlflowClient()
    experiment_id = client.get_run(sweep["mlflow_run_id"]).info.experiment_id
    return client.search_runs([experiment_id], f"tags.`ssl.sweep` = '{sweep['sweep']}'")


def children(runs, parent_id):
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_id]


def test_every_run_of_the_sweep_shares_its_tag_and_nests(sweep):
    runs = sweep_runs(sweep)
    top = children(runs, sweep["mlflow_run_id"])
    assert sorted(run.data.tags.get("ssl.stage", run.info.run_name) for run in top) == [
        "baseline", "evaluate", "split", "threshold=0.01 iterations=1", "threshold=0.01 iterations=2"]
    configurations = [run for run in top if "ssl.stage" not in run.data.tags]
    for configuration in configurations:
        stages = {run.data.tags["ssl.stage"]: run for run in children(runs, configuration.info.run_id)}
        assert set(stages) == {"pseudo_label", "self_train", "evaluate"}
        assert configuration.info.status == "FINISHED"
        assert configuration.data.metrics["test_accuracy"] == stages["evaluate"].data.metrics["test_accuracy"]
        iterations = children(runs, stages["self_train"].info.run_id)
        expected = int(configuration.data.params["self_training.iterations"])
        assert sorted(int(run.data.tags["ssl.iteration"]) for run in iterations) == list(range(1, expected + 1))
    # 1 parent + 3 shared stages + 2 configurations x 3 stages + 1 + 2 iteration runs
    assert len(runs) == 1 + 3 + 2 + 6 + 3


def test_second_configuration_reuses_the_pseudo_labels(sweep):
    runs = sweep_runs(sweep)
    labelling = sorted((run for run in runs if run.data.tags.get("ssl.stage") == "pseudo_label"),
                       key=lambda run: run.info.start_time)
    assert [run.data.tags["ssl.cached"] for run in labelling] == ["false", "true"]


def test_metrics_are_keyed_by_iteration(sweep):
    client = MlflowClient()
    runs = sweep_runs(sweep)
    two = next(run for run in runs if run.data.tags.get("ssl.stage") == "self_train"
               and run.data.params["iterations"] == "2")
    steps = sorted(m.step for m in client.get_metric_history(two.info.run_id, "val_accuracy"))
    assert steps == [0, 1, 2]
    assert sorted(m.step for m in client.get_metric_history(two.info.run_id, "selected")) == [0, 1, 2]
    iteration = children(runs, two.info.run_id)[0]
    assert [m.step for m in client.get_metric_history(iteration.info.run_id, "val_accuracy")] == [1]  # its one epoch
    assert "pseudo_label_accuracy" in iteration.data.metrics


def test_comparison_table_and_figures_are_written_and_logged(sweep):
    report = Path(sweep["report"])
    table = pd.read_parquet(report / "comparison.parquet")
    assert table[["threshold", "iterations"]].values.tolist() == [[0.01, 1], [0.01, 2]]
    assert table["samples_used"].tolist() == [200, 200]  # smoke: 2 unlabeled images per class, all selected
    markdown = (report / "comparison.md").read_text()
    assert "| threshold | iterations |" in markdown and markdown.count("\n| 0.01 |") == 2
    logged = {Path(f.path).name for f in MlflowClient().list_artifacts(sweep["mlflow_run_id"], "comparison/figures")}
    assert logged == {"iterations.png", "comparison.png"}
    parent = MlflowClient().get_run(sweep["mlflow_run_id"])
    assert parent.data.metrics["best_val_accuracy"] == table["val_accuracy"].max()


def test_a_threshold_outside_zero_one_fails_before_any_work(smoke):
    with pytest.raises(ConfigError, match=r"the sweep grid \(threshold 1.5, iterations 4\)"):
        sweep_grid(smoke.self_training.model_copy(update={"iterations": 4}), [0.6, 1.5], None)
    assert [point.selection.threshold for point in sweep_grid(smoke.self_training, [0.6, 0.9], [3])] == [0.6, 0.9]
