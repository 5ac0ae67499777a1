"""The in-memory image dataset every loader returns, and the dataset registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from abd.registry import Registry

DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")
register_dataset = DATASETS.register
DIGITS_ADV_EPS = 0.3  # the customary L-infinity budget for MNIST-like digits (Madry et al. 2018)


class DataFormatError(ValueError):
    """Missing or malformed data; the message names the expected layout."""


@dataclass
class ImageDataset:
    """A classification dataset held in memory as uint8 NHWC arrays.

    ``mean``/``std`` are per-channel statistics in [0, 1] units used to normalize model inputs;
    ``hflip`` says whether horizontal flips are a valid augmentation (off for digits). ``adv_eps`` is the
    data's customary L-infinity perturbation budget in [0, 1] units: 16/255 for natural images (the
    clean-label reference), 0.3 for handwritten digits (Madry et al. 2018); the ``cl`` attack uses it.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True
    crop_padding: int = 4
    adv_eps: float = 16 / 255
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise DataFormatError(f"{self.name}: x_{split} must be uint8 NHWC, got {x.dtype} {x.shape}")
            if len(x) != len(y):
                raise DataFormatError(f"{self.name}: {len(x)} {split} images but {len(y)} labels")
            setattr(self, f"y_{split}", np.asarray(y, dtype=np.int64))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataFormatError(f"{self.name}: mean/std need {self.channels} channels")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[3])

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"{self.image_size}x{self.image_size}x{self.channels}, {self.num_classes} classes"
        )


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units."""
    f = x.astype(np.float64) / 255.0
    return tuple(float(v) for v in f.mean(axis=(0, 1, 2))), tuple(float(v) for v in f.std(axis=(0, 1, 2)))


def seeded_split(n: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split of ``range(n)`` into (shuffled) train and (sorted) test indices.

    The train order is a seeded permutation, so "the first N images" (poisoning) is a random sample
    even when the source file is sorted by class.
    """
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], np.sort(perm[:n_test])


def load_dataset(name: str, root: str | Path | None = None, **kwargs) -> ImageDataset:
    """Load a registered dataset; ``root`` is required for the real formats (cifar10, gtsrb, folder)."""
    loader = DATASETS.get(name)
    return loader(root=root, **kwargs)
