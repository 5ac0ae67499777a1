"""Data-Free Adversarial Distillation, DFAD (Fang et al. 2019), SPEC 4.2.

A min-max game on the L1 distance between teacher and student logits: the generator seeks images where
they disagree most (maximizing the mean |T(x) - S(x)|), the student minimizes it on fresh generator
batches.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from abd.distill.base import KDMethod, MethodOptions, SynthesisHook, register_method
from abd.distill.losses import l1_mean, l1_per_sample
from abd.distill.synthesis import frozen, generator_step, normalized_generator


class DFADOptions(MethodOptions):
    """DFAD options; CPU defaults for LeNet-5 -> LeNet-5-half (the paper preset: the CMI codebase's
    CIFAR-10 script, batch 256, 5 student steps per generator step, ``LargeGenerator`` nz 256)."""

    rounds: int = Field(1000, ge=1, description="generator steps (each followed by kd_steps student steps)")
    batch_size: int = 64
    kd_steps: int = Field(5, ge=1, description="student steps per round")
    fresh_samples: bool = Field(True, description="a fresh generator batch for every student step (the CMI "
                                "code); False: the generator step's batch is reused (as in ZSKT)")
    gen_steps: int = Field(1, ge=1, description="generator steps per round")
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    lr_g: float = Field(1e-3, gt=0)
    lr_g_cosine: bool = Field(True, description="cosine-anneal lr_g over the rounds (the CMI code: constant)")
    z_dim: int = Field(100, ge=1)
    generator: Literal["zskt", "large", "cmi"] = Field("large", description="registered generator")
    gen_width: int = Field(8, ge=4, description="generator width (ngf; paper: 64)")
    adv: float = Field(1.0, gt=0, description="weight of the adversarial L1 term in the generator loss")
    grad_clip: float | None = 5.0


@register_method("dfad")
class DFAD(KDMethod):
    """DFAD: an adversarial generator on the L1 logit discrepancy; L1 student (Fang et al. 2019)."""

    Options = DFADOptions
    paper_preset = {
        "rounds": 200 * (400 // 5), "batch_size": 256, "kd_steps": 5, "gen_steps": 1, "optimizer": "sgd",
        "lr": 0.1, "weight_decay": 1e-4, "lr_g": 1e-3, "lr_g_cosine": False,
        "z_dim": 256, "generator": "large", "gen_width": 64,
        "adv": 1.0, "grad_clip": None,
    }

    def __init__(self, opts: DFADOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: DFADOptions = opts
        self.generator = normalized_generator(opts.generator, opts.z_dim, opts.gen_width, ctx)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=opts.lr_g, betas=(0.5, 0.999))
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=opts.rounds) \
            if opts.lr_g_cosine else None
        self.x: torch.Tensor | None = None  # the last generator step's batch

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        ctx, o = self.ctx, self.opts
        self.generator.train()
        logs: dict[str, float] = {}
        with frozen(ctx.student):
            for _ in range(o.gen_steps):
                z = torch.randn(o.batch_size, o.z_dim, device=ctx.device)
                x = self.generator(z)
                self.x = x.detach()
                t = ctx.teacher(x)
                s = ctx.student(x)
                loss = -o.adv * l1_mean(t, s)
                logs["loss_g"] = float(loss.detach())
                generator_step(loss, x, t, hook, self.opt_g, self.generator, o.grad_clip, logs)
        return logs

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        if not self.opts.fresh_samples and self.x is not None:
            return self.x
        z = torch.randn(self.opts.batch_size, self.opts.z_dim, device=self.ctx.device)
        return self.generator(z)

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        return l1_per_sample(t_logits, s_logits)

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return l1_mean(target_logits, logits)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g, **({"sched_g": self.sched_g} if self.sched_g is not None else {})}

    def on_round_end(self, round_idx: int) -> None:
        if self.sched_g is not None:
            self.sched_g.step()
