"""Every registered KD method: a tiny configuration runs through the engine with and without ABD, yields
batches of the right shape, finite losses and metrics; checkpoints resume exactly; presets validate."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from abd.attacks.config import TeacherConfig
from abd.attacks.teacher import train_teacher
from abd.data import load_dataset
from abd.defense import DEFENSES
from abd.distill import METHODS, KDContext, create_method
from abd.distill.config import DistillConfig
from abd.experiment import runs
from abd.experiment.runs import build_distiller
from abd.models import create_model

TINY_COMMON: dict[str, Any] = {"rounds": 3, "batch_size": 8}
TINY: dict[str, dict[str, Any]] = {
    "zskt": {"gen_width": 8, "kd_steps": 2},
    "clean": {"percent": 0.05},
    "dafl": {"gen_width": 4, "kd_steps": 2},
    "dfad": {"gen_width": 4, "kd_steps": 2},
    "deepinv": {"synth_batch": 8, "g_steps": 2, "g_steps_per_round": 1, "kd_steps": 2, "pool_size": 64},
    "cmi": {"synth_batch": 8, "g_steps": 2, "g_steps_per_round": 1, "kd_steps": 2, "gen_width": 4,
            "z_dim": 8, "head_dim": 8, "bank_size": 32, "n_neg": 8, "pool_size": 64},
    "ood": {"n_patches": 32},
}
ABD = {"defense_options": {"sr": {"fraction": 0.34, "inner_rounds": 2}}}


def tiny_options(name: str) -> dict[str, Any]:
    return {**TINY_COMMON, **TINY.get(name, {})}


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 (with BN) teacher trained for one epoch on poisoned mnist5k (badnet_grid, target 0)."""
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(TeacherConfig(epochs=1, batch_size=128, device="cpu"), out, progress=False)
    return out


@functools.cache
def _load_dataset_once(name: str, root: str | None = None):
    return load_dataset(name, root=root)


