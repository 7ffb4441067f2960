"""What every config class of the stages shares: frozen, strict pydantic models, one error for a
config that fails validation, and the two operations on config data (merging overrides, naming
fields by dotted path).

Each library component declares its own settings beside its code (the training loop's
``TrainConfig``, the networks' ``ArchitectureConfig``, each SSL method's and each pretraining
objective's config), and each stage's config class, in the stage's module, composes them.
Infrastructure (paths, tracking URI, launcher, image names) never lives in a config: it comes from
the environment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from stages.lib.errors import UserError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(UserError, ValueError):
    """A configuration that failed validation, with one line per bad field."""

    def __init__(self, source: str, error: ValidationError):
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            + ("not a field here: remove it or correct its spelling" if e["type"] == "extra_forbidden" else e["msg"])
            + (f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else "")
            for e in error.errors()
        ]
        super().__init__(f"invalid configuration in {source}:\n" + "\n".join(lines)
                         + "\n`ssl-pipeline config --preset NAME` prints every field with its valid value")


def flat_fields(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a nested config by dotted field name (as ``--set`` and MLflow params name them)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flat_fields(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
