"""The stage contract and the thin command line every stage shares.

A stage is a module in ``stages/`` that defines ``STAGE = Stage(...)``. Its ``run(config,
inputs, output)`` reads input artifact directories, writes one output artifact directory
(atomically, with a manifest) and returns that manifest. ``Stage.execute`` is how launchers call
it — the same in-process, as ``python -m stages.<name>`` in a subprocess, or as a container's
entrypoint: one writer per output, and a killed run resumes its training on the next call.
"""

from __future__ import annotations

import argparse
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

from stages.artifacts import exclusive_output
from stages.config import ConfigError

STAGE_NAMES = ("split", "outliers", "baseline", "pseudo_label", "self_train", "pretrain", "fine_tune", "consistency", "evaluate")  # in pipeline order


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    config_type: type[BaseModel]
    inputs: tuple[str, ...]  # names of the input artifacts run() expects
    run: Callable[[Any, Mapping[str, Path], Path], dict[str, Any]]
    optional_inputs: tuple[str, ...] = ()  # inputs run() takes when its config asks for them

    def parse_config(self, data: Mapping[str, Any], source: str) -> BaseModel:
        try:
            return self.config_type.model_validate(data)
        except ValidationError as error:
            raise ConfigError(source, error) from None

    def execute(self, config: BaseModel, inputs: Mapping[str, Path], output: Path) -> dict[str, Any]:
        """``run`` holding ``output``'s lock, with per-epoch checkpoints in the output's work
        directory: a rerun after a crash resumes each training run from its last finished epoch."""
        self.check_inputs(inputs)
        with exclusive_output(output):
            return self.run(config, inputs, output)

    def check_inputs(self, inputs: Mapping[str, Path]) -> None:
        missing = set(self.inputs) - set(inputs)
        unknown = set(inputs) - set(self.inputs) - set(self.optional_inputs)
        if missing or unknown:
            raise ValueError(
                f"stage {self.name} takes inputs {self.describe_inputs()}; "
                f"missing: {sorted(missing) or 'none'}, unknown: {sorted(unknown) or 'none'}"
            )

    def describe_inputs(self) -> str:
        """``split, [model]``: the inputs, optional ones in brackets."""
        return ", ".join([*self.inputs, *(f"[{name}]" for name in self.optional_inputs)])


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
        raise ValueError(f"config file {path} is not valid YAML or JSON ({error}); correct its syntax") from None
    if not isinstance(data, dict | None):
        raise ValueError(f"config file {path} holds a {type(data).__name__}, not a mapping of fields; "
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
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # the last line: what was made, and the stage's own time (launchers subtract it for their overhead)
    print(json.dumps({"output": str(args.output), "digest": manifest["digest"],
                      "seconds": round(time.perf_counter() - started, 3)}))
    return 0
