"""Poisoned training sets (dirty- and clean-label) and the triggered test set behind ASR.

As in the paper's code, N = int(rate * len(train)). Dirty-label triggers stamp the first N images (index order)
whose label differs from the target and relabel them to the target; clean-label triggers poison
target-class images only (N capped at their count) and keep the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from abd.attacks.base import Trigger
from abd.data.base import ImageDataset
from abd.data.transforms import Normalizer, to_float
from abd.metrics import EvalData


@dataclass
class PoisonedSet:
    """A training set with `indices` poisoned; ``x``/``y`` are copies, the inputs are untouched."""

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    target: int


def poison_indices(y: np.ndarray, target: int, rate: float, clean_label: bool) -> np.ndarray:
    """Indices to poison: the first int(rate * len(y)) eligible ones in index order."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"poison rate must be in [0, 1), got {rate}")
    n = int(rate * len(y))
    eligible = np.flatnonzero(y == target) if clean_label else np.flatnonzero(y != target)
    return eligible[: min(n, len(eligible))]


def poison_training_set(
    x: np.ndarray, y: np.ndarray, trigger: Trigger, target: int, rate: float, **context
) -> PoisonedSet:
    """Apply the training-time trigger to the chosen images (``context`` goes to ``trigger.poison``)."""
    idx = poison_indices(y, target, rate, trigger.clean_label)
    xp, yp = x.copy(), y.copy()
    if len(idx):
        xp[idx] = trigger.poison(x[idx], **context)
        if not trigger.clean_label:
            yp[idx] = target
    return PoisonedSet(xp, yp, idx, target)


def make_eval_data(ds: ImageDataset, trigger: Trigger | None, target: int | None) -> EvalData:
    """Normalized clean test set plus, with a trigger, every non-target test image triggered."""
    norm = Normalizer(ds.mean, ds.std)
    x_clean = norm(to_float(ds.x_test))
    y_clean = torch.as_tensor(ds.y_test)
    if trigger is None or target is None:
        return EvalData(x_clean, y_clean, ds.num_classes, target)
    keep = ds.y_test != target
    x_poison = norm(to_float(trigger.apply(ds.x_test[keep])))
    return EvalData(x_clean, y_clean, ds.num_classes, target, x_poison, torch.as_tensor(ds.y_test[keep]))
