"""The artifact store every worker of a flow reaches: a directory, or an object store through fsspec.

A directory (the home's ``artifacts``; NFS or a ReadWriteMany volume mounted at the same path on
every worker) is used in place: stages write into it, and its file locks keep one writer per output.

An object store (``s3://bucket/prefix``; ``gs://``, ``az://`` with their fsspec packages) has no
rename and no file locks. Each machine keeps a mirror of the artifacts it uses,
``<home>/store-mirror/<url digest>/<stage>/<key>``, so stages and launchers still see local
directories. A finished output is uploaded file by file and its ``manifest.json`` last, written
only where none is (the completion marker): an artifact whose manifest is in the store is whole.
One writer per output holds a lease object beside it, renewed while the stage runs and taken over
once it has stopped changing for ``LEASE_SECONDS``; meanwhile the stage's epoch checkpoints are
uploaded as they are made, so a stage whose machine died resumes on another from its last epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from pipelines import settings
from stages.lib.artifacts import MANIFEST, SPENT_FILE, ArtifactError, file_lock, verify, work_directory
from stages.lib.stage import STAGE_NAMES

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0  # a lease unchanged this long belongs to a writer that died
RENEW_SECONDS = 3.0  # how often a writer renews its lease and uploads its newest checkpoint
KEY_LENGTH = 16  # hex digits of the cache key naming an artifact directory
_ARTIFACT_NAME = re.compile(f"[0-9a-f]{{{KEY_LENGTH}}}")


def artifact_address(path: Path) -> tuple[str, str] | None:
    """(stage, key) of an artifact directory's path in any store or mirror; None for any other path."""
    path = Path(path)
    if path.parent.name in STAGE_NAMES and _ARTIFACT_NAME.fullmatch(path.name):
        return path.parent.name, path.name
    return None