@pytest.fixture(autouse=True)
def _cached_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load mnist5k once for the module (methods never modify the dataset)."""
    monkeypatch.setattr(runs, "load_dataset", _load_dataset_once)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is fastest, and far faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _config(teacher: Path, name: str, defense: str) -> DistillConfig:
    return DistillConfig(teacher=str(teacher), method=name, defense=defense,
                         method_options=tiny_options(name), eval_every=100, checkpoint_every=100,
                         device="cpu", **(ABD if defense == "abd" else {}))


@pytest.mark.parametrize("defense", ["none", "abd"])
@pytest.mark.parametrize("name", METHODS.names())
def test_method_runs_through_engine(name: str, defense: str, teacher_dir: Path, tmp_path: Path) -> None:
    dist = build_distiller(_config(teacher_dir, name, defense), tmp_path, progress=False)
    method = dist.method
    calls: list[tuple[torch.Size, torch.Size, bool]] = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        calls.append((x.shape, t.shape, x.requires_grad))
        return x.sum() * 0.0, {"spy": 1.0}

    logs = method.synthesize(spy)
    if method.sv_target == "synthesis":  # every synthesizer adds the SV term to its synthesis loss
        assert calls and logs.get("spy") == 1.0
        assert all(xs[0] == ts[0] and ts[1] == dist.ctx.num_classes and g for xs, ts, g in calls)
    x = method.sample()
    ctx = dist.ctx
    assert x.shape == (method.opts.batch_size, ctx.channels, ctx.image_size, ctx.image_size)
    assert torch.isfinite(x).all()
    with torch.no_grad():
        t, s = ctx.teacher(x), ctx.student(x)
    per = method.student_loss(x, t, s, [], [])
    assert per.shape == (len(x),) and torch.isfinite(per).all()
    assert torch.isfinite(method.divergence(t, s)) and method.divergence(t, s).ndim == 0

    m = dist.run()
    assert {"acc", "asr", "target_acc"} <= m.keys() and 0 <= m["acc"] <= 1
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["method"] == name and saved["defense"] == defense and "asr" in saved
    records = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("round") == dist.rounds and "acc" in r][-1]
    losses = {k: v for k, v in last.items() if k.startswith("loss")}
    assert "loss_s" in losses and all(math.isfinite(v) for v in losses.values())
    if defense == "abd":
        assert last["sr"] is True and "sr_start_round" in saved


@pytest.mark.parametrize("defense", ["none", *DEFENSES.names(), "abd"])
@pytest.mark.parametrize("name", METHODS.names())
def test_resume_is_exact(name: str, defense: str, teacher_dir: Path, tmp_path: Path) -> None:
    """Every registered defense with every method: stopping after round 2 and resuming gives the
    uninterrupted run's student bit for bit (the method's modules, optimizers and extra state and the
    defense's own state round-trip through the checkpoint: SV's copies, SR's warm-started perturbations)."""
    opts = {**tiny_options(name), "rounds": 4}
    defended = {"defense_options": {"sr": {"inner_rounds": 2, "clean_target": True}}} if "sr" in \
        DistillConfig(teacher="-", defense=defense).components else {}

    def cfg() -> DistillConfig:
        return DistillConfig(teacher=str(teacher_dir), method=name, method_options=opts, eval_every=100,
                             checkpoint_every=2, device="cpu", defense=defense, **defended)

    full = build_distiller(cfg(), tmp_path / "full", progress=False)
    full.run()
    assert build_distiller(cfg(), tmp_path / "cut", progress=False).run(stop_after=2) is None
    resumed = build_distiller(cfg(), tmp_path / "cut", progress=False)
    resumed.run(resume=True)
    for (k, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", METHODS.names())
def test_paper_preset_validates(name: str) -> None:
    cls = METHODS.get(name)
    opts = cls.Options(**cls.paper_preset)
    assert opts.rounds >= 100 and cls.__doc__


class NoBN(nn.Module):
    """A classifier without BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


@pytest.mark.parametrize("name", ["deepinv", "cmi"])
def test_bn_methods_need_a_bn_teacher(name: str) -> None:
    student = create_model("lenet5_half", in_channels=1, image_size=28)
    ctx = KDContext(teacher=NoBN(), student=student, num_classes=10, channels=1, image_size=28,
                    mean=(0.1307,), std=(0.3081,), device=torch.device("cpu"))
    with pytest.raises(ValueError, match=rf"{name}: NoBN has no BatchNorm layers.*teacher with BatchNorm2d"):
        create_method(name, ctx, tiny_options(name))
    for other in ("dafl", "dfad"):  # no BN-statistics loss: any teacher works
        create_method(other, ctx, tiny_options(other)).synthesize()


def _teacher_class_entropy(method) -> float:
    p = torch.bincount(method.labels, minlength=method.ctx.num_classes).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


@pytest.mark.parametrize("weights", [False, True])
def test_ood_balances_the_teachers_classes(weights: bool, teacher_dir: Path, tmp_path: Path) -> None:
    """The balanced transfer set spreads the teacher's predicted classes wider than the plain one."""
    def method(pool: int):
        opts = {**tiny_options("ood"), "n_patches": 300, "balance_pool": pool, "balance_weights": weights}
        cfg = DistillConfig(teacher=str(teacher_dir), method="ood", method_options=opts, device="cpu")
        return build_distiller(cfg, tmp_path / str(pool), progress=False).method

    plain, balanced = method(1), method(10)
    assert torch.equal(plain.labels, plain._teacher_labels(plain.patches)[0])
    assert _teacher_class_entropy(balanced) > _teacher_class_entropy(plain) + 0.1
    if weights:  # batches drawn with 1 / class-count weights: every predicted class about equally often
        drawn = torch.cat([balanced.labels[torch.multinomial(balanced.weights, 64, replacement=True)]
                           for _ in range(50)])
        counts = torch.bincount(drawn, minlength=10)
        present = torch.bincount(balanced.labels, minlength=10) > 0
        assert counts[present].min() > 0.5 * counts[present].float().mean()


@pytest.mark.parametrize("name", METHODS.names())
def test_sr_clean_target_reaches_the_student_and_adversarial_terms(name: str, teacher_dir: Path,
                                                                   tmp_path: Path) -> None:
    """With ``sr.clean_target`` the SR phase replaces the teacher's logits by SR's occluded-trigger target in
    the student loss and in every adversarial synthesis term (the generator then seeks disagreement with
    what the student is taught: against the raw logits DFAD's generator collapsed the student to one class)."""
    cfg = DistillConfig(teacher=str(teacher_dir), method=name, defense="sr", method_options=tiny_options(name),
                        eval_every=100, checkpoint_every=100, device="cpu",
                        defense_options={"sr": {"inner_rounds": 2, "clean_target": True}})
    dist = build_distiller(cfg, tmp_path, progress=False)
    assert dist.ctx.kd_target is None  # nothing replaced before the SR phase
    sr = dist.defense.sr
    assert dist.defense.begin_round(0) is not None
    assert dist.ctx.kd_target == sr.clean_targets
    seen: list[tuple[bool, bool]] = []  # (inside a synthesis, gradient enabled)
    phase = {"synthesis": True}

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((phase["synthesis"], torch.is_grad_enabled()))
        return sr.clean_targets(x, t)

    dist.ctx.kd_target = spy
    dist.method.synthesize(None)
    adversarial = name in ("zskt", "dfad") or getattr(dist.method.opts, "adv", 0) > 0
    assert any(s for s, _ in seen) == adversarial
    assert all(g for s, g in seen if s)  # the synthesizer's gradient flows through the target
    phase["synthesis"] = False
    sr.last_delta = torch.zeros(1, dist.ctx.channels, dist.ctx.image_size, dist.ctx.image_size)
    logs = dist._student_step(dist.method.sample())
    assert (False, False) in seen and math.isfinite(logs["loss_s"])


def test_dfad_balance_spreads_the_generators_classes(teacher_dir: Path, tmp_path: Path) -> None:
    """DFAD's optional class-balance term: the generator's batches cover the teacher's classes more evenly."""
    def entropy_after(balance: float) -> float:
        torch.manual_seed(0)
        opts = {**tiny_options("dfad"), "batch_size": 32, "balance": balance}
        cfg = DistillConfig(teacher=str(teacher_dir), method="dfad", method_options=opts, device="cpu")
        method = build_distiller(cfg, tmp_path / str(balance), progress=False).method
        for _ in range(30):
            logs = method.synthesize(None)
        assert ("loss_balance" in logs) == (balance > 0) and all(math.isfinite(v) for v in logs.values())
        with torch.no_grad():
            p = torch.bincount(method.ctx.teacher(method.generate()).argmax(1), minlength=10).float() / 32
        return float(-(p[p > 0] * p[p > 0].log()).sum())

    balanced, free = entropy_after(5.0), entropy_after(0.0)
    assert balanced > free + 0.3
