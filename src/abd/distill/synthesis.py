"""Pieces the synthesizers share: an in-memory sample pool, generators that emit normalized images,
BatchNorm-statistics hooks with a clear error, and DeepInversion's jitter."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from abd.distill.base import KDContext
from abd.models.generators import create_generator
from abd.models.hooks import BNStatHook, bn_stat_hooks


class SamplePool:
    """A FIFO ring of at most ``capacity`` samples (images or feature vectors), kept in memory.

    Replaces the CMI codebase's ever-growing image folder on disk (SPEC 8: re-runs silently mixed old
    images into the pool). ``state()``/``load_state()`` hold tensors only, for checkpoints.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data: torch.Tensor | None = None
        self.count = 0  # filled slots
        self.ptr = 0  # next slot to write
        self.n_updates = 0

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Append a batch (overwriting the oldest samples once full)."""
        x = x.detach()[-self.capacity :]
        if self.data is None:
            self.data = x.new_empty((self.capacity, *x.shape[1:]))
        idx = (self.ptr + torch.arange(len(x))) % self.capacity
        self.data[idx.to(self.data.device)] = x.to(self.data)
        self.ptr = int((self.ptr + len(x)) % self.capacity)
        self.count = min(self.capacity, self.count + len(x))
        self.n_updates += 1

    def sample(self, n: int) -> torch.Tensor:
        """``n`` samples drawn uniformly with replacement (global torch RNG)."""
        if self.data is None or self.count == 0:
            raise RuntimeError("the pool is empty")
        idx = torch.randint(self.count, (n,))
        return self.data[idx.to(self.data.device)]

    def take(self, n: int) -> torch.Tensor:
        """Up to ``n`` distinct samples (all of them when fewer are stored; empty when none)."""
        if self.data is None or self.count == 0:
            return torch.empty(0)
        idx = torch.randperm(self.count)[:n]
        return self.data[idx.to(self.data.device)]

    def state(self, prefix: str) -> dict[str, Any]:
        if self.data is None:
            return {}
        return {f"{prefix}_data": self.data[: self.count].clone(), f"{prefix}_ptr": self.ptr,
                f"{prefix}_updates": self.n_updates}

    def load_state(self, state: dict[str, Any], prefix: str) -> None:
        if f"{prefix}_data" not in state:
            self.data, self.count, self.ptr, self.n_updates = None, 0, 0, 0
            return
        data = state[f"{prefix}_data"]
        self.data = data.new_empty((self.capacity, *data.shape[1:]))
        self.count = len(data)
        self.data[: self.count] = data
        self.ptr, self.n_updates = int(state[f"{prefix}_ptr"]), int(state[f"{prefix}_updates"])


class Normalize(nn.Module):
    """[0, 1] images -> the classifiers' normalized input space."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def normalized_generator(kind: str, z_dim: int, width: int, ctx: KDContext) -> nn.Module:
    """A registered generator whose output is a normalized image: generators that end in a sigmoid
    (``"cmi"``, ``"large"``: images in [0, 1]) get a :class:`Normalize` appended; the ZSKT generator's
    output is already used as a normalized image (SPEC 4.1)."""
    gen = create_generator(kind, z_dim=z_dim, channels=ctx.channels, image_size=ctx.image_size, width=width)
    if isinstance(list(gen.modules())[-1], nn.Sigmoid):
        gen = nn.Sequential(gen, Normalize(ctx.mean, ctx.std))
    return gen.to(ctx.device)


def teacher_bn_hooks(teacher: nn.Module, method: str) -> list[BNStatHook]:
    """:func:`bn_stat_hooks` on the teacher, with an error that names the method and the alternatives."""
    try:
        return bn_stat_hooks(teacher)
    except ValueError as e:
        raise ValueError(
            f"{method}: {e}. DeepInversion and CMI match the teacher's BatchNorm running statistics; use "
            "a teacher with BatchNorm2d layers, or a method without BN-statistics losses (zskt, dafl, dfad, "
            "ood)"
        ) from None


def check_bn_teacher(teacher: nn.Module, method: str) -> None:
    """Fail at method construction (not mid-run) if ``teacher`` cannot drive BN-statistics losses."""
    for h in teacher_bn_hooks(teacher, method):
        h.remove()


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode without parameter gradients (gradients still reach its input), then
    restore both: the student as a fixed critic during synthesis."""
    was = model.training
    req = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was)
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)


def jitter_flip(x: torch.Tensor, lim: int, flip: bool) -> torch.Tensor:
    """DeepInversion's augmentation: roll the batch by a random offset in [-lim, lim] pixels on each axis
    and, if ``flip``, mirror it horizontally with probability 0.5 (one draw per batch; Python RNG)."""
    if lim > 0:
        x = torch.roll(x, shifts=(random.randint(-lim, lim), random.randint(-lim, lim)), dims=(2, 3))
    if flip and random.random() < 0.5:
        x = x.flip(3)
    return x


def generator_step(
    loss: torch.Tensor,
    x: torch.Tensor,
    t_logits: torch.Tensor,
    hook: Callable | None,
    opt: torch.optim.Optimizer,
    generator: nn.Module,
    grad_clip: float | None,
    logs: dict[str, float],
) -> None:
    """One generator update: add the synthesis hook's term (the SV seam), back-propagate, clip, step."""
    if hook is not None:
        extra, hook_logs = hook(x, t_logits)
        loss = loss + extra
        logs.update(hook_logs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(generator.parameters(), grad_clip)
    opt.step()
