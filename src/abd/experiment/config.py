"""Typed configuration, validated once at the edge (YAML files and CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
            loaded = yaml.safe_load(p.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{p}: expected a mapping of option: value")
            data.update(loaded)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _check_registered(kind: str, name: str) -> str:
    from abd.registry import Registry

    registries: dict[str, Registry] = {}
    if kind == "dataset":
        from abd.data import DATASETS

        registries["dataset"] = DATASETS
    elif kind == "model":
        from abd.models import MODELS

        registries["model"] = MODELS
    elif kind == "trigger":
        from abd.attacks import TRIGGERS

        registries["trigger"] = TRIGGERS
    registries[kind].get(name)  # raises UnknownNameError with a suggestion
    return name


class TeacherConfig(Config):
    """How to build (and poison) a teacher. ``trigger: none`` trains a clean teacher."""

    dataset: str = "mnist5k"
    data_root: str | None = None
    model: str = "lenet5"
    trigger: str = "badnet_grid"
    target: int = Field(0, ge=0)
    poison_rate: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    augment: bool = True
    surrogate_epochs: int = Field(4, ge=1, description="epochs of the clean surrogate for clean-label PGD")
    seed: int = 0
    device: str = "auto"

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _check_registered("dataset", v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _check_registered("model", v)

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        return v if v == "none" else _check_registered("trigger", v)
