"""The object store's contract on a local S3 server (moto's): one writer per output, completion by
manifest, a lapsed lease taken over, a lost lease dropping its output, fetches checked."""

import datetime as dt
import threading
import time
from pathlib import Path

import fsspec
import pytest

from pipelines import store as stores
from pipelines.store import ObjectStore, artifact_address
from stages.lib.artifacts import ArtifactError, write_manifest

KEY = "0123456789abcdef" * 4


@pytest.fixture
def store(s3, tmp_path, monkeypatch) -> ObjectStore:
    monkeypatch.setenv("SSL_PIPELINE_HOME", str(tmp_path / "writer"))
    return ObjectStore(f"{s3}/{tmp_path.name}")


def make(output: Path, text: str = "weights") -> None:
    """A finished artifact: one file and its manifest."""
    output.mkdir(parents=True)
    (output / "model.txt").write_text(text)
    write_manifest(output, "baseline", {}, {}, dt.datetime.now(dt.timezone.utc))


def objects(store: ObjectStore) -> list[str]:
    filesystem, root = fsspec.core.url_to_fs(store.url)
    filesystem.invalidate_cache()
    return sorted(path.removeprefix(root + "/") for path in filesystem.find(root))


def test_an_artifact_is_published_manifest_last_and_its_lease_released(store):
    with store.writing("baseline", KEY) as output:
        make(output)
    assert objects(store) == ["baseline/0123456789abcdef/manifest.json", "baseline/0123456789abcdef/model.txt"]
    assert store.has("baseline", KEY)


def test_two_writers_of_one_output_make_it_once(store):
    made, results = [], []

    def write() -> None:
        with store.writing("baseline", KEY) as output:
            if output is not None:
                made.append(output)
                time.sleep(2)  # still making it while the other writer asks
                make(output)
        results.append(store.local(store.output("baseline", KEY)))

    writers = [threading.Thread(target=write) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert len(made) == 1 and len(results) == 2


def test_another_machine_fetches_the_artifact_checked(store, tmp_path, monkeypatch):
    with store.writing("baseline", KEY) as output:
        make(output)
    monkeypatch.setenv("SSL_PIPELINE_HOME", str(tmp_path / "reader"))
    fetched = store.local(output)  # the writer's path: mapped to this machine's mirror by stage and key
    assert fetched != output and fetched.is_relative_to(tmp_path / "reader")
    assert (fetched / "model.txt").read_text() == "weights"
    assert artifact_address(fetched) == ("baseline", KEY[:16])


def test_a_changed_object_is_refused_on_fetch_and_nothing_is_kept(store, tmp_path, monkeypatch):
    with store.writing("baseline", KEY) as output:
        make(output)
    filesystem = store.filesystem
    filesystem.pipe_file(store.address("baseline", KEY[:16], "model.txt"), b"tampered")
    monkeypatch.setenv("SSL_PIPELINE_HOME", str(tmp_path / "reader"))
    with pytest.raises(ArtifactError, match="model.txt"):
        store.local(output)
    kept = [path.name for path in (tmp_path / "reader").glob("store-mirror/*/baseline/*") if path.suffix != ".lock"]
    assert not kept


def test_a_lease_that_stopped_changing_is_taken_over(store, monkeypatch):
    monkeypatch.setattr(stores, "LEASE_SECONDS", 2.0)
    store.filesystem.pipe_file(store.address("baseline", f".{KEY[:16]}.lease"), b'{"host": "gone"}\n7')
    started = time.monotonic()
    with store.writing("baseline", KEY) as output:
        make(output)
    assert 2.0 < time.monotonic() - started < 15
    assert store.has("baseline", KEY)


def test_a_writer_that_lost_its_lease_publishes_nothing(store, monkeypatch):
    monkeypatch.setattr(stores, "RENEW_SECONDS", 0.2)
    with pytest.raises(ArtifactError, match="another took the stage over"):
        with store.writing("baseline", KEY) as output:
            store.filesystem.pipe_file(store.address("baseline", f".{KEY[:16]}.lease"), b'{"host": "other"}\n0')
            make(output)
            time.sleep(1)
    assert not store.has("baseline", KEY) and not output.exists()
