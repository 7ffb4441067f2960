"""The encoder-pretraining flow on the smoke preset: both objectives, both fine-tuning modes."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import pretraining_grid
from pipelines.pretraining import pretraining_pipeline
from stages.lib.config import ConfigError


@pytest.fixture(scope="module")
def comparison(prefect, archive, smoke):
    return pretraining_pipeline(config=smoke, objectives=["autoencoder", "simclr"], modes=["two_step", "joint"],
                                data=str(archive))


def runs_under(run_id):
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")


def test_one_run_per_configuration_with_its_stages(comparison):
    configurations = {run.info.run_name: run for run in runs_under(comparison["mlflow_run_id"])
                      if "ssl.stage" not in run.data.tags}
    assert set(configurations) == {"autoencoder two_step", "autoencoder joint", "simclr two_step", "simclr joint"}
    for name, run in configurations.items():
        stages = {child.data.tags["ssl.stage"]: child for child in runs_under(run.info.run_id)}
        assert set(stages) == {"pretrain", "fine_tune", "evaluate"}, name
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_accuracy"] == stages["evaluate"].data.metrics["test_accuracy"]
        # the joint mode comes second: it reuses the objective's cached encoder
        assert stages["pretrain"].data.tags["ssl.cached"] == ("true" if name.endswith("joint") else "false")


def test_pretraining_evidence_is_in_mlflow(comparison):
    client = MlflowClient()
    for name, metric, figure in (("autoencoder two_step", "psnr", "reconstructions.png"),
                                 ("simclr two_step", "pair_accuracy", "similarity_matrix.png")):
        configuration = next(run for run in runs_under(comparison["mlflow_run_id"]) if run.info.run_name == name)
        pretrain = next(run for run in runs_under(configuration.info.run_id) if run.data.tags["ssl.stage"] == "pretrain")
        assert [m.step for m in client.get_metric_history(pretrain.info.run_id, metric)] == [1]
        assert [m.step for m in client.get_metric_history(pretrain.info.run_id, "probe_accuracy")] == [1]
        figures = {Path(f.path).name for f in client.list_artifacts(pretrain.info.run_id, "figures")}
        assert {figure, "pretraining_curves.png"} <= figures


def test_comparison_table_and_parent_metrics(comparison):
    assert [(row["objective"], row["mode"]) for row in comparison["table"]] == [
        ("autoencoder", "two_step"), ("autoencoder", "joint"), ("simclr", "two_step"), ("simclr", "joint")]
    parent = MlflowClient().get_run(comparison["mlflow_run_id"])
    assert parent.data.metrics["simclr_joint_test_accuracy"] == comparison["table"][-1]["test_accuracy"]
    text = MlflowClient().download_artifacts(parent.info.run_id, "comparison.md")
    assert "| objective | mode |" in Path(text).read_text()


def test_an_unknown_objective_or_mode_fails_before_any_work(smoke):
    with pytest.raises(ConfigError, match=r"the pretraining grid \(objective vae\)"):
        pretraining_grid(smoke, ["simclr", "vae"], None)
    with pytest.raises(ConfigError, match=r"the pretraining grid \(mode both\)"):
        pretraining_grid(smoke, None, ["both"])
