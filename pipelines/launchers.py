"""How a stage is run: one interface, several modes (in-process, subprocess; containers next).

A launcher takes the stage name, its validated config, the input artifact paths and the output
path, and returns once the output artifact directory exists or raises ``StageFailed``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from stages.registry import Registry
from stages.stage import get_stage

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    pass


class Launcher(Protocol):
    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path) -> None: ...


LAUNCHERS: Registry[type[Launcher]] = Registry("launcher")


@LAUNCHERS.register("in-process")
class InProcessLauncher:
    """Calls the stage's ``run`` in this process: fastest, shares the loaded libraries."""

    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path) -> None:
        get_stage(stage).run(config, inputs, output)


@LAUNCHERS.register("subprocess")
class SubprocessLauncher:
    """Runs ``python -m stages.<name>``: the exact command a container's entrypoint runs."""

    tail_lines = 40  # lines of the stage's output quoted when it fails

    def launch(self, stage: str, config: BaseModel, inputs: Mapping[str, Path], output: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=f"{stage}-config-") as scratch:
            config_file = Path(scratch) / "config.json"
            config_file.write_text(json.dumps(config.model_dump(mode="json")))
            command = [sys.executable, "-m", f"stages.{stage}", "--config", str(config_file), "--output", str(output)]
            for name, path in inputs.items():
                command += ["--input", f"{name}={path}"]
            self._run(stage, command)

    def _run(self, stage: str, command: list[str]) -> None:
        log.info("running %s", " ".join(command))
        tail: collections.deque[str] = collections.deque(maxlen=self.tail_lines)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                log.info("[%s] %s", stage, line)
        if process.returncode:
            raise StageFailed(
                f"stage {stage} exited with code {process.returncode}; last lines:\n" + "\n".join(tail)
            )
