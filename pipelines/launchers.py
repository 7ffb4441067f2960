"""How a stage is run: one interface, three modes (in-process, subprocess, docker).

A launcher takes the stage name, its validated config, the input artifact paths, the output
path and the resources the run asks for, and returns once the output artifact directory exists
or raises ``StageFailed``.

The docker launcher talks to the engine through the Docker SDK rather than a Prefect work pool:
it must work in the embedded mode with no Prefect server, a container starts in ~0.25 s where a
work-pool flow run takes 10+ s, and the artifacts already travel through the mounted store.
Whole pipeline runs go to containers the Prefect way: deployments on a docker (or Kubernetes)
work pool, see ``pipelines.deployments``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

from stages.lib.config import StrictModel
from stages.lib.errors import UserError
from stages.lib.registry import Registry
from stages.lib.stage import get_stage

log = logging.getLogger(__name__)


class ResourcesConfig(StrictModel):
    """What each stage container asks of the engine; the in-process and subprocess launchers run
    with whatever their process has. Not part of any cache key: results do not depend on it."""

    gpus: int = Field(0, ge=0, description="GPUs reserved per stage container")
    cpus: float | None = Field(None, gt=0, description="CPU limit per stage container; None = no limit")
    memory_gb: float | None = Field(None, gt=0, description="memory limit per stage container, GiB")


class StageFailed(RuntimeError):
    """A stage's process or container ended with an error: a bug or a crash, its last lines say which."""


class StageRefused(UserError, StageFailed):
    """A stage refused its input or config (exit code 2); the message is the stage's own."""


REFUSED = 2  # the exit code of a stage that refused its input or config (stages.lib.stage.main)


@dataclass(frozen=True)
class Launched:
    """Times of one launch: from start to exit, and the stage's own ``run`` within it."""

    wall_seconds: float
    stage_seconds: float

    @property
    def overhead_seconds(self) -> float:
        """What the launch mode costs: process start, imports, container start and removal."""
        return self.wall_seconds - self.stage_seconds


class Launcher(Protocol):
    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path,
               resources: ResourcesConfig) -> Launched: ...


LAUNCHERS: Registry[type[Launcher]] = Registry("launcher")


@LAUNCHERS.register("in-process")
class InProcessLauncher:
    """Executes the stage in this process: fastest, shares the loaded libraries."""

    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path,
               resources: ResourcesConfig) -> Launched:
        started = time.perf_counter()
        get_stage(stage).execute(config, inputs, output)
        seconds = time.perf_counter() - started
        return Launched(seconds, seconds)


@LAUNCHERS.register("subprocess")
class SubprocessLauncher:
    """Runs ``python -m stages.<name>``: the exact command a container's entrypoint runs."""

    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path,
               resources: ResourcesConfig) -> Launched:
        with tempfile.TemporaryDirectory(prefix=f"{stage}-config-") as scratch:
            config_file = write_config(config, Path(scratch))
            command = [sys.executable, "-m", f"stages.{stage}", *stage_arguments(config_file, inputs, output)]
            log.info("running %s", " ".join(command))
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            started = time.perf_counter()
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env) as process:
                tail = relay(stage, process.stdout)
        return finished(stage, process.returncode, tail, time.perf_counter() - started)


@LAUNCHERS.register("docker")
class DockerLauncher:
    """Runs the stage image's entrypoint (``IMAGE STAGE --config ... --output ...``) in a container.

    Inputs are mounted read-only and the output's parent read-write, each at its own host path, so
    the stage sees the same paths as the flow. The container runs as the caller's user (files in
    the store stay the caller's), is limited to ``resources`` and is always removed.
    Images come from the environment: ``SSL_PIPELINE_STAGE_IMAGE`` and, for runs that ask for
    GPUs, ``SSL_PIPELINE_GPU_STAGE_IMAGE``.
    """

    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path,
               resources: ResourcesConfig) -> Launched:
        for name, path in inputs.items():  # the engine would mount a missing path as a new empty folder
            if not Path(path).exists():
                raise StageRefused(f"stage {stage}: input {name} = {path} does not exist")
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{stage}-config-") as scratch:
            config_file = write_config(config, Path(scratch))
            mounts = [*same_path_mounts([*inputs.values(), Path(scratch)], read_only=True),
                      *same_path_mounts([output.parent], read_only=False)]
            command = [stage, *stage_arguments(config_file, inputs, output)]
            started = time.perf_counter()
            exit_code, tail = run_container(stage, command, mounts, resources)
        return finished(stage, exit_code, tail, time.perf_counter() - started)


