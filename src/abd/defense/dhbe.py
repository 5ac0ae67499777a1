"""Data-free Holistic Backdoor Erasing (DHBE), Yan et al., AsiaCCS 2023, as a defense of the engine.

DHBE runs two games at once. Distillation: the student learns the teacher on synthetic inputs (in the
paper DFAD's adversarial generator, "restricted" by a total-variation image prior). Backdoor
regularization: a second generator makes a small patch, pasted at a random place, that changes the
student's answers as much as it can (it maximizes |S(x) - S(x + patch)|), and the student learns to answer
the same with and without it (it minimizes ``weight * |S(x + patch) - S(x)|`` beside its KD loss). A
backdoor the student picks up from the teacher is a small input change that flips its answer, which the
patch generator finds and the student then unlearns.

Here the backdoor regularization is a term on the student's step of any KD method (``step_term``) and the
image prior a term on a synthesizing method's loss (``synthesis_term``); ``--method dfad --defense dhbe
--preset paper`` is the published recipe, except that the paper starts the student from the teacher's
weights (possible only when both share an architecture) and this engine starts it fresh.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn
from pydantic import Field

from abd.config import Config
from abd.defense.base import Defense, register_defense
from abd.distill.losses import l1_mean


class PatchGenerator(nn.Module):
    """z -> a (channels, patch, patch) perturbation in [-1, 1] pixel units: a linear layer to a
    (width, patch, patch) map, BatchNorm, a 3x3 conv, an affine-free BatchNorm and tanh (DHBE's
    ``PatchGeneratorPreBN`` for patches up to 9 pixels)."""

    def __init__(self, z_dim: int, channels: int, patch: int, width: int) -> None:
        super().__init__()
        self.patch, self.width = patch, width
        self.fc = nn.Linear(z_dim, width * patch * patch)
        self.bn = nn.BatchNorm2d(width)
        self.out = nn.Sequential(nn.Conv2d(width, channels, 3, padding=1), nn.BatchNorm2d(channels, affine=False),
                                 nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.fc(z).view(len(z), self.width, self.patch, self.patch))
        return self.out(h)


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """DHBE's L2 image prior: the sum over the 4 neighbour directions of the L2 norm of the differences."""
    return sum(torch.linalg.vector_norm(d) for d in (
        x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:]))


class DHBEOptions(Config):
    """DHBE options (paper: CIFAR-10 ResNet-18, patch 5 on 32 x 32 images, generator width 64, z 256)."""

    weight: float = Field(0.1, gt=0, description="weight of the student's patch-invariance term (paper: 0.1)")
    patch: int = Field(5, ge=2, le=9, description="side of the perturbation patch, in pixels (paper: 5)")
    lr: float = Field(1e-3, gt=0, description="Adam rate of the patch generator (paper: 1e-3)")
    width: int = Field(16, ge=4, description="patch generator width (paper: 64)")
    z_dim: int = Field(64, ge=1, description="patch generator noise dimension (paper: 256)")
    init: bool = Field(False, description="start the student from the teacher's weights (paper: yes; needs "
                       "the same architecture, i.e. erasing rather than compressing)")
    tv: float = Field(0.0, ge=0, description="weight of the L2 total-variation prior on a synthesizing "
                      "method's images (paper, on DFAD: 1e-4; on ZSKT it flattened the images to one class)")


