"""DHBE: the patch lands in one p x p window in pixel space, the patch generator's step raises the student's
discrepancy, the student's term pulls its patched answers to its clean ones, and the options validate."""

from __future__ import annotations

import pytest
import torch

from abd.defense import DEFENSES
from abd.defense.dhbe import DHBEDefense, DHBEOptions, PatchGenerator, tv_l2
from abd.distill.base import KDContext
from abd.distill.losses import l1_mean
from abd.models import create_model

MEAN, STD = (0.1307,), (0.3081,)


def _ctx(seed: int = 0) -> KDContext:
    torch.manual_seed(seed)
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    return KDContext(teacher=teacher, student=student, num_classes=10, channels=1, image_size=28, mean=MEAN,
                     std=STD, device=torch.device("cpu"))


def test_patch_is_one_window_in_pixel_space_within_unit_range() -> None:
    d = DHBEDefense(DHBEOptions(patch=4), _ctx(), seed=3)
    x = torch.randn(8, 1, 28, 28)
    diff = (d.patched(x) - x).detach() * STD[0]  # back in pixel units
    rows, cols = torch.where(diff.abs().amax(dim=(0, 1)) > 0)
    assert int(rows.max() - rows.min()) < 4 and int(cols.max() - cols.min()) < 4  # one 4 x 4 window ...
    assert diff.abs().max() <= 1.0 + 1e-6  # ... of tanh values
    assert len({tuple(torch.nonzero(diff[i, 0]).min(0).values.tolist()) for i in range(8)}) == 1  # same place


def test_generator_step_raises_the_students_discrepancy_and_the_term_is_its_l1() -> None:
    ctx = _ctx()
    d = DHBEDefense(DHBEOptions(lr=1e-2), ctx, seed=0)
    x = torch.randn(64, 1, 28, 28)
    def discrepancy() -> float:  # |S(x) - S(x + patch)| at fixed noise and places
        state = d.rng.get_state()
        d.rng.manual_seed(7)
        with torch.no_grad():
            out = sum(float(l1_mean(ctx.student(x), ctx.student(d.patched(x)))) for _ in range(8))
        d.rng.set_state(state)
        return out

    before = discrepancy()
    for _ in range(30):
        d._update_generator(x)  # minimizes -|S(x) - S(x + patch)|
    assert discrepancy() > 1.1 * before
    assert all(p.grad is None or not p.grad.abs().sum() for p in ctx.student.parameters())  # student untouched
    state = d.rng.get_state()
    term = d.step_term(x, ctx.teacher(x), ctx.teacher(x), round_idx=d.updated_round)  # no new generator step
    d.rng.set_state(state)
    with torch.no_grad():
        expected = 0.1 * l1_mean(ctx.student(d.patched(x)), ctx.student(x))
    assert torch.allclose(term.detach(), expected, rtol=1e-5)
    term.backward()  # the term trains the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.student.parameters())


def test_tv_l2_is_zero_on_constant_images_and_positive_otherwise() -> None:
    assert float(tv_l2(torch.ones(2, 1, 8, 8))) == 0.0
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4, 4] = 1.0  # one bright pixel: 2 differences in each of the 4 directions, each of size 1
    assert float(tv_l2(x)) == pytest.approx(4 * 2**0.5)


def test_registered_with_paper_values_and_validation() -> None:
    assert DEFENSES.get("dhbe") is DHBEDefense
    paper = DHBEDefense.resolve(preset="paper")
    assert (paper.weight, paper.patch, paper.width, paper.z_dim, paper.tv) == (0.1, 5, 64, 256, 1e-4)
    with pytest.raises(ValueError):
        DHBEOptions(patch=1)
    with pytest.raises(ValueError, match="larger than the 28-pixel"):
        DHBEDefense(DHBEOptions.model_construct(**{**DHBEOptions().model_dump(), "patch": 30}), _ctx())
    g = PatchGenerator(z_dim=8, channels=3, patch=5, width=4)
    assert g(torch.randn(4, 8)).shape == (4, 3, 5, 5)


def test_init_starts_the_student_from_the_teacher_only_when_shapes_match() -> None:
    ctx = _ctx()
    with pytest.raises(ValueError, match="needs the same architecture"):
        DHBEDefense(DHBEOptions(init=True), ctx)
    same = KDContext(**{**ctx.__dict__, "student": create_model("lenet5", num_classes=10, in_channels=1,
                                                                 image_size=28)})
    DHBEDefense(DHBEOptions(init=True), same)
    for (k, a), b in zip(ctx.teacher.state_dict().items(), same.student.state_dict().values()):
        assert torch.equal(a, b), k
