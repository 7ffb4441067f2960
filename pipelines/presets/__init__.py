"""The presets: YAML overrides of the stage configs' defaults, one file each, read without loading the
stages (the command line lists them before any stage is imported)."""

from __future__ import annotations

from importlib import resources
from typing import Any, Literal, get_args

import yaml

from stages.lib.errors import InvalidSetting

Preset = Literal["smoke", "quick", "seed", "gpu", "ssl-gpu"]  # the files beside this module
PRESETS = get_args(Preset)
DEFAULT_PRESET: Preset = "quick"  # the command line's and the flows'


def preset_overrides(name: str) -> dict[str, Any]:
    """The override dict of a preset, as stored in ``pipelines/presets/<name>.yaml``."""
    if name not in PRESETS:
        raise InvalidSetting(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text()) or {}