@dataclass(frozen=True)
class DirectoryStore:
    """A store that is a directory every worker mounts at the same path."""

    root: Path

    def output(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:KEY_LENGTH]

    def has(self, stage: str, key: str) -> bool:
        return self.output(stage, key).exists()

    def local(self, path: Path) -> Path:
        return Path(path)

    @contextlib.contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path | None]:
        """Yields where to make the output, or None once it is made (a concurrent flow making the same
        artifact is waited for). Not the stage's own lock (``exclusive_output``): a stage in a container
        takes that one while this process waits."""
        output = self.output(stage, key)
        with file_lock(output.with_name(f".{output.name}.launch.lock")):
            yield None if output.exists() else output

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class ObjectStore:
    """A store at an fsspec URL, seen through this machine's mirror of it."""

    url: str

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem:
        return fsspec.core.url_to_fs(self.url)[0]  # fsspec keeps one instance per URL and options

    @property
    def mirror(self) -> Path:
        return settings.store_mirror(self.url)

    def address(self, stage: str, name: str, *parts: str) -> str:
        return "/".join([fsspec.core.url_to_fs(self.url)[1].rstrip("/"), stage, name, *parts])

    def output(self, stage: str, key: str) -> Path:
        return self.mirror / stage / key[:KEY_LENGTH]

    def has(self, stage: str, key: str) -> bool:
        return self._exists(self.address(stage, key[:KEY_LENGTH], MANIFEST))

    def local(self, path: Path) -> Path:
        """This machine's copy of the artifact at ``path`` (a path in any machine's mirror), fetched
        when missing; any other path is returned as it is."""
        if (address := artifact_address(path)) is None:
            return Path(path)
        stage, name = address
        target = self.mirror / stage / name
        if not target.exists():
            with file_lock(target.with_name(f".{name}.fetch.lock")):
                if not target.exists():
                    self._fetch(stage, name, target)
        return target

    @contextlib.contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path | None]:
        """Holds the output's lease; yields where to make the output (None once it is made) and uploads
        it when the block ends without error."""
        name = key[:KEY_LENGTH]
        output = self.output(stage, key)
        with self._lease(stage, name) as holder:
            if holder is None:
                yield None
                return
            if not output.exists():
                self._restore_checkpoints(stage, name, work_directory(output))
            with self._uploading_checkpoints(stage, name, work_directory(output), holder) as lost:
                yield None if output.exists() else output
            if lost.is_set():
                shutil.rmtree(output, ignore_errors=True)
                raise ArtifactError(f"{stage}/{name}: this writer stopped renewing its lease in {self.url} for over "
                                    f"{LEASE_SECONDS:.0f} s and another took the stage over; its output is dropped. "
                                    "Rerun the flow: it takes the other writer's artifact from the store")
            self._publish(stage, name, output)

    def _exists(self, address: str) -> bool:
        self.filesystem.invalidate_cache(address.rpartition("/")[0])
        return self.filesystem.exists(address)

    def _fetch(self, stage: str, name: str, target: Path) -> None:
        if not self._exists(self.address(stage, name, MANIFEST)):
            raise ArtifactError(f"{stage}/{name} is not in the artifact store {self.url}: its {MANIFEST} is missing. "
                                "Rerun the flow that makes it, with the same SSL_PIPELINE_STORE")
        pending = target.with_name(f".{name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            self.filesystem.get(self.address(stage, name) + "/", str(pending) + "/", recursive=True)
            verify(pending)
            os.rename(pending, target)
        finally:
            shutil.rmtree(pending, ignore_errors=True)
        log.info("artifact %s/%s: fetched from %s", stage, name, self.url)

    def _publish(self, stage: str, name: str, output: Path) -> None:
        """Upload ``output``'s files, then its manifest where none is; then drop the checkpoints and the lease."""
        verify(output)
        files = [path for path in sorted(output.rglob("*")) if path.is_file() and path.name != MANIFEST]
        for path in files:
            self.filesystem.put_file(str(path), self.address(stage, name, path.relative_to(output).as_posix()))
        try:
            self.filesystem.pipe_file(self.address(stage, name, MANIFEST), (output / MANIFEST).read_bytes(), mode="create")
        except FileExistsError:  # a writer that took over a lease this one let lapse finished first
            log.warning("artifact %s/%s: already completed in %s; keeping that one", stage, name, self.url)
        work = self.address(stage, f".{name}.work")
        if self._exists(work):
            self.filesystem.rm(work, recursive=True)
        log.info("artifact %s/%s: %d files uploaded to %s", stage, name, len(files) + 1, self.url)

    @contextlib.contextmanager
    def _lease(self, stage: str, name: str) -> Iterator[str | None]:
        """Yields this writer's name in the output's lease once it holds it, or None once the output is in
        the store."""
        lease, manifest = self.address(stage, f".{name}.lease"), self.address(stage, name, MANIFEST)
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex})
        seen, seen_since = None, time.monotonic()
        while True:
            if self._exists(manifest):
                yield None
                return
            try:
                self.filesystem.pipe_file(lease, f"{holder}\n0".encode(), mode="create")
                break
            except FileExistsError:
                pass
            try:
                current = self.filesystem.cat_file(lease)
            except FileNotFoundError:
                continue
            if current != seen:
                seen, seen_since = current, time.monotonic()
            elif time.monotonic() - seen_since > LEASE_SECONDS:
                log.warning("artifact %s/%s: its writer stopped renewing its lease %.0f s ago; taking the stage over",
                            stage, name, LEASE_SECONDS)
                self.filesystem.rm_file(lease)
                continue
            time.sleep(1.0)
        try:
            yield holder
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self.filesystem.cat_file(lease).split(b"\n")[0] == holder.encode():
                    self.filesystem.rm_file(lease)

    def _renew(self, stage: str, name: str, holder: str, renewals: int) -> bool:
        """Renew the lease; False when another writer holds it now."""
        lease = self.address(stage, f".{name}.lease")
        if self.filesystem.cat_file(lease).split(b"\n")[0] != holder.encode():
            return False
        self.filesystem.pipe_file(lease, f"{holder}\n{renewals}".encode())
        return True

    @contextlib.contextmanager
    def _uploading_checkpoints(self, stage: str, name: str, work: Path, holder: str) -> Iterator[threading.Event]:
        """Every ``RENEW_SECONDS`` while the block runs: renew the lease and upload the work directory's
        newest checkpoints. Yields an event set once the lease was lost to another writer."""
        stop, lost = threading.Event(), threading.Event()

        def loop() -> None:
            renewals, uploaded = 0, {}
            while not stop.wait(RENEW_SECONDS):
                renewals += 1
                try:
                    if not self._renew(stage, name, holder, renewals):
                        log.warning("artifact %s/%s: another writer took the lease over", stage, name)
                        lost.set()
                        return
                    self._upload_checkpoints(stage, name, work, uploaded)
                except (OSError, ValueError) as error:  # a checkpoint replaced while read, a store that hiccupped
                    log.warning("artifact %s/%s: renewing the lease or uploading checkpoints failed (%s); retrying",
                                stage, name, error)

        thread = threading.Thread(target=loop, name=f"lease-{stage}-{name}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()

    def _upload_checkpoints(self, stage: str, name: str, work: Path, uploaded: dict[str, object]) -> None:
        """Upload each fit's current epoch folder, then its ``latest`` pointer, then the spent seconds,
        skipping what ``uploaded`` (fit folder to epoch, ``SPENT_FILE`` to modification time) says is
        there already; ``uploaded`` is updated."""
        spent = work / SPENT_FILE
        if not spent.is_file() or spent.stat().st_mtime == uploaded.get(SPENT_FILE):
            return
        changed = spent.stat().st_mtime
        remote = self.address(stage, f".{name}.work")
        for pointer in sorted(work.glob("fit-*/latest")):
            fit, epoch = pointer.parent.name, pointer.read_text().strip()
            if uploaded.get(fit) == epoch:
                continue
            for path in sorted((pointer.parent / epoch).iterdir()):
                self.filesystem.put_file(str(path), f"{remote}/{fit}/{epoch}/{path.name}")
            self.filesystem.pipe_file(f"{remote}/{fit}/latest", epoch.encode())
            for old in self.filesystem.glob(f"{remote}/{fit}/epoch-*"):
                if old.rsplit("/", 1)[1] != epoch:
                    self.filesystem.rm(old, recursive=True)
            uploaded[fit] = epoch
        self.filesystem.put_file(str(spent), f"{remote}/{SPENT_FILE}")
        uploaded[SPENT_FILE] = changed

    def _restore_checkpoints(self, stage: str, name: str, work: Path) -> None:
        """Replace the local work directory by the store's when the store's has the more spent seconds."""
        remote = self.address(stage, f".{name}.work")
        if not self._exists(f"{remote}/{SPENT_FILE}"):
            return
        stored = json.loads(self.filesystem.cat_file(f"{remote}/{SPENT_FILE}"))["seconds"]
        local = json.loads((work / SPENT_FILE).read_text())["seconds"] if (work / SPENT_FILE).is_file() else -1.0
        if stored <= local:
            return
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        self.filesystem.get(remote + "/", str(work) + "/", recursive=True)
        log.info("artifact %s/%s: resuming from checkpoints in %s (%.1f s of training done)", stage, name, self.url, stored)

    def __str__(self) -> str:
        return self.url


Store = DirectoryStore | ObjectStore


def open_store(url: str | None = None) -> Store:
    """The store at ``url``, by default ``$SSL_PIPELINE_STORE`` or the home's ``artifacts``."""
    url = url or settings.store_url()
    return ObjectStore(url) if settings.is_object_url(url) else DirectoryStore(settings.local_root(url))


def local_inputs(store: Store, inputs: Mapping[str, Path]) -> dict[str, Path]:
    """``inputs`` with each artifact replaced by this machine's copy of it."""
    return {name: store.local(path) for name, path in inputs.items()}


def parent_artifact(manifest: Mapping[str, Any], name: str) -> Path:
    """This machine's copy of the artifact that ``manifest`` names as its parent ``name``."""
    return open_store().local(Path(manifest["parents"][name]["path"]))
