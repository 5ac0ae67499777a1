"""Contrastive Model Inversion, CMI (Fang et al., IJCAI 2021; the CMI codebase's ``CMISynthesizer``).

Each synthesis re-initializes a generator and optimizes it jointly with a learnable latent batch under
the DeepInversion losses (teacher BatchNorm statistics, one-hot CE on random targets, an adversarial
term where student and teacher agree) plus a contrastive term: the teacher's instance features (the
per-sample channel means of every BN layer's input) of a local and a global view of each image are
projected by an MLP head, and each local view must pick its own global view among the batch and the
negatives cached in a memory bank. Samples far from everything synthesized before are favoured, which
diversifies the pool. The lowest-loss iterate joins the image pool and its features the memory bank;
KD batches are drawn from the pool with the train augmentation.

A synthesis of ``g_steps`` iterations may be spread over several rounds (``g_steps_per_round``) so that
every round costs about the same; the paper preset finishes one synthesis per round.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from abd.data.transforms import random_crop, random_hflip, random_resized_crop
from abd.distill.base import KDMethod, SynthesisHook, register_method
from abd.distill.losses import agreement_kl
from abd.distill.synthesis import (
    Normalize,
    PoolOptions,
    PoolSampler,
    SamplePool,
    TemperedKL,
    check_bn_teacher,
)
from abd.models.generators import create_generator


class CMIOptions(PoolOptions):
    """CMI options; CPU defaults for LeNet-5 -> LeNet-5-half on 28x28 digits (the paper preset: the ABD
    CMI sweep on CIFAR-10, 200 iterations per synthesis, 400 KD steps per synthesis)."""

    g_steps: int = Field(20, ge=1, description="generator iterations per synthesis (paper: 200)")
    lr_g: float = Field(1e-2, gt=0, description="Adam learning rate of generator, latents and head "
                        "(paper: 1e-3 over 200 iterations)")
    z_dim: int = Field(100, ge=1, description="latent size (paper: 256)")
    gen_width: int = Field(8, ge=4, description="generator width ngf (paper: 64)")
    bn: float = Field(1.0, ge=0, description="weight of the BN-statistics loss")
    adv: float = Field(0.5, ge=0, description="weight of the adversarial term (agreeing-sample KL)")
    cr: float = Field(0.8, ge=0, description="weight of the contrastive term")
    cr_temperature: float = Field(0.1, gt=0, description="temperature of the contrastive logits")
    head_dim: int = Field(128, ge=1, description="output size of the MLP head (paper: 256)")
    bank_size: int = Field(4096, ge=1, description="memory-bank capacity (paper: 40,960)")
    n_neg: int = Field(1024, ge=0, description="negatives drawn from the bank per iteration (paper: 4,096)")
    local_scale: tuple[float, float] = Field((0.25, 1.0), description="area range of the local view")


class MLPHead(nn.Module):
    """CMI's projection head: Linear(d, d) -> ReLU -> Linear(d, out), L2-normalized."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True),
                                  nn.Linear(dim_in, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x), dim=1)