def run_container(stage: str, command: list[str], mounts: list, resources: ResourcesConfig) -> tuple[int, list[str]]:
    """Create, start, relay the log of, wait for and always remove one stage container."""
    import docker  # only the docker launcher needs the engine

    image = stage_image(resources)
    try:
        container = docker.from_env().containers.create(
            image, command, mounts=mounts, user=f"{os.getuid()}:{os.getgid()}",
            labels={"ssl-pipeline.stage": stage}, **container_limits(resources))
    except docker.errors.ImageNotFound:
        raise StageRefused(f"stage image {image} not found: build it (README, Containers) or set "
                          "SSL_PIPELINE_STAGE_IMAGE") from None
    try:
        container.start()
        tail = relay(stage, (chunk.decode(errors="replace") for chunk in container.logs(stream=True)))
        return container.wait()["StatusCode"], tail
    except docker.errors.APIError as error:
        if resources.gpus and "device driver" in str(error):
            raise StageRefused(
                f"stage {stage} asks for {resources.gpus} GPU(s) (resources.gpus) but the Docker engine has "
                f"no GPU runtime ({error.explanation}): install the NVIDIA Container Toolkit, or set "
                "resources.gpus=0"
            ) from None
        raise
    finally:
        container.remove(force=True)


def same_path_mounts(paths: Iterable[Path], read_only: bool) -> list:
    """Bind mounts at the paths the flow passes (symlinks resolved for the source only)."""
    from docker.types import Mount

    return [Mount(str(Path(path).absolute()), str(Path(path).resolve()), type="bind", read_only=read_only)
            for path in paths]


def stage_image(resources: ResourcesConfig) -> str:
    if resources.gpus:
        return os.environ.get("SSL_PIPELINE_GPU_STAGE_IMAGE", "ssl-pipeline/stage:gpu")
    return os.environ.get("SSL_PIPELINE_STAGE_IMAGE", "ssl-pipeline/stage:cpu")


def container_limits(resources: ResourcesConfig) -> dict:
    """Docker SDK keyword arguments for the CPU, memory and GPU requests of ``resources``.

    Plain JSON values (a device request as a dict), so that docker work-pool job variables reuse them.
    """
    limits: dict = {}
    if resources.cpus:
        limits["nano_cpus"] = int(resources.cpus * 1e9)
    if resources.memory_gb:
        limits["mem_limit"] = int(resources.memory_gb * 2**30)  # bytes
    if resources.gpus:
        limits["device_requests"] = [{"count": resources.gpus, "capabilities": [["gpu"]]}]
    return limits


def write_config(config: BaseModel, folder: Path) -> Path:
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    return config_file


def stage_arguments(config_file: Path, inputs: Mapping[str, Path], output: Path) -> list[str]:
    """The stage CLI's arguments (after ``python -m stages.<name>`` or the image's entrypoint)."""
    arguments = ["--config", str(config_file), "--output", str(output)]
    for name, path in inputs.items():
        arguments += ["--input", f"{name}={path}"]
    return arguments


TAIL_LINES = 40  # lines of a failed stage's output quoted in the error


def relay(stage: str, chunks: Iterable[str]) -> list[str]:
    """Log a stage's output line by line (reaching the Prefect task log); return the last lines. A refusal
    (``error: ...``) is not logged: ``finished`` raises it, and the command shows it once."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    pending, refusal = "", False
    for chunk in chunks:
        *lines, pending = (pending + chunk).split("\n")
        for line in lines:
            refusal = refusal or line.startswith("error: ")
            tail.append(line.rstrip())
            if not refusal:
                log.info("[%s] %s", stage, line.rstrip())
    if pending:
        tail.append(pending)
        if not refusal:
            log.info("[%s] %s", stage, pending)
    return list(tail)


def finished(stage: str, exit_code: int, tail: list[str], wall_seconds: float) -> Launched:
    """Fail with the log tail on a non-zero exit; else the times, the stage's own from its last line."""
    errors = [i for i, line in enumerate(tail) if line.startswith("error: ")]
    if exit_code == REFUSED and errors:
        raise StageRefused(f"stage {stage}: " + "\n".join(tail[errors[-1]:]).removeprefix("error: "))
    if exit_code:
        raise StageFailed(f"stage {stage} exited with code {exit_code}; last lines:\n" + "\n".join(tail))
    launched = Launched(wall_seconds, json.loads(tail[-1])["seconds"])
    log.info("stage %s: %.2f s start to exit, %.2f s in the stage, %.2f s overhead", stage, wall_seconds,
             launched.stage_seconds, launched.overhead_seconds)
    return launched
