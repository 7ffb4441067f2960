"""The official CIFAR-100 archive: locate or download it, verify it, then (only then) unpickle it."""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from stages.lib.artifacts import sha256_file
from stages.lib.errors import UserError

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
SIZE = 169_001_437  # bytes
ARCHIVE_ENV = "CIFAR100_ARCHIVE"
FILENAME = "cifar-100-python.tar.gz"


class ArchiveError(UserError, RuntimeError):
    """The CIFAR-100 archive is missing, truncated or not the official one."""


@dataclass(frozen=True)
class CifarSplit:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int32: fine labels 0..99, or coarse 0..19


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssl-pipeline"


def _how_to_get() -> str:
    return (
        f"Download the official archive from {URL} ({SIZE:,} bytes, SHA-256 {SHA256}) and pass "
        f"its path with --data or the {ARCHIVE_ENV} environment variable."
    )


def verify_archive(path: Path) -> Path:
    """Raise ``ArchiveError`` unless ``path`` is byte-identical to the official archive."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"CIFAR-100 archive {path} does not exist. {_how_to_get()}")
    size = path.stat().st_size
    digest = sha256_file(path)
    if digest != SHA256:
        state = "truncated" if size < SIZE else "not the official cifar-100-python.tar.gz"
        raise ArchiveError(
            f"CIFAR-100 archive {path} has SHA-256 {digest} and {size:,} bytes; expected "
            f"{SHA256} and {SIZE:,} bytes: it is {state}. Nothing was unpickled. {_how_to_get()}"
        )
    return path


def resolve_archive(path: str | Path | None = None, cache_dir: Path | None = None) -> Path:
    """The verified archive: ``path``, else ``$CIFAR100_ARCHIVE``, else the download cache.

    Downloads into the cache when neither is given and the cache is empty; the download goes
    to a temporary name and is renamed only after its checksum matched.
    """
    chosen = path or os.environ.get(ARCHIVE_ENV)
    if chosen:
        return verify_archive(Path(chosen))
    cached = (cache_dir or default_cache_dir()) / FILENAME
    if not cached.exists():
        _download(cached)
    return verify_archive(cached)


def _download(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    log.info("downloading %s to %s", URL, target)
    try:
        urllib.request.urlretrieve(URL, partial)
        verify_archive(partial)
    except (OSError, ArchiveError) as error:
        partial.unlink(missing_ok=True)
        raise ArchiveError(f"could not download {URL}: {error}. {_how_to_get()}") from error
    partial.rename(target)


def load(path: Path, labels: Literal["fine", "coarse"] = "fine") -> tuple[CifarSplit, CifarSplit, list[str]]:
    """(train, test, class names) from a verified archive, with its 100 fine or 20 coarse labels."""
    verify_archive(path)
    with tarfile.open(path, "r:gz") as archive:

        def unpickle(member: str) -> dict[bytes, object]:
            handle = archive.extractfile(f"cifar-100-python/{member}")
            if handle is None:
                raise ArchiveError(f"{path} has no member cifar-100-python/{member}")
            return pickle.load(handle, encoding="bytes")

        meta = unpickle("meta")
        train, test = (_to_split(unpickle(name), labels) for name in ("train", "test"))
    classes = [name.decode() for name in meta[f"{labels}_label_names".encode()]]
    return train, test, classes


def _to_split(batch: dict[bytes, object], labels: str) -> CifarSplit:
    flat = np.asarray(batch[b"data"], dtype=np.uint8)  # (N, 3072), channel-major rows
    images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return CifarSplit(np.ascontiguousarray(images), np.asarray(batch[f"{labels}_labels".encode()], dtype=np.int32))
