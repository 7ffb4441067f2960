"""Artifact directories: atomic writes and the ``manifest.json`` that proves what is inside.

A manifest records, for every file, its SHA-256 and size (and rows and schema for Parquet), the
resolved config, the code version and the digests of the parent artifacts. Its ``digest`` is a
hash of all of that except timings, so equal digests mean equal content and provenance.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import stages
from stages.lib.errors import NO_ROOM, InvalidSetting, UserError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20  # bytes read per hashing step


class ArtifactError(UserError, RuntimeError):
    """An artifact directory that is missing, incomplete or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """A file's SHA-256, hashed once per process per file version (path, size, modification time):
    hashing the 169 MB archive takes ~0.4 s, and the flow's cache key and the split's manifest both need it.
    A folder's digest is that of its files' relative paths and digests."""
    path = Path(path)
    if path.is_dir():
        return sha256_json([(file.relative_to(path).as_posix(), file_digest(file))
                            for file in sorted(path.rglob("*")) if file.is_file()])
    stat = path.stat()
    return _digest_of_version(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=2**17)  # room for a folder source's every file: the flow's cache key and the manifest hash it once
def _digest_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@cache
def code_version(stage: str) -> str:
    """``<package version>+<hash of the sources stage runs>``: the stage's module (its config class
    included) and every module of stages/ it imports, directly or not, so a change to another stage
    leaves this one's artifacts and cache keys valid.

    Presets are left out: what they set reaches every manifest and cache key as config.
    """
    return f"{stages.__version__}+{source_digest(Path(stages.__file__).parent, stage)[:12]}"


