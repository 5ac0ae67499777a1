"""Typed options, validated once at the edge (YAML files and CLI flags): the base class every option set
of the package derives from, and the lookup of names in the component registries."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

from abd.registry import Registry

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def load(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
        """Build from an optional YAML file (``yaml.safe_load``) with keyword overrides on top."""
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"config file not found: {p}")
            try:
                loaded = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as e:  # e.g. a syntax error, or a !!python tag safe_load refuses
                raise ValueError(f"{p} is not a valid YAML file of options: {e}") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"{p}: expected a mapping of option: value")
            data.update(loaded)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# kind -> (module, registry attribute); imported lazily so that loading a config stays cheap
_REGISTRIES: dict[str, tuple[str, str]] = {
    "dataset": ("abd.data", "DATASETS"),
    "model": ("abd.models", "MODELS"),
    "trigger": ("abd.attacks", "TRIGGERS"),
    "method": ("abd.distill", "METHODS"),
    "defense": ("abd.defense", "DEFENSES"),
    "detector": ("abd.audit", "DETECTORS"),
}


def registry_of(kind: str) -> Registry:
    """The registry of ``kind`` ("dataset", "model", "trigger", "method", "defense" or "detector")."""
    module, attr = _REGISTRIES[kind]
    return getattr(importlib.import_module(module), attr)


def _check_registered(kind: str, name: str) -> str:
    registry_of(kind).get(name)  # raises UnknownNameError with a suggestion
    return name
