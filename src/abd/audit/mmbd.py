"""MM-BD (Wang et al., IEEE S&P 2024): backdoor detection by the maximum achievable margin per class.

A backdoor makes its target class reachable with an unusually large margin: some input (the trigger on
anything) drives that class's logit far above all others. For every class c, MM-BD maximizes
``logit_c(x) - max_{k != c} logit_k(x)`` over images x in the valid pixel box from several random starts
and keeps the largest margin. Without a backdoor the K maxima look alike; with one, the target's stands
out. The test: fit a Gamma distribution to the K - 1 maxima other than the largest, and take the p-value of
the largest as the largest of K - 1 draws, ``p = 1 - F(r_max) ** (K - 1)``; the model is flagged when
p < 0.05. The score is -log10(p) (threshold -log10(0.05) = 1.30).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field
from tqdm import tqdm

from abd.audit.base import AuditResult, Detector, ModelSpec, register_detector
from abd.config import Config


class MMBDOptions(Config):
    """MM-BD options (CPU-sized; the published detector uses more starts and steps)."""

    starts: int = Field(8, ge=1, description="random starts per class")
    steps: int = Field(300, ge=1, description="Adam steps per start")
    lr: float = Field(0.05, gt=0, description="Adam rate on the pixels")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the verdict")


def max_margins(model: nn.Module, spec: ModelSpec, starts: int, steps: int, lr: float, device: torch.device,
                seed: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest margin reached per class (K,) and, per class, the image that reached it (K, C, H, W)."""
    k = spec.num_classes
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(k * starts, spec.channels, spec.image_size, spec.image_size, generator=g).to(device)
    x.requires_grad_(True)
    cls = torch.arange(k, device=device).repeat_interleave(starts)
    opt = torch.optim.Adam([x], lr=lr)
    model.eval().requires_grad_(False)
    onehot = nn.functional.one_hot(cls, k).bool()

    def margins() -> torch.Tensor:
        logits = model(spec.normalize(x))
        own = logits.gather(1, cls[:, None]).squeeze(1)
        other = logits.masked_fill(onehot, float("-inf")).amax(1)
        return own - other

    for _ in tqdm(range(steps), desc="mmbd", disable=not progress, leave=False):
        loss = -margins().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    with torch.no_grad():
        m = margins().view(k, starts)
    best, idx = m.max(1)
    images = x.detach().view(k, starts, *x.shape[1:])[torch.arange(k), idx.cpu()]
    return best.cpu(), images.cpu()


def order_pvalue(stats: np.ndarray) -> tuple[int, float]:
    """The largest statistic's class and its p-value under a Gamma null fitted to the others (as the
    maximum of K - 1 draws)."""
    from scipy import stats as st

    top = int(np.argmax(stats))
    rest = np.delete(stats, top)
    shift = min(0.0, float(rest.min())) - 1e-6  # margins may be negative: the Gamma lives on (0, inf)
    shape, loc, scale = st.gamma.fit(rest - shift, floc=0)
    cdf = float(st.gamma.cdf(stats[top] - shift, shape, loc=loc, scale=scale))
    p = 1.0 - cdf ** (len(stats) - 1)
    return top, max(p, 1e-300)


@register_detector("mmbd")
class MMBD(Detector):
    """MM-BD (Wang et al. S&P 2024): the per-class maximum achievable margin, and a Gamma outlier test."""

    Options = MMBDOptions
    opts: MMBDOptions

    def detect(self, model: nn.Module, spec: ModelSpec, device: torch.device, seed: int,
               progress: bool) -> AuditResult:
        o = self.opts
        best, images = max_margins(model, spec, o.starts, o.steps, o.lr, device, seed=seed, progress=progress)
        top, p = order_pvalue(best.double().numpy())
        median = int(best.argsort()[len(best) // 2])  # a typical class's max-margin image, for comparison
        return AuditResult(detector=self.name, score=-math.log10(p), threshold=-math.log10(o.alpha),
                           probability=1.0 - p,
                           target_class=top, per_class=[float(v) for v in best], statistic="max margin",
                           trigger=images[top],
                           extra={"p_value": p, "reference_image": images[median]})