def source_digest(root: Path, stage: str) -> str:
    """SHA-256 over the paths and bytes of ``source_closure`` of the stage module in the package at ``root``."""
    digest = hashlib.sha256()
    for path in sorted(source_closure(root, f"{root.name}.{stage}")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def source_closure(root: Path, module: str) -> set[Path]:
    """The files of ``module`` (dotted, in the package whose directory is ``root``) and of every module
    of that package it imports, transitively, parent packages' ``__init__.py`` included. Read from
    the sources, not by importing them."""
    package, found, pending = root.name, set(), [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then c
            path = _module_file(root, parts[1:depth])
            if path is not None and path not in found:
                found.add(path)
                pending.extend(_imported_modules(path, ".".join(parts[:depth]), package))
    return found


def _module_file(root: Path, parts: list[str]) -> Path | None:
    """The module's file, or None where the name is not a module (a function imported from one)."""
    base = root.joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path, name: str, package: str) -> list[str]:
    """Dotted names in ``package`` that the module ``name`` imports; ``from m import x`` also names
    ``m.x``, which is a module when x is one (``from stages import data``)."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""  # from . / from .. import
            source = ".".join(filter(None, (base, node.module)))
            names += [source, *(f"{source}.{alias.name}" for alias in node.names)]
    return [n for n in names if n == package or n.startswith(f"{package}.")]


def _describe_file(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.suffix == ".parquet":
        metadata = pq.read_metadata(path)
        entry["rows"] = metadata.num_rows
        entry["schema"] = str(metadata.schema.to_arrow_schema())
    return entry


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(directory).as_posix(): _describe_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def parent_entry(directory: Path) -> dict[str, str]:
    """How a child manifest refers to a parent artifact directory, once ``verify`` has checked it."""
    manifest = verify(directory)
    return {"path": str(directory), "stage": manifest["stage"], "digest": manifest["digest"]}


def write_manifest(
    directory: Path,
    stage: str,
    config: Mapping[str, Any],
    parents: Mapping[str, Mapping[str, str]],
    started_at: dt.datetime,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    files = describe_files(directory)
    identity = {
        "stage": stage,
        "config": dict(config),
        "code_version": code_version(stage),
        "parents": {name: parent["digest"] for name, parent in parents.items()},
        "files": {name: entry["sha256"] for name, entry in files.items()},
    }
    finished_at = dt.datetime.now(dt.timezone.utc)
    earlier = seconds_before_resume()
    manifest = {
        **identity,
        "parents": {name: dict(parent) for name, parent in parents.items()},
        "files": files,
        "digest": sha256_json(identity),
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        # a resumed stage's seconds include what its killed attempts spent up to their last checkpoint
        "seconds": round((finished_at - started_at).total_seconds() + earlier, 3),
        **({"seconds_before_resume": round(earlier, 3)} if earlier else {}),
        **(extra or {}),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing: {directory} is not a finished artifact directory. "
            "Rerun the stage that writes it."
        )
    rerun = f"delete {directory} and rerun the stage that writes it"
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as error:  # JSON, or bytes that are not UTF-8
        raise ArtifactError(f"{path} is not valid JSON ({error}): {rerun}") from None
    try:
        ManifestShape.model_validate(manifest)
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(map(str, problem["loc"])) or "(top level)"
        raise ArtifactError(f"{path} is not a manifest: field {field} ({problem['msg']}): {rerun}") from None
    return manifest


class FileEntry(BaseModel):
    """What a manifest records of one file (tables also have rows and schema)."""

    model_config = ConfigDict(extra="allow")
    sha256: str
    bytes: int = Field(ge=0)
    rows: int | None = Field(None, ge=0)
    schema_: str | None = Field(None, alias="schema")


class ParentEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    digest: str
    path: str
    stage: str


class ManifestShape(BaseModel):
    """The fields readers of a manifest rely on, checked before any is read; the rest pass as they are."""

    model_config = ConfigDict(extra="allow")
    stage: str
    digest: str
    code_version: str
    config: dict[str, Any]
    parents: dict[str, ParentEntry]
    files: dict[str, FileEntry]
    seconds: float = Field(ge=0)


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest (SHA-256; for Parquet also rows and schema, which name
    the problem more plainly); returns the manifest or raises ``ArtifactError``."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    rerun = f"delete {directory} and rerun the {manifest['stage']} stage"
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in {directory / MANIFEST} but missing: {rerun}")
        try:
            actual = _describe_file(path)
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise ArtifactError(f"{path} is not a readable Parquet file ({error}): {rerun}") from None
        for field in ("rows", "schema", "sha256"):
            if actual.get(field) != expected.get(field):
                raise ArtifactError(f"{path} has {field} {actual.get(field)!r}, but {directory / MANIFEST} records "
                                    f"{expected.get(field)!r}: the file changed after it was written; {rerun}")
    return manifest


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) for the block; other processes wait.
    The kernel releases it when the holder dies, so a killed run never leaves a stale lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as error:
        if error.errno in NO_ROOM:
            raise
        raise InvalidSetting(f"cannot write in {path.parent} ({error.strerror}): choose an output directory "
                             "that can be created and written to") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class OutputExists(UserError, FileExistsError):
    """An output directory that is there already."""


def refuse_existing(output: Path) -> None:
    if output.exists():
        raise OutputExists(
            f"{output} already exists: artifacts are never overwritten. "
            "Choose another output directory or delete this one."
        )


SPENT_FILE = "spent.json"  # in a work directory: seconds its attempts spent up to their last checkpoint


@dataclass
class StageWork:
    """The work directory of the stage running in this context, and what this attempt has to count."""
    directory: Path
    fits: Iterator[int]  # numbers the training runs started in it
    attempt_started: float  # time.perf_counter()
    earlier_seconds: float  # spent by killed attempts up to their last checkpoint


_work: ContextVar[StageWork | None] = ContextVar("stage_work_directory", default=None)


@contextlib.contextmanager
def exclusive_output(output: Path) -> Iterator[Path]:
    """Hold ``output``'s lock for the block and yield the output's work directory.

    One writer per output: a second process asking for the same output waits here. Temporary
    directories that killed writers left behind are removed first. The work directory
    (``.<name>.work`` beside the output) holds training checkpoints; it survives a crash so that
    the rerun resumes from them (``checkpoint_directory``), and goes once the output is in place.
    """
    output = Path(output)
    with file_lock(output.with_name(f".{output.name}.lock")):
        refuse_existing(output)
        for stale in output.parent.glob(f".{output.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = work_directory(output)
        spent = work / SPENT_FILE
        earlier = json.loads(spent.read_text())["seconds"] if spent.is_file() else 0.0
        token = _work.set(StageWork(work, itertools.count(1), time.perf_counter(), earlier))
        try:
            yield work
        finally:
            _work.reset(token)
        if output.exists():
            shutil.rmtree(work, ignore_errors=True)


def work_directory(output: Path) -> Path:
    return output.with_name(f".{output.name}.work")


def checkpoint_directory() -> Path | None:
    """A folder for the next training run's checkpoints (``fit-1``, ``fit-2``, ... in call order, so a
    rerun finds the same folder for the same fit), or None outside ``exclusive_output``."""
    current = _work.get()
    if current is None:
        return None
    return current.directory / f"fit-{next(current.fits)}"


def record_progress() -> None:
    """After a checkpoint: the seconds the running stage has spent, which a rerun that resumes from
    the checkpoint adds to its own (nothing outside ``exclusive_output``)."""
    if (current := _work.get()) is None:
        return
    current.directory.mkdir(parents=True, exist_ok=True)
    replace_text(current.directory / SPENT_FILE,
                 json.dumps({"seconds": current.earlier_seconds + time.perf_counter() - current.attempt_started}))


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a reader, or a kill, finds the old text or the
    new, never part of it."""
    pending = path.with_name(f"{path.name}.tmp")
    pending.write_text(text)
    os.replace(pending, path)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file beside it: ``target`` is the old file or the
    whole new one, never part of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    pending = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, pending)
    os.replace(pending, target)


_reads: ContextVar[list[Path] | None] = ContextVar("files_read", default=None)


@contextlib.contextmanager
def recording_reads() -> Iterator[list[Path]]:
    """Yields the list of the input files that ``record_read`` sees during the block."""
    reads: list[Path] = []
    token = _reads.set(reads)
    try:
        yield reads
    finally:
        _reads.reset(token)


def record_read(path: Path) -> None:
    """Notes that the running stage read ``path`` (its manifest lists what it read; nothing outside a stage)."""
    if (reads := _reads.get()) is not None and path not in reads:
        reads.append(Path(path))


def seconds_before_resume() -> float:
    """What the running stage's killed attempts spent up to their last checkpoint; 0 for a first attempt."""
    return 0.0 if (current := _work.get()) is None else current.earlier_seconds


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``output``; rename it into place only if the block succeeds.

    A crash or an error leaves ``output`` untouched and removes the temporary directory, so no
    half-written artifact can be mistaken for a finished one.
    """
    output = Path(output)
    refuse_existing(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    temporary.mkdir()
    try:
        yield temporary
        os.rename(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
