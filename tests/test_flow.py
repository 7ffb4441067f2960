"""The main job on the smoke preset, against the embedded Prefect and MLflow defaults."""

import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import settings, tracking
from pipelines.config import load_pipeline_config
from pipelines.launchers import StageRefused, SubprocessLauncher
from pipelines.semi_supervised import semi_supervised_pipeline
from stages.lib import catalog
from stages.lib.artifacts import read_manifest, sha256_file

pytestmark = pytest.mark.usefixtures("fresh_home")  # the first run must build every stage
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "mlflow-run.png"


@pytest.fixture(scope="module")
def first_run(fresh_home, prefect, archive, smoke):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a smoke flow lasts seconds, not minutes
        return semi_supervised_pipeline(config=smoke, data=str(archive))


def nested_runs(parent_run_id):
    """A flow's stage runs by name: the stage, and for an evaluation the model's ("evaluate fixmatch")."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {run.info.run_name: run for run in runs}


def test_parent_and_nested_runs(first_run):
    client = MlflowClient()
    parent = client.get_run(first_run["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["baseline.epochs"] == "2" and parent.data.tags["ssl.preset"] == "smoke"
    assert "prefect.flow_run_id" in parent.data.tags
    assert parent.data.tags["ssl.overrides"] == "none"
    runs = nested_runs(parent.info.run_id)
    assert set(runs) == {"split", "baseline", "evaluate supervised", "consistency", "evaluate fixmatch"}
    assert all(run.data.tags["ssl.cached"] == "false" for run in runs.values())
    for prefix, name in (("supervised", "evaluate supervised"), ("ssl", "evaluate fixmatch")):
        assert parent.data.metrics[f"{prefix}_test_accuracy"] == first_run[f"{prefix}_test_accuracy"]
        assert runs[name].data.metrics["test_accuracy"] == first_run[f"{prefix}_test_accuracy"]
    assert parent.data.metrics["ssl_val_accuracy"] == runs["consistency"].data.metrics["best_val_accuracy"]
    assert {"supervised_minutes", "ssl_minutes", "total_minutes"} <= set(parent.data.metrics)


def test_parent_run_shows_the_data_and_opens_as_model_training(first_run):
    client = MlflowClient()
    parent = client.get_run(first_run["mlflow_run_id"])
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in parent.inputs.dataset_inputs}
    assert contexts == {"labeled": "training", "unlabeled": "training (unlabeled)", "validation": "validation", "test": "test"}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_per_epoch_metrics_datasets_and_figures(first_run):
    client = MlflowClient()
    runs = nested_runs(first_run["mlflow_run_id"])
    baseline_run = runs["baseline"]
    history = client.get_metric_history(baseline_run.info.run_id, "val_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    datasets = {d.dataset.name: d for d in baseline_run.inputs.dataset_inputs}
    assert set(datasets) == {"labeled", "validation"}
    assert {d.dataset.name for d in runs["evaluate supervised"].inputs.dataset_inputs} == {"test"}
    assert {d.dataset.name for d in runs["split"].inputs.dataset_inputs} == {"cifar-100-python.tar.gz"}
    figures = {Path(f.path).name for f in client.list_artifacts(runs["evaluate supervised"].info.run_id, "figures")}
    assert figures == {"learning_curves.png", "confusion_matrix.png", "network.png"}


def test_logged_model_loads_through_pyfunc_and_agrees_with_keras(first_run):
    run_id = nested_runs(first_run["mlflow_run_id"])["baseline"].info.run_id
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    images = catalog.read_table(Path(first_run["artifacts"]["split"]), "test").images[:16].astype("float32")
    served = np.asarray(pyfunc.predict(images))
    trained = keras.saving.load_model(Path(first_run["artifacts"]["supervised_model"]) / "model.keras")
    assert np.array_equal(served.argmax(axis=1), trained.predict(images, verbose=0).argmax(axis=1))


def test_parent_run_samples_system_metrics(first_run):
    metrics = MlflowClient().get_run(first_run["mlflow_run_id"]).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)


def test_system_metrics_can_be_turned_off(first_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    client = MlflowClient()
    experiment_id = client.get_run(first_run["mlflow_run_id"]).info.experiment_id
    sampled = {}
    for enabled in ("true", "false"):
        monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", enabled)
        run_id = client.create_run(experiment_id).info.run_id
        with tracking.system_metrics(run_id):
            time.sleep(2.5)
        sampled[enabled] = any(key.startswith("system/") for key in client.get_run(run_id).data.metrics)
    assert sampled == {"true": True, "false": False}


def test_the_better_classifier_on_validation_is_the_registered_champion(first_run):
    client = MlflowClient()
    name = settings.registered_model_name()
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION)
    runs = nested_runs(first_run["mlflow_run_id"])
    trained = {"baseline": "supervised_model", "consistency": "ssl_model"}
    # of equal accuracies the older version, the baseline's
    stage = max(trained, key=lambda stage: (runs[stage].data.metrics["best_val_accuracy"], stage == "baseline"))
    model = Path(first_run["artifacts"][trained[stage]])
    assert champion.run_id == runs[stage].info.run_id
    assert first_run["champion"] == f"models:/{name}@champion (version {champion.version}, {stage})"
    assert champion.tags["ssl.artifact_digest"] == read_manifest(model)["digest"]
    assert float(champion.tags["val_accuracy"]) == runs[stage].data.metrics["best_val_accuracy"]
    images = catalog.read_table(Path(first_run["artifacts"]["split"]), "test").images[:16].astype("float32")
    served = np.asarray(mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}").predict(images))
    trained = keras.saving.load_model(model / "model.keras")
    assert np.array_equal(served.argmax(axis=1), trained.predict(images, verbose=0).argmax(axis=1))


def test_champion_is_the_best_on_its_validation_set_and_of_equals_the_older(first_run, tmp_path):
    client = MlflowClient()
    name = "champion-rule"
    client.create_registered_model(name)
    for accuracy, validation in [(0.3, "split-a"), (0.5, "split-a"), (0.5, "split-a"), (0.9, "split-b")]:
        version = client.create_model_version(name, source=str(tmp_path)).version
        client.set_model_version_tag(name, version, "val_accuracy", str(accuracy))
        client.set_model_version_tag(name, version, tracking.TAG_VALIDATION, validation)
    assert tracking.promote_champion(name, "split-a") == 2
    assert int(client.get_model_version_by_alias(name, tracking.CHAMPION).version) == 2
    assert tracking.promote_champion(name, "split-b") == 4


def test_rerun_hits_the_cache_for_every_stage(first_run, archive, smoke):
    second = semi_supervised_pipeline(config=smoke, data=str(archive))
    assert second["artifacts"] == first_run["artifacts"]
    assert second["ssl_test_accuracy"] == first_run["ssl_test_accuracy"]
    first_runs = nested_runs(first_run["mlflow_run_id"])
    for stage, run in nested_runs(second["mlflow_run_id"]).items():
        assert run.data.tags["ssl.cached"] == "true", stage
        assert run.data.tags["ssl.cached_from_run"] == first_runs[stage].info.run_id


def test_changing_one_stage_reruns_only_it_and_what_follows(first_run, archive, smoke):
    changed = smoke.model_copy(update={"evaluate": smoke.evaluate.model_copy(update={"batch_size": 7})})
    result = semi_supervised_pipeline(config=changed, data=str(archive))
    runs = nested_runs(result["mlflow_run_id"])
    assert {stage: run.data.tags["ssl.cached"] for stage, run in runs.items()} == {
        "split": "true", "baseline": "true", "evaluate supervised": "false", "consistency": "true", "evaluate fixmatch": "false"}
    assert result["artifacts"]["supervised_evaluation"] != first_run["artifacts"]["supervised_evaluation"]
    assert MlflowClient().get_run(result["mlflow_run_id"]).data.tags["ssl.overrides"] == "evaluate.batch_size=7"
    assert result["ssl_test_accuracy"] == pytest.approx(first_run["ssl_test_accuracy"])


def test_deleted_artifact_is_rebuilt_not_trusted(first_run, archive, smoke):
    import shutil

    evaluation = Path(first_run["artifacts"]["ssl_evaluation"])
    shutil.rmtree(evaluation)
    result = semi_supervised_pipeline(config=smoke, data=str(archive))
    assert Path(result["artifacts"]["ssl_evaluation"]) == evaluation and (evaluation / "manifest.json").is_file()
    assert nested_runs(result["mlflow_run_id"])["evaluate fixmatch"].data.tags["ssl.cached"] == "false"


def test_bad_archive_fails_the_flow_and_the_parent_run(prefect, tmp_path, smoke):
    bad = tmp_path / "cifar-100-python.tar.gz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(Exception, match="is not the official cifar-100-python.tar.gz|truncated"):
        semi_supervised_pipeline(config=smoke, data=str(bad))
    client = MlflowClient()
    latest = client.search_runs([client.get_experiment_by_name(settings.experiment_name()).experiment_id],
                                "tags.`ssl.preset` = 'smoke'", order_by=["attributes.start_time DESC"], max_results=1)
    assert latest[0].info.status == "FAILED"


def test_subprocess_launcher_matches_in_process(tmp_path, archive, split_artifact, smoke):
    output = tmp_path / "split"
    SubprocessLauncher().launch("split", smoke.split, {"data": archive}, output, smoke.resources)
    for name in catalog.TABLES:
        assert sha256_file(catalog.table_path(output, name)) == sha256_file(catalog.table_path(split_artifact, name))


def test_a_refusal_in_a_subprocess_reports_the_stages_message(tmp_path, smoke):
    with pytest.raises(StageRefused, match="^stage split: .*does not exist"):
        SubprocessLauncher().launch("split", smoke.split, {"data": tmp_path / "missing.tar.gz"}, tmp_path / "out",
                                    smoke.resources)
    assert not (tmp_path / "out").exists()


def test_a_budgeted_run_ends_inside_its_minutes_with_each_schedule_run_out(archive, smoke):
    """With the epochs as loose upper bounds, the budget ends each training stage: the run ends inside it,
    each stage got the minutes the plan logged, and its learning rate had decayed where they ran out."""
    config = load_pipeline_config("smoke", [{"budget": {"minutes": 1.2, "reserve_minutes": 0.2}, "baseline": {"epochs": 1000},
                                             "consistency": {"classifier": {"epochs": 1000}}}])
    started = time.time()
    result = semi_supervised_pipeline(config=config, data=str(archive), started=started)
    assert time.time() - started <= 1.2 * 60
    params = MlflowClient().get_run(result["mlflow_run_id"]).data.params
    runs = nested_runs(result["mlflow_run_id"])
    assert runs["baseline"].data.params["time_budget_minutes"] == params["plan.supervised_minutes"]
    assert runs["consistency"].data.params["classifier.time_budget_minutes"] == params["plan.ssl_minutes"]
    for artifact in ("supervised_model", "ssl_model"):
        history = pd.read_parquet(Path(result["artifacts"][artifact]) / catalog.HISTORY_FILE)
        assert 2 < len(history) < 1000
        assert history["learning_rate"].iloc[-1] < 0.1 * history["learning_rate"].max()


@pytest.fixture(scope="module")
def mlflow_ui(first_run, start_mlflow):
    """``mlflow ui`` on the store the first run tracked into, as the run's closing line tells a user."""
    return start_mlflow("ui", "--backend-store-uri", settings.tracking_uri())[0]


def test_the_run_page_shows_the_figures_a_user_compares_and_the_data(first_run, mlflow_ui):
    from playwright.sync_api import sync_playwright

    parent = MlflowClient().get_run(first_run["mlflow_run_id"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(tracking.run_page(mlflow_ui, first_run["experiment_id"], first_run["mlflow_run_id"]))
        page.get_by_text("ssl_test_accuracy").first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        page.screenshot(path=SCREENSHOT)
        browser.close()
    assert parent.info.run_name in text and "Model training" in text
    for shown in ("supervised_test_accuracy", "supervised_val_accuracy", "ssl_val_accuracy", "total_minutes", "labeled"):
        assert shown in text
