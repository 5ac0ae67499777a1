"""Pieces the synthesizers share: an in-memory sample pool, generators that emit normalized images, the
generator-method base (DAFL, DFAD), BatchNorm-statistics hooks with a clear error, and DeepInversion's
jitter."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from abd.data.transforms import augment_batch
from abd.distill.base import KDContext, KDMethod, MethodOptions
from abd.distill.losses import kl_batchmean, kl_per_sample
from abd.models.generators import create_generator
from abd.models.hooks import BNStatHook, bn_stat_hooks


class SamplePool:
    """A FIFO ring of at most ``capacity`` samples (images or feature vectors), kept in memory.

    Replaces the CMI codebase's ever-growing image folder on disk (there, re-runs silently mixed old
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
    output is already used as a normalized image."""
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


class GeneratorOptions(MethodOptions):
    """Options of a method that trains a generator and distills on its batches (CPU defaults for LeNet-5 ->
    LeNet-5-half; the paper presets follow the CMI codebase's CIFAR-10 scripts)."""

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
    grad_clip: float | None = 5.0


class GeneratorMethod(KDMethod):
    """A method whose synthesizer is a generator (Adam, betas 0.5/0.999, optional cosine) sampled afresh
    for each student step; subclasses write ``synthesize`` (the generator's loss) and the student loss."""

    Options = GeneratorOptions

    def __init__(self, opts: GeneratorOptions, ctx: KDContext) -> None:
        super().__init__(opts, ctx)
        self.opts: GeneratorOptions = opts
        self.generator = normalized_generator(opts.generator, opts.z_dim, opts.gen_width, ctx)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=opts.lr_g, betas=(0.5, 0.999))
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=opts.rounds) \
            if opts.lr_g_cosine else None
        self.x: torch.Tensor | None = None  # the last generator step's batch

    def generate(self) -> torch.Tensor:
        """A generator batch (with gradients to the generator); remembered for ``fresh_samples=False``."""
        z = torch.randn(self.opts.batch_size, self.opts.z_dim, device=self.ctx.device)
        x = self.generator(z)
        self.x = x.detach()
        return x

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        if not self.opts.fresh_samples and self.x is not None:
            return self.x
        z = torch.randn(self.opts.batch_size, self.opts.z_dim, device=self.ctx.device)
        return self.generator(z)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def optimizers(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g, **({"sched_g": self.sched_g} if self.sched_g is not None else {})}

    def on_round_end(self, round_idx: int) -> None:
        if self.sched_g is not None:
            self.sched_g.step()


class TemperedKL:
    """Mixin: the CMI codebase's criterion, KL at ``opts.temperature`` times T^2 (per sample for the
    student, batch mean for SR's divergence)."""

    opts: Any

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        tau = self.opts.temperature
        return kl_per_sample(t_logits, s_logits, tau) * tau**2

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return kl_batchmean(target_logits, logits, self.opts.temperature)


class PoolOptions(MethodOptions):
    """Options of a method that inverts the teacher into an image pool and distills on pool batches."""

    rounds: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1, description="KD batch")
    kd_steps: int = Field(5, ge=1, description="student steps per round (batches from the pool)")
    lr: float = 2e-3
    temperature: float = Field(20.0, gt=0, description="student KL temperature (batch-mean KL * T^2)")
    synth_batch: int = Field(64, ge=1, description="images per synthesis")
    g_steps_per_round: int = Field(1, ge=1, description="synthesis iterations run per round")
    oh: float = Field(1.0, ge=0, description="weight of the one-hot CE on the random targets")
    flip: bool = Field(False, description="random horizontal flips (synthesis and KD); off for digits")
    crop_padding: int = Field(2, ge=0, description="KD augmentation: random crop with this padding")
    pool_size: int = Field(10000, ge=1, description="images kept in the pool (oldest dropped)")
    grad_clip: float | None = 5.0


class PoolSampler:
    """Mixin for teacher inversion into an image pool. ``synthesize`` runs ``g_steps_per_round`` iterations
    of ``_step(bn_hooks, hook)`` with the teacher's BatchNorm hooks on and the student frozen; KD batches are
    drawn from ``self.pool`` of [0, 1] images, augmented (crop, flip) and normalized (before the first
    synthesis lands in the pool, from ``current_images()``)."""

    name: str
    opts: Any
    ctx: KDContext
    pool: SamplePool
    norm: nn.Module

    def _step(self, hooks: list[BNStatHook], hook: Callable | None) -> dict[str, float]:
        """One synthesis iteration (a finished synthesis goes to the pool); returns its logs."""
        raise NotImplementedError

    def current_images(self) -> torch.Tensor:
        """The synthesis in progress, as [0, 1] images."""
        raise NotImplementedError

    def synthesize(self, hook: Callable | None = None) -> dict[str, float]:
        logs: dict[str, float] = {}
        hooks = teacher_bn_hooks(self.ctx.teacher, self.name)
        try:
            with frozen(self.ctx.student):
                for _ in range(self.opts.g_steps_per_round):
                    logs = self._step(hooks, hook)
        finally:
            for h in hooks:
                h.remove()
        logs["pool"] = float(len(self.pool))
        return logs

    def sample(self) -> torch.Tensor:
        o = self.opts
        if len(self.pool):
            x = self.pool.sample(o.batch_size)
        else:
            with torch.no_grad():
                cur = self.current_images()
            x = cur[torch.randint(len(cur), (o.batch_size,)).to(cur.device)]
        return self.norm(augment_batch(x, o.crop_padding, o.flip))
