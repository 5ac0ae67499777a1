"""Data-Free Learning of student networks, DAFL (Chen et al., ICCV 2019), SPEC 4.2.

A generator is trained against the teacher alone, with no adversary: its images should make the teacher
confident (one-hot cross-entropy on the teacher's own argmax), strongly activated (large penultimate
features) and class-balanced (high entropy of the batch-mean prediction). The student matches the
teacher on fresh generator batches with KL.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from abd.distill.base import KDMethod, MethodOptions, SynthesisHook, register_method
from abd.distill.losses import class_balance, kl_batchmean, kl_per_sample
from abd.distill.synthesis import generator_step, normalized_generator
from abd.models.hooks import penultimate_features


class DAFLOptions(MethodOptions):
    """DAFL options; CPU defaults for LeNet-5 -> LeNet-5-half (the paper preset: the CMI codebase's
    CIFAR-10 script, batch 256, 5 student steps per generator step, ``LargeGenerator`` nz 512)."""

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
    gen_width: int = Field(16, ge=4, description="generator width (ngf; paper: 64)")
    oh: float = Field(1.0, ge=0, description="weight of the one-hot CE on the teacher's argmax")
    act: float = Field(0.1, ge=0, description="weight of the activation loss -mean|penultimate features|")
    balance: float = Field(5.0, ge=0, description="weight of the class-balance loss sum pbar log pbar")
    temperature: float = 1.0
    grad_clip: float | None = 5.0


@register_method("dafl")
class DAFL(KDMethod):
    """DAFL: a generator with one-hot, activation and class-balance losses; KL student (Chen et al. 2019)."""

    Options = DAFLOptions
    paper_preset = {
        "rounds": 200 * (400 // 5), "batch_size": 256, "kd_steps": 5, "gen_steps": 1, "optimizer": "sgd",
        "lr": 0.1, "weight_decay": 1e-4, "lr_g": 1e-3, "lr_g_cosine": False,
        "z_dim": 512, "generator": "large", "gen_width": 64,
        "oh": 1.0, "act": 0.001, "balance": 20.0, "temperature": 1.0, "grad_clip": None,
    }

    def __init__(self, opts: DAFLOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: DAFLOptions = opts
        self.generator = normalized_generator(opts.generator, opts.z_dim, opts.gen_width, ctx)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=opts.lr_g, betas=(0.5, 0.999))
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=opts.rounds) \
            if opts.lr_g_cosine else None
        self.x: torch.Tensor | None = None  # the last generator step's batch

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        ctx, o = self.ctx, self.opts
        self.generator.train()
        logs: dict[str, float] = {}
        for _ in range(o.gen_steps):
            z = torch.randn(o.batch_size, o.z_dim, device=ctx.device)
            x = self.generator(z)
            self.x = x.detach()
            with penultimate_features(ctx.teacher) as feats:
                t = ctx.teacher(x)
            loss_oh = F.cross_entropy(t, t.argmax(1))
            loss_act = -feats[0].abs().mean()
            loss_bal = class_balance(t)
            loss = o.oh * loss_oh + o.act * loss_act + o.balance * loss_bal
            logs.update(loss_g=float(loss.detach()), loss_oh=float(loss_oh.detach()),
                        loss_act=float(loss_act.detach()), loss_balance=float(loss_bal.detach()))
            generator_step(loss, x, t, hook, self.opt_g, self.generator, o.grad_clip, logs)
        return logs

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        if not self.opts.fresh_samples and self.x is not None:
            return self.x
        z = torch.randn(self.opts.batch_size, self.opts.z_dim, device=self.ctx.device)
        return self.generator(z)

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        tau = self.opts.temperature
        return kl_per_sample(t_logits, s_logits, tau) * tau**2

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return kl_batchmean(target_logits, logits, self.opts.temperature)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g, **({"sched_g": self.sched_g} if self.sched_g is not None else {})}

    def on_round_end(self, round_idx: int) -> None:
        if self.sched_g is not None:
            self.sched_g.step()
