"""Data-Free Learning of student networks, DAFL (Chen et al., ICCV 2019).

A generator is trained against the teacher alone, with no adversary: its images should make the teacher
confident (one-hot cross-entropy on the teacher's own argmax), strongly activated (large penultimate
features) and class-balanced (high entropy of the batch-mean prediction). The student matches the
teacher on fresh generator batches with KL.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from abd.distill.base import SynthesisHook, register_method
from abd.distill.losses import class_balance
from abd.distill.synthesis import GeneratorMethod, GeneratorOptions, TemperedKL, generator_step
from abd.models.hooks import penultimate_features


class DAFLOptions(GeneratorOptions):
    """DAFL options; CPU defaults for LeNet-5 -> LeNet-5-half (the paper preset: the CMI codebase's
    CIFAR-10 script, batch 256, 5 student steps per generator step, ``LargeGenerator`` nz 512)."""

    oh: float = Field(1.0, ge=0, description="weight of the one-hot CE on the teacher's argmax")
    act: float = Field(0.1, ge=0, description="weight of the activation loss -mean|penultimate features|")
    balance: float = Field(5.0, ge=0, description="weight of the class-balance loss sum pbar log pbar")
    temperature: float = 1.0


@register_method("dafl")
class DAFL(TemperedKL, GeneratorMethod):
    """DAFL: a generator with one-hot, activation and class-balance losses; KL student (Chen et al. 2019)."""

    Options = DAFLOptions
    paper_preset = {
        "rounds": 200 * (400 // 5), "batch_size": 256, "kd_steps": 5, "gen_steps": 1, "optimizer": "sgd",
        "lr": 0.1, "weight_decay": 1e-4, "lr_g": 1e-3, "lr_g_cosine": False,
        "z_dim": 512, "generator": "large", "gen_width": 64,
        "oh": 1.0, "act": 0.001, "balance": 20.0, "temperature": 1.0, "grad_clip": None,
    }

    def synthesize(self, hook: SynthesisHook | None = None) -> dict[str, float]:
        ctx, o = self.ctx, self.opts
        self.generator.train()
        logs: dict[str, float] = {}
        for _ in range(o.gen_steps):
            x = self.generate()
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

