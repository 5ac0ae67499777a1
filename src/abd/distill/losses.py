"""KD losses. Every KL is teacher-first: kl(t, s) = KL(p_t || p_s) (the paper's notation)."""

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
    """Sum over layers of the mean squared difference of attention maps."""
    if len(s_feats) != len(t_feats):
        raise ValueError(f"attention transfer needs as many student ({len(s_feats)}) as teacher "
                         f"({len(t_feats)}) feature layers")
    total = torch.zeros((), device=s_feats[0].device) if s_feats else torch.zeros(())
    for s, t in zip(s_feats, t_feats):
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total


def l1_per_sample(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's logit discrepancy per sample: mean over classes of |t - s|, shape (B,)."""
    return (t_logits - s_logits).abs().mean(1)


def l1_mean(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's logit discrepancy: the elementwise mean of |t - s| (``F.l1_loss``)."""
    return (t_logits - s_logits).abs().mean()


def js_divergence(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 3.0) -> torch.Tensor:
    """DeepInversion's Jensen-Shannon divergence (CMI codebase ``jsdiv``): batch-mean of
    0.5 KL(M || P) + 0.5 KL(M || Q), M = (P + Q) / 2, with P, Q the softmaxes at ``tau`` clamped to
    [0.01, 0.99] inside the logarithms."""
    p, q = F.softmax(s_logits / tau, dim=1), F.softmax(t_logits / tau, dim=1)
    m = 0.5 * (p + q)
    p, q, m = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99), m.clamp(0.01, 0.99)
    b = s_logits.shape[0]
    return 0.5 * (m * (m.log() - p.log())).sum() / b + 0.5 * (m * (m.log() - q.log())).sum() / b


def agreement_kl(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """CMI's adversarial quantity: batch mean of KL(p_t || p_s) over samples where the argmaxes agree
    (zero elsewhere). Synthesis *maximizes* it (adds ``-adv * agreement_kl``)."""
    mask = (s_logits.argmax(1) == t_logits.argmax(1)).float()
    return (kl_per_sample(t_logits, s_logits) * mask).mean()


def total_variation_l1(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's L1 image prior: sum over the 4 neighbour directions of the mean |difference|."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.abs().mean() + d2.abs().mean() + d3.abs().mean() + d4.abs().mean()


def class_balance(logits: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: sum_c pbar_c log pbar_c with pbar the batch-mean softmax (the
    negative entropy of the batch's class distribution; minimizing it balances the classes)."""
    pbar = F.softmax(logits, dim=1).mean(0)
    return (pbar * torch.log(pbar.clamp_min(1e-12))).sum()
