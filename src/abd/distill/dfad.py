"""Data-Free Adversarial Distillation, DFAD (Fang et al. 2019).

A min-max game on the L1 distance between teacher and student logits: the generator seeks images where
they disagree most (maximizing the mean |T(x) - S(x)|), the student minimizes it on fresh generator
batches.
"""

from __future__ import annotations

import torch
from pydantic import Field

from abd.distill.base import SynthesisHook, register_method
from abd.distill.losses import class_balance, l1_mean, l1_per_sample
from abd.distill.synthesis import GeneratorMethod, GeneratorOptions, frozen, generator_step


class DFADOptions(GeneratorOptions):
    """DFAD options; CPU defaults for LeNet-5 -> LeNet-5-half (the paper preset: the CMI codebase's
    CIFAR-10 script, batch 256, 5 student steps per generator step, ``LargeGenerator`` nz 256)."""

    gen_width: int = Field(8, ge=4, description="generator width (ngf; paper: 64)")
    lr: float = Field(0.05, gt=0, description="student SGD lr (paper: 0.1; with ABD it left one seed's "
                      "LeNet student with a constant output for good)")
    adv: float = Field(1.0, gt=0, description="weight of the adversarial L1 term in the generator loss")
    balance: float = Field(1.0, ge=0, description="weight of DAFL's class-balance loss sum pbar log pbar on "
                           "the KD targets of the generator's batch (paper: 0); keeps the generator from "
                           "collapsing onto one class, the target class once SR cleans its targets")


@register_method("dfad")
class DFAD(GeneratorMethod):
    """DFAD: an adversarial generator on the L1 logit discrepancy; L1 student (Fang et al. 2019)."""

    Options = DFADOptions
    paper_preset = {
        "rounds": 200 * (400 // 5), "batch_size": 256, "kd_steps": 5, "gen_steps": 1, "optimizer": "sgd",
        "lr": 0.1, "weight_decay": 1e-4, "lr_g": 1e-3, "lr_g_cosine": False,
        "z_dim": 256, "generator": "large", "gen_width": 64,
        "adv": 1.0, "balance": 0.0, "grad_clip": None,
    }

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        ctx, o = self.ctx, self.opts
        self.generator.train()
        logs: dict[str, float] = {}
        with frozen(ctx.student):
            for _ in range(o.gen_steps):
                x = self.generate()
                t = ctx.teacher(x)
                s = ctx.student(x)
                target = self.kd_target(x, t)
                loss = -o.adv * l1_mean(target, s)
                if o.balance > 0:
                    loss_bal = class_balance(target)
                    loss = loss + o.balance * loss_bal
                    logs["loss_balance"] = float(loss_bal.detach())
                logs["loss_g"] = float(loss.detach())
                generator_step(loss, x, t, hook, self.opt_g, self.generator, o.grad_clip, logs)
        return logs

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        return l1_per_sample(t_logits, s_logits)

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return l1_mean(target_logits, logits)
