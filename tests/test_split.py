import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from stages import split
from stages.lib import catalog, cifar
from stages.lib.artifacts import ArtifactError, sha256_file, verify
from stages.split import SplitConfig

TABLES = ["labeled", "validation", "unlabeled", "unlabeled_audit", "test"]


def test_stratified_indices_on_synthetic_labels():
    labels = np.repeat(np.arange(5), 20)
    parts = split.stratified_indices(labels, {"a": 3, "b": 2, "rest": None}, seed=1)
    for name, per_class in {"a": 3, "b": 2, "rest": 15}.items():
        assert np.bincount(labels[parts[name]]).tolist() == [per_class] * 5
    everything = np.concatenate(list(parts.values()))
    assert len(np.unique(everything)) == len(everything) == 100  # disjoint and complete
    again = split.stratified_indices(labels, {"a": 3, "b": 2, "rest": None}, seed=1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split.stratified_indices(labels, {"a": 3, "b": 2, "rest": None}, seed=2)
    assert not np.array_equal(parts["a"], other["a"])


def test_stratified_indices_refuses_too_many():
    with pytest.raises(ValueError, match="class 'cat' has 20 labeled images, fewer than the 21 that a \\+ b ask for"):
        split.stratified_indices(np.zeros(20, int), {"a": 19, "b": 2}, seed=0, classes=["cat"])


def test_fractions_of_each_class():
    labels = np.repeat(np.arange(2), [10, 40])
    parts = split.stratified_indices(labels, {"a": 0.5, "b": 0.25, "rest": None}, seed=0)
    assert [np.bincount(labels[parts[name]]).tolist() for name in parts] == [[5, 20], [2, 10], [3, 10]]


def test_split_counts_schema_and_disjointness(split_artifact, smoke):
    tables = {name: catalog.read_table(split_artifact, name) for name in TABLES}
    per_class = {"labeled": smoke.split.labels_per_class, "validation": smoke.split.val_per_class,
                 "unlabeled_audit": smoke.split.unlabeled_per_class, "test": smoke.split.test_per_class}
    for name, count in per_class.items():
        assert np.bincount(tables[name].labels, minlength=100).tolist() == [count] * 100, name
    for name in TABLES:
        schema = pq.read_schema(catalog.table_path(split_artifact, name)).remove_metadata()
        assert schema.equals(catalog.read_dataset_info(split_artifact).schema(name)), name
    assert "label" not in pq.read_schema(catalog.table_path(split_artifact, "unlabeled")).names
    ids = [set(tables[name].ids) for name in ("labeled", "validation", "unlabeled")]
    assert sum(map(len, ids)) == len(set.union(*ids))
    assert list(tables["unlabeled"].ids) == list(tables["unlabeled_audit"].ids)


def test_images_and_audit_labels_are_the_official_ones(split_artifact, archive):
    train, test, _ = cifar.load(archive)
    for name, source in (("labeled", train), ("test", test)):
        table = catalog.read_table(split_artifact, name)
        rows = [int(i.split("-")[1]) for i in table.ids]
        assert np.array_equal(table.images, source.images[rows]) and np.array_equal(table.labels, source.labels[rows])
    audit = catalog.read_table(split_artifact, "unlabeled_audit")
    assert np.array_equal(audit.labels, train.labels[[int(i.split("-")[1]) for i in audit.ids]])


def test_manifest_records_provenance(split_artifact, smoke):
    manifest = verify(split_artifact)
    assert manifest["stage"] == "split"
    assert manifest["config"] == smoke.split.model_dump(mode="json")
    assert manifest["parents"]["data"]["digest"] == cifar.SHA256
    assert manifest["files"]["labeled.parquet"]["rows"] == 400
    assert manifest["files"]["labeled.parquet"]["sha256"] == sha256_file(split_artifact / "labeled.parquet")
    assert "image: fixed_size_binary[3072] not null" in manifest["files"]["labeled.parquet"]["schema"]
    assert manifest["code_version"].startswith("0.1.0+")
    described = json.loads((split_artifact / "dataset.json").read_text())
    assert described["classes"][:2] == ["apple", "aquarium_fish"] and described["image_shape"] == [32, 32, 3]
    assert described["source"] == "cifar100" and described["counts"]["labeled"] == 400


def test_same_config_gives_byte_identical_files(tmp_path, archive, split_artifact, smoke):
    again = tmp_path / "again"
    split.STAGE.execute(smoke.split, {"data": archive}, again)
    for name in TABLES:
        assert sha256_file(catalog.table_path(again, name)) == sha256_file(catalog.table_path(split_artifact, name))


@pytest.mark.parametrize("labels_per_class", [25, 40])
def test_other_label_budgets(tmp_path, archive, labels_per_class):
    config = SplitConfig(labels_per_class=labels_per_class, val_per_class=5, unlabeled_per_class=1, test_per_class=1)
    manifest = split.STAGE.execute(config, {"data": archive}, tmp_path / "out")
    assert manifest["files"]["labeled.parquet"]["rows"] == 100 * labels_per_class
    assert manifest["files"]["validation.parquet"]["rows"] == 500


def test_existing_output_is_never_overwritten(split_artifact, archive, smoke):
    before = sha256_file(split_artifact / "manifest.json")
    with pytest.raises(FileExistsError, match="already exists: artifacts are never overwritten"):
        split.STAGE.execute(smoke.split, {"data": archive}, split_artifact)
    assert sha256_file(split_artifact / "manifest.json") == before


def test_failure_mid_write_leaves_nothing(tmp_path, archive, smoke, monkeypatch):
    real_write = catalog.write_table

    def fail_on_test(artifact, name, *args, **kwargs):
        if name == "test":
            raise OSError("disk full")
        return real_write(artifact, name, *args, **kwargs)

    monkeypatch.setattr(catalog, "write_table", fail_on_test)
    with pytest.raises(OSError, match="disk full"):
        split.STAGE.execute(smoke.split, {"data": archive}, tmp_path / "out")
    assert [path.name for path in tmp_path.iterdir()] == [".out.lock"]  # the writers' lock, and no output


def test_tampered_file_fails_verification(tmp_path, split_artifact):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(split_artifact, copy)
    table = copy / "labeled.parquet"
    table.write_bytes(table.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="labeled.parquet .* rerun the split stage"):
        verify(copy)


def test_wrong_schema_is_named(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["a"], "image": [b"x" * 10], "label": [1]}), tmp_path / "labeled.parquet")
    with pytest.raises(ArtifactError, match="dataset.json is missing: .* Rerun the stage that made it"):
        catalog.read_table(tmp_path, "labeled")
    catalog.write_dataset_info(tmp_path, catalog.DatasetInfo(["a", "b"], (32, 32, 3), "crop"))
    with pytest.raises(catalog.DataError, match="labeled.parquet has schema"):
        catalog.read_table(tmp_path, "labeled")
