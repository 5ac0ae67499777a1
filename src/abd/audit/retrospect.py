"""The retrospect detector: Self-Retrospection's trigger synthesis as a model audit.

SR looks for the small input change that makes a model answer one class for any input. As an audit it is
run once per candidate class, in the manner of Neural Cleanse (Wang et al., IEEE S&P 2019), but on inputs
synthesized from the model alone: model inversion (a batch per class, driven to that class with a
total-variation prior and, for a model with BatchNorm, its running statistics) replaces the clean data.
For every class c, a mask m and a pattern p (``x' = (1 - m) x + m p``, both in pixel space) are optimized
so that the inverted inputs of the other classes are answered c, at an L1 cost on the mask. A backdoor's
target needs a far smaller mask than the other classes. Per class, the statistic is the anomaly index of
that class's mask norm below the median (``(median - norm_c) / (1.4826 MAD)``; a class whose flips fall
short of ``flip`` counts the whole image); the score is the largest, flagged above the threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from pydantic import Field
from tqdm import tqdm

from abd.audit.base import AuditResult, Detector, ModelSpec, register_detector
from abd.config import Config


class RetrospectOptions(Config):
    """Retrospect-detector options (CPU-sized)."""

    per_class: int = Field(8, ge=1, description="inverted inputs per class")
    invert_steps: int = Field(100, ge=1, description="Adam steps of the model inversion")
    steps: int = Field(300, ge=1, description="Adam steps of the per-class mask and pattern")
    cost: float = Field(1e-3, gt=0, description="weight of the mask's L1 norm (pixels)")
    flip: float = Field(0.9, gt=0, le=1, description="share of inputs a mask must flip to count")
    threshold: float = Field(3.0, gt=0, description="flag when a class's anomaly index exceeds it (chosen on "
                             "development-seed-100 teachers: clean 2.4, BadNets-grid 3.4, trojan_wm 3.5)")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(model: nn.Module, spec: ModelSpec, per_class: int, steps: int, device: torch.device,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (K * per_class, C, H, W) the model answers with each class, and their labels:
    Adam on sigmoid logits from smooth noise, cross-entropy + total variation (+ BatchNorm statistics)."""
    from abd.models.hooks import bn_stat_hooks, remove_hooks

    k, c, size = spec.num_classes, spec.channels, spec.image_size
    g = torch.Generator().manual_seed(seed)
    noise = nn.functional.interpolate(torch.randn(k * per_class, c, 7, 7, generator=g), size=(size, size),
                                      mode="bilinear", align_corners=False)
    v = noise.to(device).requires_grad_(True)
    y = torch.arange(k, device=device).repeat_interleave(per_class)
    opt = torch.optim.Adam([v], lr=0.1)
    try:
        hooks = bn_stat_hooks(model)
    except ValueError:
        hooks = []
    try:
        for _ in range(steps):
            x = torch.sigmoid(v)
            loss = nn.functional.cross_entropy(model(spec.normalize(x)), y) + 0.5 * total_variation(x)
            if hooks:
                loss = loss + 0.1 * sum(h.r_feature for h in hooks) / len(hooks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        remove_hooks(hooks)
    return torch.sigmoid(v).detach(), y


def reverse_masks(model: nn.Module, spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, steps: int, cost: float,
                  flip: float = 0.9, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class c, the smallest mask (K, 1, H, W) found, with its pattern (K, C, H, W), that makes at least
    `flip` of the inputs of other classes answer c, and the share it flipped (K,; the last share where no
    mask got there). All classes are optimized in one batch; each class's L1 weight is adapted as in Neural
    Cleanse (x1.5 every 10 steps while the class flips enough, /1.5 while it does not)."""
    k, n, size = spec.num_classes, len(x), spec.image_size
    m_raw = torch.full((k, 1, size, size), -3.0, device=x.device, requires_grad=True)
    p_raw = torch.zeros(k, spec.channels, size, size, device=x.device, requires_grad=True)
    target = torch.arange(k, device=x.device).repeat_interleave(n)
    other = (y.repeat(k) != target).float()
    per_class_other = other.view(k, n).sum(1).clamp_min(1)
    weights = torch.full((k,), cost, device=x.device)
    opt = torch.optim.Adam([m_raw, p_raw], lr=0.1)
    best_m = torch.ones(k, 1, size, size, device=x.device)
    best_p = torch.zeros(k, spec.channels, size, size, device=x.device)
    best_flip = torch.zeros(k, device=x.device)
    found = torch.zeros(k, dtype=torch.bool, device=x.device)
    for step in tqdm(range(steps + 1), desc="retrospect", disable=not progress, leave=False):
        m, p = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
        xs = (1 - m[:, None]) * x[None] + (m * p)[:, None]  # (K, n, C, H, W)
        logits = model(spec.normalize(xs.flatten(0, 1)))
        with torch.no_grad():
            flipped = ((logits.argmax(1) == target).float() * other).view(k, n).sum(1) / per_class_other
            norms = m.flatten(1).sum(1)
            better = (flipped >= flip) & (~found | (norms < best_m.flatten(1).sum(1)))
            best_m[better], best_p[better] = m[better], p[better]
            best_flip = torch.where(better | ~found, flipped, best_flip)
            found |= better
            if step % 10 == 9:
                weights = torch.where(flipped >= flip, weights * 1.5, weights / 1.5)
        if step == steps:
            break
        ce = nn.functional.cross_entropy(logits, target, reduction="none")
        loss = ((ce * other).view(k, n).sum(1) / per_class_other).sum() + (weights * m.flatten(1).sum(1)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return best_m.detach(), best_p.detach(), best_flip


def anomaly_below_median(norms: torch.Tensor) -> torch.Tensor:
    """Neural Cleanse's anomaly index, signed so that a norm below the median is positive."""
    med = norms.median()
    mad = 1.4826 * (norms - med).abs().median()
    return (med - norms) / mad.clamp_min(1e-6)


@register_detector("retrospect")
class Retrospect(Detector):
    """Per-class trigger synthesis on inverted inputs: a backdoor's target needs an unusually small mask."""

    Options = RetrospectOptions
    opts: RetrospectOptions

    def detect(self, model: nn.Module, spec: ModelSpec, device: torch.device, seed: int,
               progress: bool) -> AuditResult:
        o = self.opts
        model.eval().requires_grad_(False)
        x, y = invert(model, spec, o.per_class, o.invert_steps, device, seed)
        masks, patterns, flipped = reverse_masks(model, spec, x, y, o.steps, o.cost, o.flip, progress)
        area = spec.image_size ** 2
        norms = torch.where(flipped >= o.flip, masks.flatten(1).sum(1), torch.full_like(flipped, float(area)))
        index = anomaly_below_median(norms.cpu())
        top = int(index.argmax())
        score = float(index[top])
        return AuditResult(detector=self.name, score=score, threshold=o.threshold,
                           probability=1.0 / (1.0 + math.exp(-(score - o.threshold))),
                           target_class=top, per_class=[float(v) for v in index],
                           statistic="anomaly index of the mask norm", trigger=(masks[top] * patterns[top]).cpu(),
                           mask=masks[top].cpu(),
                           extra={"mask_norms": [float(v) for v in norms], "flipped": [float(v) for v in flipped],
                                  "reference_image": x[y != top][0].cpu()})
