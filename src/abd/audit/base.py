"""The audit interface: a detector looks at a model alone and says whether it is backdoored.

A detector gets the model, its input shape, its normalization and its number of classes, nothing else (no
data); it returns an :class:`AuditResult`: a score (higher: more likely backdoored) with the threshold its
verdict uses, a suspected target class with the per-class statistic behind it, and, where the method
yields one, a suspect trigger in pixel space.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from abd.config import Config
from abd.registry import Registry

DETECTORS: Registry[type[Detector]] = Registry("detector")


def register_detector(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: register a detector under `name` (also its ``name`` attribute)."""
    return DETECTORS.register_named(name)


@dataclass
class ModelSpec:
    """What a detector knows about the model besides its weights."""

    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel-space images in [0, 1] -> the model's inputs."""
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s


@dataclass
class AuditResult:
    """A detector's answer. ``per_class``: its statistic per class (the suspect is the largest)."""

    detector: str
    score: float
    threshold: float
    probability: float  # the detector's probability that the model is backdoored (for cross-entropy)
    target_class: int
    per_class: list[float]
    statistic: str
    seconds: float = 0.0
    trigger: torch.Tensor | None = None  # (channels, H, W) in pixel space, where the method yields one
    mask: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def backdoored(self) -> bool:
        return self.score > self.threshold

    def to_json(self) -> dict[str, Any]:
        return {"backdoored": self.backdoored, "score": self.score, "threshold": self.threshold,
                "probability": self.probability,
                "target_class": self.target_class, "detector": self.detector, "statistic": self.statistic,
                "per_class": self.per_class, "seconds": self.seconds,
                **{k: v for k, v in self.extra.items() if not isinstance(v, torch.Tensor)}}


class Detector:
    """Base class of detectors: override ``run``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[Config]] = Config

    def __init__(self, opts: Config | None = None) -> None:
        self.opts = opts if opts is not None else self.Options()

    def run(self, model: nn.Module, spec: ModelSpec, device: torch.device, seed: int = 0,
            progress: bool = False) -> AuditResult:
        """Audit `model` (its ``seconds`` measured here)."""
        start = time.perf_counter()
        result = self.detect(model, spec, device, seed, progress)
        result.seconds = time.perf_counter() - start
        return result

    def detect(self, model: nn.Module, spec: ModelSpec, device: torch.device, seed: int,
               progress: bool) -> AuditResult:
        """The detector's work: override this."""
        raise NotImplementedError


def create_detector(name: str, options: dict[str, Any] | None = None) -> Detector:
    """A registered detector with its options validated."""
    cls = DETECTORS.get(name)
    return cls(cls.Options.model_validate(options or {}))
