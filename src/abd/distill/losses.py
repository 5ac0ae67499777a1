"""KD losses. Every KL is teacher-first: kl(t, s) = KL(p_t || p_s) (SPEC notation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def kl_elementwise(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-(sample, class) terms p_t (log p_t - log p_s) at temperature `tau`, shape (B, C)."""
    log_pt = F.log_softmax(t_logits / tau, dim=1)
    log_ps = F.log_softmax(s_logits / tau, dim=1)
    return log_pt.exp() * (log_pt - log_ps)


def kl_per_sample(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """KL(p_t || p_s) per sample at temperature `tau`, shape (B,)."""
    return kl_elementwise(t_logits, s_logits, tau).sum(1)


def kl_mean(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """ZSKT/OOD reduction: the elementwise mean over (batch, class), i.e. batch-mean KL / C, no tau^2."""
    return kl_elementwise(t_logits, s_logits, tau).mean()


def kl_batchmean(t_logits: torch.Tensor, s_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """CMI reduction: batch-mean KL times tau^2."""
    return kl_per_sample(t_logits, s_logits, tau).mean() * tau**2


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis attention: L2-normalized flatten(mean over channels of a^2)."""
    return F.normalize(a.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(s_feats: Sequence[torch.Tensor], t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared difference of attention maps (SPEC 4.1)."""
    if len(s_feats) != len(t_feats):
        raise ValueError(f"attention transfer needs as many student ({len(s_feats)}) as teacher "
                         f"({len(t_feats)}) feature layers")
    total = torch.zeros((), device=s_feats[0].device) if s_feats else torch.zeros(())
    for s, t in zip(s_feats, t_feats):
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total