@register_method("cmi")
class CMI(PoolSampler, TemperedKL, KDMethod):
    """CMI: re-initialized generator, BN/one-hot/adversarial + contrastive losses, pool (Fang et al. 2021).

    The contrastive term uses an MLP head on the teacher's instance features and a memory bank of the
    features of earlier syntheses.
    """

    Options = CMIOptions
    paper_preset = {
        "rounds": 200, "batch_size": 128, "kd_steps": 400, "optimizer": "sgd", "lr": 0.1,
        "weight_decay": 1e-4, "temperature": 20.0, "synth_batch": 256, "g_steps": 200,
        "g_steps_per_round": 200, "lr_g": 1e-3, "z_dim": 256, "gen_width": 64, "bn": 1.0, "oh": 1.0,
        "adv": 0.5, "cr": 0.8, "cr_temperature": 0.1, "head_dim": 256, "bank_size": 40960, "n_neg": 4096,
        "flip": True, "crop_padding": 4, "pool_size": 200 * 256, "grad_clip": None,
    }

    def __init__(self, opts: CMIOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: CMIOptions = opts
        check_bn_teacher(ctx.teacher, self.name)
        dim = sum(m.num_features for m in ctx.teacher.modules()
                  if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None)
        self.norm = Normalize(ctx.mean, ctx.std).to(ctx.device)
        self.generator = create_generator("cmi", z_dim=opts.z_dim, channels=ctx.channels,
                                          image_size=ctx.image_size, width=opts.gen_width).to(ctx.device)
        self.head = MLPHead(dim, opts.head_dim).to(ctx.device)
        self.opt_head = torch.optim.Adam(self.head.parameters(), lr=opts.lr_g)
        self.pool = SamplePool(opts.pool_size)
        self.bank = SamplePool(opts.bank_size)  # [local, global] instance features of kept samples
        self._new_synthesis()

    # ------------------------------------------------------------------ synthesis
    def _new_synthesis(self) -> None:
        """CMI's per-synthesis reset: a re-initialized generator, fresh latents, sorted random targets."""
        o, dev = self.opts, self.ctx.device
        self.generator.reinit()
        self.z = torch.randn(o.synth_batch, o.z_dim, device=dev).requires_grad_()
        self.targets = torch.randint(self.ctx.num_classes, (o.synth_batch,)).sort()[0].to(dev)
        self.opt_g = torch.optim.Adam([{"params": self.generator.parameters()}, {"params": [self.z]}],
                                      lr=o.lr_g, betas=(0.5, 0.999))
        self.it = 0
        self.best_cost = float("inf")
        self.best: torch.Tensor | None = None
        self.best_feats: torch.Tensor | None = None

    def _views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global view (random crop, flip) and local view (random resized crop, flip), normalized."""
        o = self.opts
        g = random_crop(x, o.crop_padding)
        loc = random_resized_crop(x, self.ctx.image_size, scale=o.local_scale)
        if o.flip:
            g, loc = random_hflip(g), random_hflip(loc)
        return self.norm(g), self.norm(loc)

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        self.generator.train()
        return super().synthesize(hook)

    def _contrastive(self, local_feat: torch.Tensor, global_feat: torch.Tensor) -> torch.Tensor:
        o = self.opts
        cached = self.bank.take(o.n_neg).to(local_feat)
        if len(cached):
            c_local, c_global = cached.chunk(2, dim=1)
            local_feat, global_feat = torch.cat([local_feat, c_local]), torch.cat([global_feat, c_global])
        proj = self.head(torch.cat([local_feat, global_feat]))
        p_local, p_global = proj.chunk(2, dim=0)
        logits = p_local @ p_global.detach().T / o.cr_temperature
        ce = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="none")
        b = o.synth_batch
        return ce[:b].mean() + ce[b:].mean() if len(cached) else ce.mean()

    def _step(self, hooks: list, hook: SynthesisHook | None) -> dict[str, float]:
        """One generator/latent iteration; a finished synthesis goes to the pool and the memory bank."""
        ctx, o = self.ctx, self.opts
        x = self.generator(self.z)
        x_global, x_local = self._views(x)
        t = ctx.teacher(x_global)
        loss_bn = sum(h.r_feature for h in hooks)
        global_feat = torch.cat([h.instance_mean for h in hooks], dim=1)
        loss_oh = F.cross_entropy(t, self.targets)
        loss_adv = -agreement_kl(ctx.student(x_global), self.kd_target(x_global, t)) if o.adv > 0 else t.new_zeros(())
        ctx.teacher(x_local)
        local_feat = torch.cat([h.instance_mean for h in hooks], dim=1)
        loss_cr = self._contrastive(local_feat, global_feat) if o.cr > 0 else t.new_zeros(())
        loss = o.bn * loss_bn + o.oh * loss_oh + o.adv * loss_adv + o.cr * loss_cr
        logs = {"loss_g": float(loss.detach()), "loss_bn": float(loss_bn.detach()),
                "loss_oh": float(loss_oh.detach()), "loss_adv": float(loss_adv.detach()),
                "loss_cr": float(loss_cr.detach())}
        if hook is not None:
            extra, hook_logs = hook(x_global, t)
            loss = loss + extra
            logs.update(hook_logs)
        cost = float(loss.detach())
        if cost < self.best_cost or self.best is None:
            self.best_cost, self.best = cost, x.detach().clone()
            self.best_feats = torch.cat([local_feat, global_feat], dim=1).detach().clone()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.opt_head.step()
        self.it += 1
        if self.it >= o.g_steps:
            self.pool.add(self.best)
            self.bank.add(self.best_feats)
            self._new_synthesis()
        return logs

    # ------------------------------------------------------------------ KD
    def current_images(self) -> torch.Tensor:
        return self.generator(self.z)

    # ------------------------------------------------------------------ checkpoints
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "head": self.head}

    def optimizers(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g, "opt_head": self.opt_head}

    def extra_state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"z": self.z.detach().clone(), "targets": self.targets, "it": self.it,
                              "best_cost": self.best_cost, **self.pool.state("pool"),
                              **self.bank.state("bank")}
        if self.best is not None:
            st["best"], st["best_feats"] = self.best, self.best_feats
        return st

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.z.copy_(state["z"])
        self.targets, self.it = state["targets"], int(state["it"])
        self.best_cost = float(state["best_cost"])
        self.best, self.best_feats = state.get("best"), state.get("best_feats")
        self.pool.load_state(state, "pool")
        self.bank.load_state(state, "bank")
