"""The KD-method interface and registry.

A method is a *synthesizer* (``synthesize()`` crafts or updates the source of samples, ``sample()`` yields
the next KD batch, in normalized model-input space) plus the student loss. Defenses attach through two
seams the engine owns: a term on the synthesis loss and the student's step (see :mod:`abd.defense.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import Field

from abd.config import Config
from abd.data.base import ImageDataset
from abd.distill.losses import kl_mean
from abd.registry import Registry

METHODS: Registry[type[KDMethod]] = Registry("KD method")


def register_method(name: str) -> Callable[[type[KDMethod]], type[KDMethod]]:
    """Class decorator: register a KD method under `name` (also its ``name`` attribute)."""
    return METHODS.register_named(name)


class MethodOptions(Config):
    """Hyperparameters every method has: the student's optimizer and the KD batch."""

    rounds: int = Field(1000, ge=1, description="synthesis rounds (ZSKT: pseudo-batches)")
    batch_size: int = Field(128, ge=1)
    kd_steps: int = Field(1, ge=1, description="student steps per synthesis round")
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(2e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    grad_clip: float | None = Field(5.0, description="student grad-norm clip (None: off)")


@dataclass
class KDContext:
    """What a method may use: models, data geometry, device, and (for clean/OOD KD) real data."""

    teacher: nn.Module
    student: nn.Module
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    dataset: ImageDataset | None = None  # the training set, for the clean-data reference only
    total_rounds: int = 1
    # (x, teacher logits on x) -> the KD target for x; set by a defense (SR's clean_targets), None: the logits
    kd_target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


SynthesisHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class KDMethod:
    """Base class of KD methods: override ``synthesize``, ``sample`` and, if needed, ``student_loss``.

    ``sv_target`` says where a defense's synthesis term attaches: "synthesis" (the synthesis loss) or
    "student" (the student loss, for methods on fixed data such as OOD). A defense's options for a method
    are the defense's own (``Defense.method_defaults``).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    sv_target: ClassVar[Literal["synthesis", "student"]] = "synthesis"
    paper_preset: ClassVar[dict[str, Any]] = {}

    def __init__(self, opts: MethodOptions, ctx: KDContext) -> None:
        self.opts, self.ctx = opts, ctx

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        """Update the sample source (generator step, pixel optimization, ...). ``hook(x, t_logits)``
        returns an extra synthesis-loss term and its logs (the SV seam). Returns logs."""
        return {}

    def sample(self) -> torch.Tensor:
        """The next KD batch (normalized inputs on the context's device)."""
        raise NotImplementedError

    def student_loss(
        self, x: torch.Tensor, t_logits: torch.Tensor, s_logits: torch.Tensor, t_feats: list, s_feats: list
    ) -> torch.Tensor:
        """Per-sample KD loss, shape (B,); the engine reduces it (mean, or SV's OOD form)."""
        from abd.distill.losses import kl_elementwise

        return kl_elementwise(t_logits, s_logits, self.opts.temperature).mean(1)

    def kd_target(self, x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        """What the student should answer on `x`: the teacher's logits, or the defense's replacement for
        them (``KDContext.kd_target``). Adversarial synthesis terms use it, so that the synthesizer seeks
        disagreement with the target the student is actually taught."""
        return t_logits if self.ctx.kd_target is None else self.ctx.kd_target(x, t_logits)

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """D(target, logits) in this method's reduction (used by Self-Retrospection)."""
        return kl_mean(target_logits, logits, self.opts.temperature)

    uses_features: ClassVar[bool] = False

    def modules(self) -> dict[str, nn.Module]:
        """Trainable modules owned by the method (checkpointed)."""
        return {}

    def optimizers(self) -> dict[str, Any]:
        """Optimizers/schedulers owned by the method (checkpointed)."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Other state to checkpoint (tensors and plain values only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore ``extra_state``."""

    def on_round_end(self, round_idx: int) -> None:
        """Called after each round (e.g. to step the method's own schedulers)."""


def resolve_options(name: str, options: dict[str, Any] | None = None, preset: str | None = None) -> MethodOptions:
    """The full, validated options of method `name`: ``options`` over its defaults or its ``paper`` preset."""
    cls = METHODS.get(name)
    base = dict(cls.paper_preset) if preset == "paper" else {}
    return cls.Options(**{**base, **(options or {})})


def create_method(name: str, ctx: KDContext, options: dict[str, Any] | None = None,
                  preset: str | None = None) -> KDMethod:
    """Build a registered method; ``options`` (validated) override its defaults or its ``paper`` preset."""
    return METHODS.get(name)(resolve_options(name, options, preset), ctx)
