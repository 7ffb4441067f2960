"""Pseudo-labelling and self-training: the selection rule, the stages on the smoke preset, bad input."""

import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import pseudo_label, self_train
from stages.lib import catalog, pseudo_labels
from stages.lib.artifacts import ArtifactError, write_manifest
from stages.lib.catalog import DataError
from stages.lib.pseudo_labels import PseudoLabelConfig
from stages.lib.reports import markdown_table


def predictions(rows):
    ids, labels, confidence = zip(*rows)
    return pd.DataFrame({"id": list(ids), "label": np.array(labels, np.int32),
                         "confidence": np.array(confidence, np.float32)})


def test_select_keeps_confidence_at_or_above_the_threshold_in_input_order():
    table = predictions([("a", 0, 0.5), ("b", 1, 0.9), ("c", 0, 0.85), ("d", 2, 0.849)])
    assert pseudo_labels.select(table, 0.85)["id"].tolist() == ["b", "c"]
    assert pseudo_labels.select(table, 1.0).empty


def test_select_caps_each_predicted_class_at_its_most_confident_rows():
    table = predictions([("a", 0, 0.7), ("b", 0, 0.95), ("c", 1, 0.8), ("d", 0, 0.9), ("e", 0, 0.9), ("f", 1, 0.6)])
    chosen = pseudo_labels.select(table, 0.65, max_per_class=2)
    # class 0: b (0.95), then d and e tie at 0.9 and the earlier row wins; class 1: c only (f is below 0.65)
    assert chosen["id"].tolist() == ["b", "c", "d"]


def test_pseudo_label_config_rejects_thresholds_outside_zero_one():
    for threshold in (0, -0.1, 1.01):
        with pytest.raises(ValueError, match="threshold"):
            PseudoLabelConfig(threshold=threshold)


@pytest.fixture(scope="module")
def pseudo_label_artifact(tmp_path_factory, split_artifact, model_artifact, smoke):
    output = tmp_path_factory.mktemp("pseudo_label") / "artifact"
    pseudo_label.STAGE.execute(smoke.self_training.selection, {"split": split_artifact, "model": model_artifact}, output)
    return output


def test_pseudo_label_stage_writes_the_selection_and_measures_it(pseudo_label_artifact, split_artifact):
    unlabeled = catalog.read_table(split_artifact, "unlabeled")
    labels = catalog.read_pseudo_labels(pseudo_label_artifact, unlabeled)
    assert len(labels) == len(unlabeled)  # the smoke threshold 0.01 keeps every prediction of 100 classes
    assert (labels["iteration"] == 1).all() and (labels["confidence"] >= 0.01).all()
    audit = catalog.read_table(split_artifact, "unlabeled_audit")
    truth = dict(zip(audit.ids, audit.labels))
    metrics = json.loads((pseudo_label_artifact / "metrics.json").read_text())
    assert metrics["selected"] == len(labels)
    assert metrics["pseudo_label_accuracy"] == pytest.approx(np.mean([truth[i] == l for i, l in zip(labels["id"], labels["label"])]))


@pytest.fixture(scope="module")
def spied_self_train(tmp_path_factory, split_artifact, model_artifact, pseudo_label_artifact, smoke):
    """The self_train stage on the smoke preset, recording what each iteration trains on."""
    calls = []
    real_fit = self_train.fit_classifier

    def spy(model, config, train, validation, sample_weight=None):
        calls.append({"train": train, "weights": sample_weight, "config": config})
        return real_fit(model, config, train, validation, sample_weight)

    output = tmp_path_factory.mktemp("self_train") / "artifact"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(self_train, "fit_classifier", spy)
        self_train.STAGE.execute(smoke.self_training, {"split": split_artifact, "model": model_artifact,
                                             "pseudo_labels": pseudo_label_artifact}, output)
    return output, calls


def test_self_train_runs_the_configured_iterations_and_keeps_the_best_on_validation(spied_self_train, smoke):
    output, calls = spied_self_train
    iterations = pd.read_parquet(output / "iterations.parquet")
    assert iterations["iteration"].tolist() == [0, 1, 2] and len(calls) == 2
    metrics = json.loads((output / "metrics.json").read_text())
    best = iterations["val_loss"].idxmin()  # the smoke baseline selects on val_loss
    assert metrics["best_iteration"] == best and metrics["best_val_loss"] == iterations["val_loss"][best]
    history = pd.read_parquet(output / "history.parquet")
    assert history["iteration"].tolist() == [1, 2] and history["epoch"].tolist() == [1, 2]
    assert (output / "figures" / "iterations.png").is_file() and (output / "saved_model").is_dir()


def test_fine_tuning_lowers_the_rate_and_raises_dropout_and_l2(spied_self_train, smoke):
    _, calls = spied_self_train
    tuned, base = calls[0]["config"], smoke.baseline
    assert tuned.learning_rate == smoke.self_training.fine_tune.learning_rate < base.learning_rate
    assert tuned.architecture.head_dropout == pytest.approx(base.architecture.head_dropout + 0.05)
    assert tuned.architecture.l2 == pytest.approx(base.architecture.l2 + 0.001)
    assert [call["config"].seed for call in calls] == [base.seed + 1, base.seed + 2]


