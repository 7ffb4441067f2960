"""The stage contract and the thin command line every stage shares.

A stage is a module in ``stages/`` that defines its config class, ``run(config, inputs, output)``
and ``STAGE = Stage(...)``. ``run`` reads its input artifacts (through the catalog, which notes
what it read) and writes its files into ``output``; it may return extra manifest fields.
``Stage.execute`` does the rest, the same in-process, as ``python -m stages.<name>`` in a
subprocess, or as a container's entrypoint: it verifies the inputs, holds the output's lock (one
writer per output; a killed run resumes its training on the next call), gives ``run`` a temporary
directory that becomes the output only when complete, and writes the manifest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from stages.lib.artifacts import exclusive_output, file_digest, parent_entry, recording_reads, staged_output, write_manifest
from stages.lib.config import ConfigError
from stages.lib.errors import InvalidSetting, user_message

log = logging.getLogger(__name__)

STAGE_NAMES = ("split", "outliers", "baseline", "pseudo_label", "self_train", "pretrain", "fine_tune", "consistency", "evaluate",
               "predict")  # in pipeline order


@dataclass(frozen=True)
class Stage:
    name: str
    config_type: type[BaseModel]
    run: Callable[[Any, Mapping[str, Path], Path], Mapping[str, Any] | None]  # returns extra manifest fields
    inputs: tuple[str, ...]  # names of the input artifacts run() expects
    summary: str
    optional_inputs: tuple[str, ...] = ()  # inputs run() takes when its config asks for them
    sources: tuple[str, ...] = ()  # inputs that are plain files from outside the store (the archive)

    def parse_config(self, data: Mapping[str, Any], source: str) -> BaseModel:
        try:
            return self.config_type.model_validate(data)
        except ValidationError as error:
            raise ConfigError(source, error) from None

    def execute(self, config: BaseModel, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
        """Verify the input artifacts, then ``run`` into a staged copy of ``output`` while holding its
        lock (per-epoch checkpoints in the output's work directory let a rerun after a crash resume
        each training run from its last finished epoch), write the manifest and rename the copy
        into place. Returns the manifest."""
        self.check_inputs(inputs)
        inputs = {name: Path(path) for name, path in inputs.items()}
        with exclusive_output(output):
            started = dt.datetime.now(dt.timezone.utc)
            artifacts = {name: parent_entry(path) for name, path in inputs.items() if name not in self.sources}
            with recording_reads() as reads, staged_output(output) as staged:
                extra = self.run(config, inputs, staged) or {}
                # a source is hashed once run() has read it: its own checks name a bad one more plainly
                sources = {name: {"path": str(inputs[name]), "stage": "source", "digest": file_digest(inputs[name])}
                           for name in self.sources if name in inputs}
                manifest = write_manifest(staged, self.name, config.model_dump(mode="json"), artifacts | sources, started,
                                          extra={"reads": _named_reads(reads, inputs), **extra})
        log.info("stage %s: %s written in %.1f s", self.name, output, manifest["seconds"])
        return manifest

    def check_inputs(self, inputs: Mapping[str, Path]) -> None:
        missing = set(self.inputs) - set(inputs)
        unknown = set(inputs) - set(self.inputs) - set(self.optional_inputs)
        if missing or unknown:
            raise InvalidSetting(
                f"stage {self.name} takes inputs {self.describe_inputs()}; "
                f"missing: {sorted(missing) or 'none'}, unknown: {sorted(unknown) or 'none'}"
            )

    def describe_inputs(self) -> str:
        """``split, [model]``: the inputs, optional ones in brackets."""
        return ", ".join([*self.inputs, *(f"[{name}]" for name in self.optional_inputs)])


def _named_reads(reads: list[Path], inputs: Mapping[str, Path]) -> list[str]:
    """``split/labeled.parquet``: each file read, by input name and path inside that input."""
    named = []
    for path in reads:
        for name, root in inputs.items():
            if path.is_relative_to(root):
                named.append(f"{name}/{path.relative_to(root).as_posix()}")
    return named


def get_stage(name: str) -> Stage:
    if name not in STAGE_NAMES:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGE_NAMES)}")
    return importlib.import_module(f"stages.{name}").STAGE


def _input_pair(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected NAME=PATH")
    return name, Path(path)


def read_config_file(path: Path) -> dict[str, Any]:
    """A stage config file (YAML, of which JSON is a subset) as a dict."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InvalidSetting(f"config file {path} is not valid YAML or JSON ({error}); correct its syntax") from None
    if not isinstance(data, dict | None):
        raise InvalidSetting(f"config file {path} holds a {type(data).__name__}, not a mapping of fields; "
                         "write it as `field: value` lines")
    return data or {}


def main(stage: Stage, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage.name}", description=stage.summary)
    parser.add_argument("--config", type=Path, help="stage config as JSON or YAML (defaults if omitted)")
    parser.add_argument("--input", type=_input_pair, action="append", default=[],
                        help=f"input artifact NAME=PATH; takes: {stage.describe_inputs()}")
    parser.add_argument("--output", type=Path, required=True, help="output artifact directory (must not exist)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        config = stage.parse_config(read_config_file(args.config) if args.config else {}, str(args.config or "defaults"))
        started = time.perf_counter()
        manifest = stage.execute(config, dict(args.input), args.output)
    except Exception as error:
        if (message := user_message(error)) is None:
            raise  # a bug: its traceback
        print(f"error: {message}", file=sys.stderr)
        return 2
    # the last line: what was made, and the stage's own time (launchers subtract it for their overhead)
    print(json.dumps({"output": str(args.output), "digest": manifest["digest"],
                      "seconds": round(time.perf_counter() - started, 3)}))
    return 0
