"""DeepInversion (Yin et al., CVPR 2020; the CMI codebase's ``DeepInvSyn``).

Pixels are optimized directly, from noise, so that the teacher's BatchNorm layers see batch statistics
that match their running statistics, with a one-hot loss on random target classes, a total-variation
prior, random jitter (and flips), and an adversarial term (Adaptive DeepInversion: the negative
Jensen-Shannon divergence between student and teacher). Each finished synthesis adds its lowest-loss
iterate to an image pool; KD batches are drawn from the pool with the train augmentation.

A synthesis of ``g_steps`` iterations may be spread over several rounds (``g_steps_per_round``) so that
every round costs about the same; the paper preset finishes one synthesis per round.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from abd.distill.base import KDMethod, SynthesisHook, register_method
from abd.distill.losses import js_divergence, total_variation_l1
from abd.distill.synthesis import (
    Normalize,
    PoolOptions,
    PoolSampler,
    SamplePool,
    TemperedKL,
    check_bn_teacher,
    jitter_flip,
)


class DeepInvOptions(PoolOptions):
    """DeepInversion options; CPU defaults for LeNet-5 -> LeNet-5-half on 28x28 digits (the paper preset:
    the CMI codebase's CIFAR-10 defaults, 1,000 iterations per synthesis, 400 KD steps per synthesis)."""

    g_steps: int = Field(40, ge=1, description="pixel-optimization iterations per synthesis (paper: 1,000)")
    g_steps_per_round: int = Field(4, ge=1, description="synthesis iterations run per round")
    lr_g: float = Field(0.1, gt=0, description="Adam learning rate on the pixels (betas 0.5, 0.99)")
    bn: float = Field(10.0, ge=0, description="weight of the BN-statistics loss")
    adv: float = Field(1.0, ge=0, description="weight of the adversarial term -JS(S, T)")
    adv_temperature: float = Field(3.0, gt=0, description="temperature of the JS divergence")
    tv: float = Field(1e-3, ge=0, description="weight of the L1 total-variation prior")
    l2: float = Field(0.0, ge=0, description="weight of ||x||_2")
    jitter: int = Field(3, ge=0, description="random roll of up to this many pixels (paper: 4 at 32 px)")


@register_method("deepinv")
class DeepInversion(PoolSampler, TemperedKL, KDMethod):
    """DeepInversion: optimize pixels to match the teacher's BN statistics; KD from an image pool."""

    Options = DeepInvOptions
    paper_preset = {
        "rounds": 200, "batch_size": 256, "kd_steps": 400, "optimizer": "sgd", "lr": 0.1,
        "weight_decay": 1e-4, "temperature": 20.0, "synth_batch": 256, "g_steps": 1000,
        "g_steps_per_round": 1000, "lr_g": 0.1,
        "bn": 10.0, "oh": 1.0, "adv": 1.0, "tv": 1e-3, "jitter": 4, "flip": True, "crop_padding": 4,
        "pool_size": 200 * 256, "grad_clip": None,
    }

    def __init__(self, opts: DeepInvOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: DeepInvOptions = opts
        check_bn_teacher(ctx.teacher, self.name)
        self.norm = Normalize(ctx.mean, ctx.std).to(ctx.device)
        black = torch.zeros(1, ctx.channels, 1, 1, device=ctx.device)
        self.low, self.high = self.norm(black), self.norm(black + 1)  # valid normalized pixel range
        self.pool = SamplePool(opts.pool_size)
        self._new_synthesis()

    # ------------------------------------------------------------------ synthesis
    def _new_synthesis(self) -> None:
        o, dev = self.opts, self.ctx.device
        self.inputs = torch.randn(o.synth_batch, self.ctx.channels, self.ctx.image_size, self.ctx.image_size,
                                  device=dev).requires_grad_()
        self.targets = torch.randint(self.ctx.num_classes, (o.synth_batch,)).sort()[0].to(dev)
        self.opt_x = torch.optim.Adam([self.inputs], lr=o.lr_g, betas=(0.5, 0.99))
        self.it = 0
        self.best_cost = float("inf")
        self.best: torch.Tensor | None = None

    def _step(self, hooks: list, hook: SynthesisHook | None) -> dict[str, float]:
        """One pixel-optimization iteration; a finished synthesis goes to the pool."""
        ctx, o = self.ctx, self.opts
        x = jitter_flip(self.inputs, o.jitter, o.flip)
        t = ctx.teacher(x)
        loss_bn = sum(h.r_feature for h in hooks)
        loss_oh = F.cross_entropy(t, self.targets)
        loss_adv = (-js_divergence(ctx.student(x), self.kd_target(x, t), o.adv_temperature) if o.adv > 0
                    else t.new_zeros(()))
        loss_tv = total_variation_l1(self.inputs)
        loss = o.bn * loss_bn + o.oh * loss_oh + o.adv * loss_adv + o.tv * loss_tv
        if o.l2 > 0:
            loss = loss + o.l2 * self.inputs.norm()
        logs = {"loss_g": float(loss.detach()), "loss_bn": float(loss_bn.detach()),
                "loss_oh": float(loss_oh.detach()), "loss_adv": float(loss_adv.detach())}
        if hook is not None:
            extra, hook_logs = hook(x, t)
            loss = loss + extra
            logs.update(hook_logs)
        cost = float(loss.detach())
        if cost < self.best_cost or self.best is None:
            self.best_cost, self.best = cost, self.inputs.detach().clone()
        self.opt_x.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_x.step()
        with torch.no_grad():
            self.inputs.copy_(torch.maximum(torch.minimum(self.inputs, self.high), self.low))
        self.it += 1
        if self.it >= o.g_steps:
            self.pool.add(self.norm.inverse(self.best).clamp(0, 1))
            self._new_synthesis()
        return logs

    # ------------------------------------------------------------------ KD
    def current_images(self) -> torch.Tensor:
        return self.norm.inverse(self.inputs.detach()).clamp(0, 1)

    # ------------------------------------------------------------------ checkpoints
    def optimizers(self) -> dict[str, Any]:
        return {"opt_x": self.opt_x}

    def extra_state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"inputs": self.inputs.detach().clone(), "targets": self.targets, "it": self.it,
                              "best_cost": self.best_cost, **self.pool.state("pool")}
        if self.best is not None:
            st["best"] = self.best
        return st

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.inputs.copy_(state["inputs"])
        self.targets, self.it = state["targets"], int(state["it"])
        self.best_cost, self.best = float(state["best_cost"]), state.get("best")
        self.pool.load_state(state, "pool")