def test_labeled_weigh_two_and_pseudo_labels_their_confidence(spied_self_train, split_artifact):
    output, calls = spied_self_train
    labeled = catalog.read_table(split_artifact, "labeled")
    written = pd.read_parquet(output / "pseudo_labels.parquet")
    for number, call in enumerate(calls, start=1):
        labels = written[written["iteration"] == number]
        weights, train = call["weights"], call["train"]
        assert len(train) == len(labeled) + len(labels)
        np.testing.assert_array_equal(weights[: len(labeled)], 2.0)
        np.testing.assert_allclose(weights[len(labeled):], labels["confidence"].to_numpy())


def test_audit_labels_never_reach_training(spied_self_train, split_artifact):
    """Every training label is a labeled image's own or a pseudo-label (a prediction), never the audit truth."""
    output, calls = spied_self_train
    labeled = catalog.read_table(split_artifact, "labeled")
    audit = catalog.read_table(split_artifact, "unlabeled_audit")
    truth = pd.Series(audit.labels, index=audit.ids)
    written = pd.read_parquet(output / "pseudo_labels.parquet")
    for number, call in enumerate(calls, start=1):
        labels = written[written["iteration"] == number]
        trained_on = call["train"].labels[len(labeled):]
        np.testing.assert_array_equal(call["train"].labels[: len(labeled)], labeled.labels)
        np.testing.assert_array_equal(trained_on, labels["label"].to_numpy())
        # the tiny model is mostly wrong: had audit labels leaked, these would match the truth
        assert (trained_on != truth.loc[labels["id"]].to_numpy()).mean() > 0.5


def test_empty_selection_names_the_threshold_and_the_best_confidence(model_artifact, split_artifact, tmp_path):
    with pytest.raises(pseudo_labels.EmptySelection, match=r"no prediction reaches selection.threshold 1.0 \(the most confident is 0\.\d+\)"):
        pseudo_label.STAGE.execute(PseudoLabelConfig(threshold=1.0), {"split": split_artifact, "model": model_artifact},
                         tmp_path / "out")
    assert not (tmp_path / "out").exists()


def rewrite_pseudo_labels(source, target, change):
    """A copy of a pseudo_label artifact with its table changed and its manifest rewritten to match."""
    shutil.copytree(source, target)
    table = pq.read_table(target / catalog.PSEUDO_LABELS_FILE).to_pandas()
    catalog.write_pseudo_labels(target, change(table))
    manifest = json.loads((target / "manifest.json").read_text())
    write_manifest(target, manifest["stage"], manifest["config"], manifest["parents"], dt.datetime.now(dt.timezone.utc))
    return target


def test_pseudo_labels_for_ids_outside_the_unlabeled_set_are_refused(pseudo_label_artifact, split_artifact,
                                                                    model_artifact, smoke, tmp_path):
    def foreign(table):
        return table.assign(id=table["id"].where(table.index > 1, "test-00000"))

    bad = rewrite_pseudo_labels(pseudo_label_artifact, tmp_path / "bad", foreign)
    with pytest.raises(DataError, match=r"pseudo_labels.parquet: field 'id' has 2 ids that are not in the unlabeled table \(e.g. test-00000"):
        self_train.STAGE.execute(smoke.self_training, {"split": split_artifact, "model": model_artifact, "pseudo_labels": bad},
                       tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pseudo_labels_of_another_selection_are_refused(pseudo_label_artifact, split_artifact, model_artifact, smoke,
                                                        tmp_path):
    other = smoke.self_training.model_copy(update={"selection": PseudoLabelConfig(threshold=0.5)})
    with pytest.raises(ArtifactError, match="rerun the pseudo_label stage with this run's selection config"):
        self_train.STAGE.execute(other, {"split": split_artifact, "model": model_artifact,
                               "pseudo_labels": pseudo_label_artifact}, tmp_path / "out")


def test_a_pseudo_label_table_with_the_wrong_schema_is_refused(pseudo_label_artifact, split_artifact, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pseudo_label_artifact, bad)
    pq.write_table(pa.table({"id": ["train-00001"], "label": [1]}), bad / catalog.PSEUDO_LABELS_FILE)
    with pytest.raises(DataError, match="but pseudo-label table needs"):
        catalog.read_pseudo_labels(bad, catalog.read_table(split_artifact, "unlabeled"))


def test_report_tables_print_seconds_and_counts_alike_whatever_their_fraction():
    table = pd.DataFrame({"flow_seconds": [5104.0, 6052.3, 12.34], "samples_used": [1180.0, None, 3.0],
                          "val_accuracy": [0.4, 0.41, 0.4387]})
    assert markdown_table(table).splitlines()[2:] == [
        "| 5,104 | 1,180 | 40.00% |", "| 6,052 | — | 41.00% |", "| 12.34 | 3 | 43.87% |"]
