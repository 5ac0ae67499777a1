"""Clean-data KD (Hinton et al. 2015), the reference point."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from abd.data.transforms import Normalizer, augment_batch, to_float
from abd.distill.base import KDMethod, MethodOptions, register_method
from abd.distill.losses import kl_elementwise


class CleanKDOptions(MethodOptions):
    """Clean KD options: a fraction of the clean training set, KL at temperature tau plus a little CE."""

    rounds: int = Field(1500, ge=1, description="student steps")
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    temperature: float = 6.0
    alpha: float = Field(0.95, ge=0, le=1, description="weight of the KL term (1 - alpha: CE on labels)")
    percent: float = Field(0.2, gt=0, le=1, description="fraction of the clean training set used")
    augment: bool = True
    grad_clip: float | None = None


@register_method("clean")
class CleanKD(KDMethod):
    """Clean KD: KD on a fraction of the clean training images (the no-backdoor reference)."""

    Options = CleanKDOptions
    sv_target = "student"
    paper_preset = {"rounds": 170 * 79, "lr": 0.1, "percent": 0.2}

    def __init__(self, opts: CleanKDOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: CleanKDOptions = opts
        ds = ctx.dataset
        if ds is None:
            raise ValueError("clean KD needs the clean training set (the teacher's dataset)")
        n = max(1, int(opts.percent * len(ds.x_train)))
        idx = np.random.default_rng(230).permutation(len(ds.x_train))[:n]
        self.x = to_float(ds.x_train[idx])
        self.y = torch.as_tensor(ds.y_train[idx])
        self.norm = Normalizer(ds.mean, ds.std)
        self.ds = ds
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.y_batch: torch.Tensor | None = None

    def sample(self) -> torch.Tensor:
        if self.pos + self.opts.batch_size > len(self.order):
            self.order, self.pos = torch.randperm(len(self.x)), 0
        idx = self.order[self.pos : self.pos + self.opts.batch_size]
        self.pos += len(idx)
        xb = self.x[idx]
        if self.opts.augment:
            xb = augment_batch(xb, self.ds.crop_padding, self.ds.hflip)
        self.y_batch = self.y[idx].to(self.ctx.device)
        return self.norm(xb).to(self.ctx.device)

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        o = self.opts
        kl = kl_elementwise(t_logits, s_logits, o.temperature).mean(1) * o.temperature**2
        ce = F.cross_entropy(s_logits, self.y_batch, reduction="none") if self.y_batch is not None else 0.0
        return o.alpha * kl + (1 - o.alpha) * ce

    def extra_state(self):
        return {"order": self.order, "pos": self.pos}

    def load_extra_state(self, state) -> None:
        self.order, self.pos = state["order"], state["pos"]
