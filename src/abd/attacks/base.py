"""Trigger base classes and the trigger registry.

Every trigger maps uint8 NHWC images to uint8 NHWC images of the same shape, deterministically.
Patch, blend and watermark triggers are one formula (BackdoorBox): x' = (1 - w) * x + w * pattern, with a
pattern and a per-pixel weight w in [0, 1]; additive and special triggers are a few more classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from abd.registry import Registry

TRIGGERS: Registry[type[Trigger]] = Registry("trigger")
register_trigger = TRIGGERS.register


class Trigger(ABC):
    """A backdoor trigger for images of size ``image_size`` x ``image_size`` with ``channels`` channels.

    ``clean_label`` triggers poison target-class images and keep their labels; others relabel
    non-target images to the target. ``seed`` fixes procedurally generated patterns.

    Teacher defaults (``TeacherConfig`` uses them unless told otherwise): ``default_poison_rate``, the
    poison rate, N = int(rate * len(train)) images, 0.1 as in the paper; and
    ``default_cutout``, the side of the Cutout square (DeVries & Taylor 2017) of the teacher's
    augmentation, as a fraction of the image side (0: none).
    """

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False
    needs_surrogate: ClassVar[bool] = False
    default_poison_rate: ClassVar[float] = 0.1
    default_cutout: ClassVar[float] = 0.0

    def __init__(self, image_size: int = 32, channels: int = 3, seed: int = 0) -> None:
        if image_size < 4 or channels not in (1, 3):
            raise ValueError(
                f"trigger needs image_size >= 4 and 1 or 3 channels, got {image_size}, {channels}"
            )
        self.image_size, self.channels, self.seed = image_size, channels, seed

    @abstractmethod
    def apply(self, images: np.ndarray) -> np.ndarray:
        """Test-time trigger: uint8 (N, H, W, C) -> uint8 (N, H, W, C)."""

    def poison(self, images: np.ndarray, **context) -> np.ndarray:
        """Training-time trigger (the clean-label attack overrides it); defaults to ``apply``."""
        return self.apply(images)

    def footprint(self) -> np.ndarray | None:
        """Boolean (H, W) mask of the pixels the trigger may change, or None if it may change any pixel."""
        return None