@register_defense("dhbe")
class DHBEDefense(Defense):
    """DHBE (Yan et al. AsiaCCS 2023): the student unlearns the patch that most changes its answers."""

    Options = DHBEOptions
    order = 40
    paper = {"weight": 0.1, "patch": 5, "lr": 1e-3, "width": 64, "z_dim": 256, "init": True, "tv": 1e-4}
    method_defaults = {"dfad": {"tv": 1e-4}}  # the paper's restricted DFAD generator
    opts: DHBEOptions

    def __init__(self, opts: DHBEOptions, ctx: Any, seed: int = 0, rounds: int = 1) -> None:
        super().__init__(opts, ctx, seed, rounds)
        if opts.patch > ctx.image_size:
            raise ValueError(f"dhbe: patch {opts.patch} is larger than the {ctx.image_size}-pixel images")
        if opts.init:
            t_state, s_state = ctx.teacher.state_dict(), ctx.student.state_dict()
            if {k: v.shape for k, v in t_state.items()} != {k: v.shape for k, v in s_state.items()}:
                raise ValueError(f"dhbe: init=true starts the student from the teacher, which needs the same "
                                 f"architecture ({type(ctx.teacher).__name__} teacher, "
                                 f"{type(ctx.student).__name__} student of other shapes)")
            ctx.student.load_state_dict(t_state)
        self.rng = torch.Generator().manual_seed(seed + 41)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed + 43)  # the patch generator's initial weights, apart from the run's stream
        self.gen = PatchGenerator(opts.z_dim, ctx.channels, opts.patch, opts.width).to(ctx.device)
        torch.random.set_rng_state(torch_state)
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=opts.lr)
        self.mean = torch.tensor(ctx.mean, device=ctx.device).view(1, -1, 1, 1)
        self.std = torch.tensor(ctx.std, device=ctx.device).view(1, -1, 1, 1)
        self.updated_round = -1
        self.seconds = 0.0
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ the two games
    @property
    def has_synthesis_term(self) -> bool:
        return self.opts.tv > 0

    def synthesis_term(self, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        term = self.opts.tv * tv_l2(x)
        return term, {"loss_dhbe_tv": float(term.detach())}

    def patched(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (normalized) with a fresh patch from the generator added in pixel space at one random place
        for the whole batch (as DHBE's ``random_pad``); differentiable in the generator's weights."""
        n, p, size = len(x), self.opts.patch, self.ctx.image_size
        z = torch.randn(n, self.opts.z_dim, generator=self.rng).to(x.device)
        top, left = (int(v) for v in torch.randint(0, size - p + 1, (2,), generator=self.rng))
        pert = nn.functional.pad(self.gen(z), (left, size - p - left, top, size - p - top))
        return x + pert / self.std  # (x * std + mean + pert - mean) / std: not clipped, as in the paper

    def _update_generator(self, x: torch.Tensor) -> float:
        """One Adam step of the patch generator on -|S(x) - S(x + patch)| (the student fixed, in train mode
        as in the paper)."""
        student = self.ctx.student
        req = [q.requires_grad for q in student.parameters()]
        student.requires_grad_(False)
        try:
            with torch.no_grad():
                s = student(x)
            loss = -l1_mean(s, student(self.patched(x)))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        finally:
            for q, r in zip(student.parameters(), req):
                q.requires_grad_(r)
        return float(loss.detach())

    def step_term(self, x: torch.Tensor, t_raw: torch.Tensor, target: torch.Tensor,
                  round_idx: int) -> torch.Tensor | None:
        start = time.perf_counter()
        if self.updated_round != round_idx:  # one patch-generator step per round, as one per DHBE iteration
            self.last["loss_dhbe_gp"] = self._update_generator(x)
            self.updated_round = round_idx
        student = self.ctx.student
        with torch.no_grad():
            xp = self.patched(x)
            s = student(x)
        term = self.opts.weight * l1_mean(student(xp), s)
        self.last["loss_dhbe"] = float(term.detach())
        self.seconds += time.perf_counter() - start
        return term

    # ------------------------------------------------------------------ records
    def log_fields(self) -> dict[str, Any]:
        return dict(self.last)

    def metrics(self) -> dict[str, Any]:
        return {"dhbe_seconds": self.seconds}

    def artifacts(self) -> dict[str, torch.Tensor]:
        """The patch generator's current patch for a fixed noise (in pixel units), for inspection."""
        was = self.gen.training
        self.gen.eval()
        with torch.no_grad():
            z = torch.randn(1, self.opts.z_dim, generator=torch.Generator().manual_seed(0)).to(self.mean.device)
            patch = self.gen(z)
        self.gen.train(was)
        return {"dhbe_patch": patch.cpu().contiguous()}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.state_dict(), "opt": self.opt.state_dict(), "rng": self.rng.get_state(),
                "updated_round": self.updated_round, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.load_state_dict(state["gen"])
        self.opt.load_state_dict(state["opt"])
        self.rng.set_state(state["rng"])
        self.updated_round, self.seconds = state["updated_round"], state["seconds"]
