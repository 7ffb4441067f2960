"""The consistency flow on the smoke preset: FixMatch and FreeMatch continuing from the baseline."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import consistency_grid
from pipelines.consistency import consistency_pipeline
from stages.lib.artifacts import read_manifest
from stages.lib.config import ConfigError


@pytest.fixture(scope="module")
def comparison(prefect, archive, smoke):
    warm = smoke.model_copy(update={"consistency": smoke.consistency.model_copy(update={"warm_start": True})})
    return consistency_pipeline(config=warm, methods=["fixmatch", "freematch"], data=str(archive))


def runs_under(run_id):
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")


def test_one_run_per_method_starting_from_the_flows_baseline(comparison):
    flow_stages = {run.data.tags["ssl.stage"]: run for run in runs_under(comparison["mlflow_run_id"])
                   if "ssl.stage" in run.data.tags}
    baseline = Path(flow_stages["baseline"].data.tags["ssl.artifact_path"])
    methods = {run.info.run_name: run for run in runs_under(comparison["mlflow_run_id"]) if "ssl.stage" not in run.data.tags}
    assert set(methods) == {"fixmatch", "freematch"}
    for name, run in methods.items():
        stages = {child.data.tags["ssl.stage"]: child for child in runs_under(run.info.run_id)}
        assert set(stages) == {"consistency", "evaluate"}, name
        assert run.info.status == "FINISHED"
        assert run.data.params["consistency.method"] == name
        assert run.data.metrics["test_accuracy"] == stages["evaluate"].data.metrics["test_accuracy"]
        assert "mask_rate" in MlflowClient().get_run(stages["consistency"].info.run_id).data.metrics
        parents = read_manifest(Path(stages["consistency"].data.tags["ssl.artifact_path"]))["parents"]
        assert parents["model"]["digest"] == read_manifest(baseline)["digest"]


def test_comparison_table_and_parent_metrics(comparison):
    assert [row["method"] for row in comparison["table"]] == ["fixmatch", "freematch"]
    parent = MlflowClient().get_run(comparison["mlflow_run_id"])
    assert parent.data.metrics["freematch_test_accuracy"] == comparison["table"][-1]["test_accuracy"]
    assert parent.data.metrics["baseline_test_accuracy"] == comparison["baseline_test_accuracy"]
    text = MlflowClient().download_artifacts(parent.info.run_id, "comparison.md")
    assert "| method | warm_start |" in Path(text).read_text()


def test_an_unknown_method_fails_before_any_work(smoke):
    with pytest.raises(ConfigError, match=r"the consistency methods \(mixmatch\)"):
        consistency_grid(smoke.consistency, ["fixmatch", "mixmatch"])
