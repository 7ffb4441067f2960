import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from stages.lib import cifar


def test_real_archive_verifies_and_loads(archive):
    train, test, classes = cifar.load(archive)
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [500] * 100
    assert len(classes) == 100 and classes[0] == "apple"


def test_missing_archive_says_how_to_get_it(tmp_path):
    with pytest.raises(cifar.ArchiveError, match="does not exist") as error:
        cifar.verify_archive(tmp_path / "nope.tar.gz")
    assert cifar.URL in str(error.value) and cifar.ARCHIVE_ENV in str(error.value)


def test_wrong_archive_is_named(tmp_path):
    wrong = tmp_path / "cifar-100-python.tar.gz"
    wrong.write_bytes(b"\0" * (cifar.SIZE + 1))
    with pytest.raises(cifar.ArchiveError, match="it is not the official cifar-100-python.tar.gz"):
        cifar.verify_archive(wrong)


def test_truncated_archive_is_named(tmp_path, archive):
    truncated = tmp_path / "cifar-100-python.tar.gz"
    with open(archive, "rb") as source:
        truncated.write_bytes(source.read(1 << 20))
    with pytest.raises(cifar.ArchiveError, match="it is truncated. Nothing was unpickled") as error:
        cifar.resolve_archive(truncated)
    assert cifar.SHA256 in str(error.value) and "169,001,437" in str(error.value)


def _hostile_archive(path, marker):
    """A well-formed tar.gz whose pickle would create ``marker`` when unpickled."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with tarfile.open(path, "w:gz") as archive:
        for member in ("meta", "train", "test"):
            data = pickle.dumps(Payload())
            info = tarfile.TarInfo(f"cifar-100-python/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_hostile_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    _hostile_archive(tmp_path / "evil.tar.gz", marker)
    with pytest.raises(cifar.ArchiveError, match="has SHA-256 .* Nothing was unpickled"):
        cifar.load(tmp_path / "evil.tar.gz")
    assert not marker.exists()


def test_environment_variable_and_flag(monkeypatch, tmp_path, archive):
    monkeypatch.setenv(cifar.ARCHIVE_ENV, str(archive))
    assert cifar.resolve_archive() == archive
    with pytest.raises(cifar.ArchiveError, match="does not exist"):
        cifar.resolve_archive(tmp_path / "given-by-flag.tar.gz")  # the flag wins over the variable


def test_download_goes_to_cache_only_when_verified(monkeypatch, tmp_path, archive):
    monkeypatch.delenv(cifar.ARCHIVE_ENV, raising=False)
    monkeypatch.setattr(cifar.urllib.request, "urlretrieve", lambda url, to: open(to, "wb").write(b"<html>"))
    with pytest.raises(cifar.ArchiveError, match=f"could not download {cifar.URL}"):
        cifar.resolve_archive(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind

    monkeypatch.setattr(cifar.urllib.request, "urlretrieve", lambda url, to: shutil.copyfile(archive, to))
    assert cifar.resolve_archive(cache_dir=tmp_path) == tmp_path / cifar.FILENAME
