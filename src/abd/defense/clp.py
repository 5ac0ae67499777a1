"""Channel Lipschitzness-based Pruning (CLP), Zheng et al., ECCV 2022: a data-free backdoor removal.

A backdoor's trigger features are carried by a few channels that react strongly to a small input change.
CLP measures each conv channel's upper bound of the Lipschitz constant (UCLC): the largest singular value of
the channel's kernel, reshaped to (input channels, kernel pixels) and scaled by the following BatchNorm's
|gamma / sigma|; in each layer it prunes (zeroes the BatchNorm's weight and bias of) every channel whose
UCLC is above mean + u * std of the layer's UCLCs. No data is used at all. Here it is a defense of the
distillation engine: applied to the teacher before any KD method (``on: teacher``) or to the student after
distillation (``on: student``).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from abd.config import Config
from abd.defense.base import Defense, register_defense


def channel_lipschitz(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None = None) -> torch.Tensor:
    """The UCLC of every output channel of `conv` (followed by `bn`, if any): the spectral norm of the
    channel's kernel as an (in_channels / groups, kh * kw) matrix, times |gamma / sqrt(var + eps)|."""
    w = conv.weight.detach().float()
    lips = torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)
    if bn is not None:
        scale = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(lips)
        lips = lips * (scale / torch.sqrt(bn.running_var.detach().float() + bn.eps)).abs()
    return lips


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.modules.batchnorm._BatchNorm | None]]:
    """Every Conv2d with the BatchNorm that follows it in registration order (None when the next
    normalizing module is not its BatchNorm)."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))]
    out = []
    for i, (name, m) in enumerate(mods):
        if not isinstance(m, nn.Conv2d):
            continue
        nxt = mods[i + 1][1] if i + 1 < len(mods) else None
        bn = nxt if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == m.out_channels else None
        out.append((name, m, bn))
    return out


@torch.no_grad()
def clp_prune(model: nn.Module, u: float = 3.0) -> dict[str, int]:
    """Prune `model` in place as CLP does; returns the number of channels pruned per conv layer. A channel
    with a BatchNorm is pruned by zeroing the BatchNorm's weight and bias (the published form); one without,
    by zeroing its kernel and bias."""
    pruned = {}
    for name, conv, bn in conv_bn_pairs(model):
        lips = channel_lipschitz(conv, bn)
        if len(lips) < 2:
            continue
        idx = torch.where(lips > lips.mean() + u * lips.std())[0]
        if bn is not None:
            if bn.weight is not None:
                bn.weight[idx] = 0.0
            if bn.bias is not None:
                bn.bias[idx] = 0.0
        else:
            conv.weight[idx] = 0.0
            if conv.bias is not None:
                conv.bias[idx] = 0.0
        pruned[name] = len(idx)
    return pruned


class CLPOptions(Config):
    """CLP options."""

    u: float = Field(3.0, gt=0, description="prune channels whose UCLC exceeds mean + u * std of their layer's "
                     "(paper: 3)")
    on: Literal["teacher", "student"] = Field("teacher", description="prune the teacher before distillation, or "
                                              "the student after it")


@register_defense("clp")
class CLPDefense(Defense):
    """Channel Lipschitzness-based Pruning (Zheng et al. ECCV 2022): data-free pruning of high-UCLC channels."""

    Options = CLPOptions
    order = 10  # a teacher transform comes before the defenses that read the teacher
    paper = {"u": 3.0, "on": "teacher"}
    opts: CLPOptions

    def __init__(self, opts: CLPOptions, ctx: Any, seed: int = 0, rounds: int = 1) -> None:
        super().__init__(opts, ctx, seed, rounds)
        self.pruned: dict[str, int] = {}
        self.original: nn.Module | None = None

    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        if self.opts.on != "teacher":
            return teacher
        self.original = teacher
        pruned = copy.deepcopy(teacher)  # the user's model stays as it was
        self.pruned = clp_prune(pruned, self.opts.u)
        return pruned

    def finish(self, student: nn.Module) -> None:
        if self.opts.on == "student":
            self.pruned = clp_prune(student, self.opts.u)

    def diagnose(self, eval_data: Any) -> dict[str, Any]:
        """The pruned teacher's ACC/ASR beside the original's (``on: teacher``); says so when CLP pruned
        nothing (a small net's few channels rarely hold a u = 3 outlier)."""
        if self.original is None:
            return {}
        from abd.metrics import evaluate

        keys = ("acc", "asr", "target_acc")
        before, after = evaluate(self.original, eval_data), evaluate(self.ctx.teacher, eval_data)
        out = {**{f"{k}_before": before.get(k) for k in keys}, **{f"{k}_after": after.get(k) for k in keys},
               "pruned": dict(self.pruned)}
        if not sum(self.pruned.values()):
            out["message"] = (f"CLP pruned no channel of the teacher at u={self.opts.u}: the defense did nothing "
                              "(a smaller u prunes more; see docs/defenses.md)")
        return {"clp_teacher": out}

    def metrics(self) -> dict[str, Any]:
        total = sum(self.pruned.values())
        return {"clp_pruned": self.pruned, "clp_pruned_total": total, "clp_noop": total == 0}


def clp_sweep(model: nn.Module, eval_data: Any, us: list[float]) -> list[dict[str, Any]]:
    """CLP at each threshold `u` on a copy of `model`: channels pruned and the pruned model's ACC/ASR (the
    evaluation data only measures; CLP itself sees none)."""
    from abd.metrics import evaluate

    rows = []
    for u in us:
        pruned_model = copy.deepcopy(model)
        pruned = clp_prune(pruned_model, u)
        m = evaluate(pruned_model.eval(), eval_data)
        rows.append({"u": u, "pruned": sum(pruned.values()), "acc": m["acc"], "asr": m.get("asr"),
                     "target_acc": m.get("target_acc")})
    return rows
