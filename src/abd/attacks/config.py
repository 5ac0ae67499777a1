"""The typed configuration of a teacher: how to build (and poison) it, validated once at the edge."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from abd.config import Config, _check_registered, registry_of


class TeacherConfig(Config):
    """How to build (and poison) a teacher. ``trigger: none`` trains a clean teacher.

    ``poison_rate`` and ``cutout``: None means the trigger's ``default_poison_rate`` / ``default_cutout``
    (see ``resolved`` and ``abd.attacks.Trigger``).
    ``trigger_options``: keyword arguments of the trigger's constructor (e.g. ``{eps: 0.2}`` for ``cl``,
    ``{colour: magenta}`` for ``smooth``). ``eval_trigger``: the trigger whose ASR is measured for a clean
    teacher (``trigger: none``), so that clean and poisoned teachers report the same metrics.
    """

    dataset: str = "mnist5k"
    data_root: str | None = None
    model: str = "lenet5"
    trigger: str = "badnet_grid"
    trigger_options: dict[str, Any] = Field(default_factory=dict,
                                            description="keyword arguments of the trigger (YAML mapping)")
    eval_trigger: str = Field("badnet_grid", description="trigger whose ASR a clean teacher reports")
    target: int = Field(0, ge=0)
    poison_rate: float | None = Field(None, ge=0.0, lt=1.0, description="None: the trigger's default")
    cutout: float | None = Field(None, ge=0.0, lt=1.0, description="Cutout square side as a fraction of "
                                 "the image side (0: off); None: the trigger's default")
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
    threads: int = Field(1, ge=0, description="CPU threads of torch (0: torch's default); small models "
                         "gain nothing from more and lose much on shared cores")

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

    @field_validator("eval_trigger")
    @classmethod
    def _eval_trigger(cls, v: str) -> str:
        return _check_registered("trigger", v)

    @field_validator("trigger_options", mode="before")
    @classmethod
    def _parse_options(cls, v: Any) -> Any:
        """Accept a YAML/JSON mapping given as text (the CLI flag ``--trigger-options "{eps: 0.2}"``)."""
        return (yaml.safe_load(v) or {}) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _trigger_options(self) -> TeacherConfig:
        if not self.trigger_options:
            return self
        if self.trigger == "none":
            raise ValueError("trigger_options need a trigger (trigger is 'none')")
        trigger_cls = registry_of("trigger").get(self.trigger)
        params = inspect.signature(trigger_cls.__init__).parameters
        allowed = sorted(set(params) - {"self", "image_size", "channels", "seed"})
        unknown = sorted(set(self.trigger_options) - set(allowed))
        if unknown:
            raise ValueError(f"trigger {self.trigger!r} has no option(s) {unknown}; its options: {allowed}")
        try:  # values are checked by the trigger itself
            trigger_cls(**self.trigger_options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid trigger_options for {self.trigger!r}: {e}") from e
        return self

    @property
    def attack_trigger(self) -> str:
        """The trigger whose ASR is measured: the teacher's own, or ``eval_trigger`` for a clean one."""
        return self.eval_trigger if self.trigger == "none" else self.trigger

    def resolved(self) -> TeacherConfig:
        """A copy with ``poison_rate`` and ``cutout`` filled in from the trigger (0 for a clean teacher)."""
        trigger_cls = None if self.trigger == "none" else registry_of("trigger").get(self.trigger)
        defaults = {
            "poison_rate": trigger_cls.default_poison_rate if trigger_cls else 0.0,
            "cutout": trigger_cls.default_cutout if trigger_cls else 0.0,
        }
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})
