"""Accuracy and backdoor metrics, with one documented definition each.

- ACC: top-1 accuracy on the full clean test set (all classes, the target class included).
- ASR (attack success rate): over the test images whose true label is NOT the target, each with the
  trigger applied, the fraction predicted as the target. ``asr_n`` is that denominator.
- RA (robust accuracy): over the same triggered images, the fraction predicted as their true label.
- target_acc: clean accuracy on the target class alone (a defense must not win ASR by never
  predicting the target class).
All values are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Top-1 predictions of `model` (put in eval mode, restored afterwards) on normalized inputs `x`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy_from_preds(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `preds` equal to `labels` (0.0 for an empty set)."""
    return float((preds == labels).float().mean()) if len(labels) else 0.0


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy on each class (NaN for a class absent from `labels`)."""
    out = []
    for c in range(num_classes):
        m = labels == c
        out.append(float((preds[m] == c).float().mean()) if m.any() else float("nan"))
    return out


@dataclass
class EvalData:
    """Normalized clean test inputs, and the triggered non-target test inputs with their true labels."""

    x_clean: torch.Tensor
    y_clean: torch.Tensor
    num_classes: int
    target: int | None = None
    x_poison: torch.Tensor | None = None
    y_poison: torch.Tensor | None = None  # true labels of the triggered images (all != target)

    def __post_init__(self) -> None:
        if self.x_poison is not None:
            if self.target is None or self.y_poison is None:
                raise ValueError("poisoned inputs need `target` and their true labels `y_poison`")
            if bool((self.y_poison == self.target).any()):
                raise ValueError("the ASR set must exclude images whose true label is the target")


def evaluate(model: nn.Module, data: EvalData, batch_size: int = 512) -> dict[str, float | int | list]:
    """ACC, per-class accuracy, target_acc, and (with a trigger) ASR, RA and their denominator ``asr_n``."""
    preds = predict(model, data.x_clean, batch_size)
    out: dict[str, float | int | list] = {
        "acc": accuracy_from_preds(preds, data.y_clean),
        "acc_n": len(data.y_clean),
        "per_class_acc": per_class_accuracy(preds, data.y_clean, data.num_classes),
    }
    if data.target is not None:
        out["target_acc"] = out["per_class_acc"][data.target]  # type: ignore[index]
    if data.x_poison is not None and data.y_poison is not None:
        pp = predict(model, data.x_poison, batch_size)
        out["asr"] = float((pp == data.target).float().mean()) if len(pp) else 0.0
        out["ra"] = accuracy_from_preds(pp, data.y_poison)
        out["asr_n"] = len(pp)
    return out


def detection_auc(scores_poison: np.ndarray | torch.Tensor, scores_clean: np.ndarray | torch.Tensor) -> float:
    """ROC-AUC of separating poisoned (positive) from clean inputs, higher score = more suspicious."""
    from sklearn.metrics import roc_auc_score

    sp, sc = np.asarray(scores_poison, dtype=np.float64), np.asarray(scores_clean, dtype=np.float64)
    labels = np.r_[np.ones(len(sp)), np.zeros(len(sc))]
    return float(roc_auc_score(labels, np.r_[sp, sc]))


def format_metrics(m: dict) -> str:
    """One human line: ACC/ASR/RA in %, with denominators."""
    parts = [f"ACC {100 * m['acc']:.2f}% (n={m.get('acc_n', '?')})"]
    if "asr" in m:
        parts.append(f"ASR {100 * m['asr']:.2f}% (n={m.get('asr_n', '?')})")
        parts.append(f"RA {100 * m['ra']:.2f}%")
    if "target_acc" in m:
        parts.append(f"target-class ACC {100 * m['target_acc']:.2f}%")
    return ", ".join(parts)
