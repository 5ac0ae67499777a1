"""Accuracy and backdoor metrics, with one documented definition each.

- ACC: top-1 accuracy on the full clean test set (all classes, the target class included).
- ASR (attack success rate): over the test images whose true label is NOT the target, each with the
  trigger applied, the fraction predicted as the target. ``asr_n`` is that denominator.
- RA (robust accuracy): over the same triggered images, the fraction predicted as their true label.
- target_acc: clean accuracy on the target class alone (a defense must not win ASR by never
  predicting the target class).
- pred_max_share: the largest fraction of the clean test predictions on one class (``pred_max_class``);
  ``collapsed`` when it reaches :data:`COLLAPSE_SHARE`, ``partial_collapse`` when it reaches
  :data:`PARTIAL_SHARE` but not :data:`COLLAPSE_SHARE` (:func:`collapse_level`).
- DER (:func:`der`): BackdoorBench's defense effectiveness rating of a defended model against its vanilla one.
All values are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

COLLAPSE_SHARE = 0.9
"""A model answering one class on at least this fraction of the (balanced, 10-class) clean test set is
*collapsed*: it has stopped telling the classes apart, and its low ASR (or its ACC near 10 %) says nothing
about a defense. A healthy student's largest class share is near 10 %; the target class of a backdoored
one stays near 10 % on clean images too."""

PARTIAL_SHARE = 0.4
"""A model answering one class on at least this fraction (four times a balanced share) but less than
:data:`COLLAPSE_SHARE` is *partially collapsed*: it still tells some classes apart but has merged others into
one (a held-out trojan_3x3 ZSKT+ABD student answered class 1 on 47 % of the test set at 47.9 % ACC)."""


def collapse_level(share: float | None) -> str | None:
    """``"collapsed"``, ``"partial"`` or None for a model's largest class share on the clean test set (None:
    not measured)."""
    if share is None:
        return None
    return "collapsed" if share >= COLLAPSE_SHARE else "partial" if share >= PARTIAL_SHARE else None


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


def collapse_stats(preds: torch.Tensor, num_classes: int) -> dict[str, float | int | bool]:
    """``pred_max_share`` (the largest fraction of `preds` on one class), that class (``pred_max_class``),
    ``collapsed`` and ``partial_collapse`` (:func:`collapse_level`); an empty set is neither."""
    if len(preds) == 0:
        return {"pred_max_share": 0.0, "pred_max_class": 0, "collapsed": False, "partial_collapse": False}
    counts = torch.bincount(preds.long().flatten(), minlength=num_classes)
    cls = int(counts.argmax())
    share = float(counts[cls]) / len(preds)
    level = collapse_level(share)
    return {"pred_max_share": share, "pred_max_class": cls, "collapsed": level == "collapsed",
            "partial_collapse": level == "partial"}


def der(acc_vanilla: float, asr_vanilla: float, acc_defended: float, asr_defended: float) -> float:
    """Defense effectiveness rating, in [0, 1]: ``(max(0, dASR) - max(0, dACC) + 1) / 2`` with ``d`` = vanilla
    minus defended, on fractions. 1: the ASR removed at no ACC cost; 0.5: no change (or an ASR gain paid for
    with as much ACC); an ASR *rise* counts as no gain (clipped at 0), and so does an ACC rise.

    Source: Wu et al., "BackdoorBench: A Comprehensive Benchmark of Backdoor Learning", NeurIPS 2022
    Datasets and Benchmarks (the DER of its defense evaluation, with ACC as C-Acc and ASR as ASR).
    """
    d_asr = asr_vanilla - asr_defended
    d_acc = acc_vanilla - acc_defended
    return (max(0.0, d_asr) - max(0.0, d_acc) + 1.0) / 2.0


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
    """ACC, per-class accuracy, target_acc, the collapse statistics of the clean predictions
    (:func:`collapse_stats`), and (with a trigger) ASR, RA and their denominator ``asr_n``."""
    preds = predict(model, data.x_clean, batch_size)
    out: dict[str, float | int | list] = {
        "acc": accuracy_from_preds(preds, data.y_clean),
        "acc_n": len(data.y_clean),
        "per_class_acc": per_class_accuracy(preds, data.y_clean, data.num_classes),
        **collapse_stats(preds, data.num_classes),
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
