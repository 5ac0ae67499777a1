"""Zero-Shot Knowledge Transfer (Micaelli & Storkey, NeurIPS 2019).

An adversarial generator seeks inputs where student and teacher disagree (maximizing their KL); the
student then matches the teacher on them, with attention transfer on the block activations.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from abd.distill.base import KDMethod, MethodOptions, SynthesisHook, register_method
from abd.distill.losses import attention_map, kl_elementwise, kl_mean
from abd.distill.synthesis import generator_step, normalized_generator


class ZSKTOptions(MethodOptions):
    """ZSKT options; CPU defaults (the paper preset: 80k pseudo-batches, width-128 ZSKT generator, beta 250)."""

    rounds: int = Field(1500, ge=1, description="pseudo-batches")
    batch_size: int = 64
    kd_steps: int = Field(5, ge=1, description="student steps per pseudo-batch")
    gen_steps: int = Field(1, ge=1, description="generator steps per pseudo-batch")
    lr: float = 2e-3
    lr_g: float = Field(1e-3, gt=0)
    z_dim: int = Field(100, ge=1)
    generator: Literal["zskt", "large", "cmi"] = Field(
        "cmi", description="registered generator (paper: zskt). On CPU the sigmoid-bounded cmi generator keeps "
        "synthetic images in the data range, which made the LeNet-5-half student stable across seeds")
    gen_width: int = Field(16, ge=4, description="generator width (paper: 128 with the zskt generator)")
    at_beta: float = Field(250.0, ge=0, description="attention-transfer weight")
    grad_clip: float | None = 5.0


@register_method("zskt")
class ZSKT(KDMethod):
    """ZSKT: adversarial generator + KL and attention transfer (Micaelli & Storkey 2019)."""

    Options = ZSKTOptions
    uses_features = True
    paper_preset = {"rounds": 80000, "generator": "zskt", "gen_width": 128, "at_beta": 250.0, "batch_size": 128,
                    "kd_steps": 10}

    def __init__(self, opts: ZSKTOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: ZSKTOptions = opts
        self.generator = normalized_generator(opts.generator, opts.z_dim, opts.gen_width, ctx)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=opts.lr_g)
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=opts.rounds)
        self.z: torch.Tensor | None = None
        self.x: torch.Tensor | None = None

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        ctx, o = self.ctx, self.opts
        self.z = torch.randn(o.batch_size, o.z_dim, device=ctx.device)
        self.x = None
        self.generator.train()
        logs: dict[str, float] = {}
        for _ in range(o.gen_steps):
            x = self.generator(self.z)
            t = ctx.teacher(x)
            s = ctx.student(x)
            loss = -kl_mean(self.kd_target(x, t), s, o.temperature)
            logs["loss_g"] = float(loss.detach())
            generator_step(loss, x, t, hook, self.opt_g, self.generator, o.grad_clip, logs)
        return logs

    def sample(self) -> torch.Tensor:
        # G and z are fixed between generator steps and G runs in train mode (batch statistics), so the
        # batch is the same for all kd_steps: generate it once per round.
        if self.x is None:
            assert self.z is not None, "synthesize() must run before sample()"
            with torch.no_grad():
                self.x = self.generator(self.z)
        return self.x

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        per = kl_elementwise(t_logits, s_logits, self.opts.temperature).mean(1)
        if self.opts.at_beta > 0 and t_feats:
            for s, t in zip(s_feats, t_feats):
                per = per + self.opts.at_beta * (attention_map(s) - attention_map(t)).pow(2).mean(1)
        return per

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return kl_mean(target_logits, logits, self.opts.temperature)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g, "sched_g": self.sched_g}

    def extra_state(self) -> dict[str, Any]:
        return {"z": self.z} if self.z is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.z, self.x = state.get("z"), None

    def on_round_end(self, round_idx: int) -> None:
        self.sched_g.step()
