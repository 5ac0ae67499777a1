"""Self-Retrospection: perturbation synthesis and the unlearning step on a real backdoored teacher."""

from __future__ import annotations

import pytest
import torch

from abd.defense import SelfRetrospection, ShufflingVaccine, frozen_bn_stats
from abd.distill.losses import kl_mean
from abd.experiment.checkpoint import load_model
from abd.models import create_model


def test_frozen_bn_stats_keeps_running_statistics() -> None:
    m = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28).train()
    before = [b.clone() for b in m.buffers()]
    with frozen_bn_stats(m):
        m(torch.randn(8, 1, 28, 28))
    assert all(torch.equal(a, b) for a, b in zip(before, m.buffers()))
    m(torch.randn(8, 1, 28, 28))
    assert not all(torch.equal(a, b) for a, b in zip(before, m.buffers()))


def test_synthesized_perturbation_changes_the_teacher_and_leaves_grads_clean(backdoored_teacher_dir) -> None:
    teacher, _ = load_model(backdoored_teacher_dir)
    teacher.eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    sr = SelfRetrospection(student, teacher, inner_rounds=10, pert_lr=0.5, l2=0.01)
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    delta = sr.synthesize(x)
    assert delta.shape == (1, 1, 28, 28) and delta.abs().sum() > 0
    rand = torch.randn_like(delta)
    rand = rand * delta.norm() / rand.norm()
    with torch.no_grad():
        t = teacher(x)
        kl_found = kl_mean(t, teacher(x + delta))
        kl_random = kl_mean(t, teacher(x + rand))
    assert kl_found > 5 * kl_random  # far more damaging than a random perturbation of the same norm
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.parameters())


def test_vaccine_guided_synthesis_finds_a_backdoor_like_perturbation(backdoored_teacher_dir) -> None:
    teacher, _ = load_model(backdoored_teacher_dir)
    teacher.eval().requires_grad_(False)
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    sv = ShufflingVaccine(teacher, n_layers=1, seed=0)
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    guided = SelfRetrospection(student, teacher, inner_rounds=20, pert_lr=0.5, l2=0.01, vaccine=sv,
                               vaccine_weight=0.1).synthesize(x)
    plain = SelfRetrospection(student, teacher, inner_rounds=20, pert_lr=0.5, l2=0.01).synthesize(x)
    # the shuffled copies agree with the teacher on the guided perturbation at least as much as on the plain
    # one (both can saturate the score: on some machines the plain synthesis already finds the trigger), and
    # by orders of magnitude more than on the unperturbed inputs
    s_guided = sv.scores(x + guided).mean()
    assert s_guided >= sv.scores(x + plain).mean()
    assert s_guided > sv.scores(x).mean() + 3.0


def test_hypergradient_step_accumulates_into_student_grads() -> None:
    torch.manual_seed(0)
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    x = torch.randn(16, 1, 28, 28)
    sr = SelfRetrospection(student, teacher, inner_rounds=3, out_portion=0.25)
    extra = sr.step(x)
    assert float(extra) == 0.0
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    plain = SelfRetrospection(student, teacher, inner_rounds=3, mode="plain")
    loss = plain.step(x)
    assert loss.requires_grad and torch.isfinite(loss)
    assert float(plain.last_delta.norm()) <= plain.radius + 1e-4


def test_consistency_mode_distills_the_perturbed_batch_towards_the_teachers_clean_answer() -> None:
    torch.manual_seed(0)
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    x = torch.randn(16, 1, 28, 28)
    sr = SelfRetrospection(student, teacher, inner_rounds=3, mode="consistency", weight=2.0)
    loss = sr.step(x)
    assert all(p.grad is None for p in student.parameters())  # a loss term, not accumulated gradients
    with torch.no_grad():
        expected = 2.0 * kl_mean(teacher(x), student(x + sr.last_delta))
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    # clipped: the perturbed images stay valid images, and the term is computed on them
    low, high = torch.full((1, 1, 1, 1), -0.5), torch.full((1, 1, 1, 1), 2.5)
    clipped = SelfRetrospection(student, teacher, inner_rounds=3, pert_lr=2.0, mode="consistency",
                                bounds=(low, high))
    x = torch.rand(16, 1, 28, 28) * 3 - 0.5
    loss = clipped.step(x)
    xd = clipped.perturb(x, clipped.last_delta)
    assert float(xd.min()) >= -0.5 and float(xd.max()) <= 2.5
    assert float((x + clipped.last_delta).abs().max()) > 2.5  # the clamp did act
    with torch.no_grad():
        assert torch.allclose(loss, kl_mean(teacher(x), student(xd)), rtol=1e-5)
    with pytest.raises(ValueError, match="mode must be one of"):
        SelfRetrospection(student, teacher, mode="hypergradient")
    with pytest.raises(ValueError, match="needs the teacher"):
        SelfRetrospection(student, None, mode="consistency", pert_model="student")


def test_reuse_delta_synthesizes_once_per_repeated_batch(backdoored_teacher_dir, monkeypatch) -> None:
    teacher, _ = load_model(backdoored_teacher_dir)
    teacher.eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    calls = []
    for reuse, expected in ((True, 2), (False, 3)):
        sr = SelfRetrospection(student, teacher, inner_rounds=2, reuse_delta=reuse)
        real = sr.synthesize
        monkeypatch.setattr(sr, "synthesize", lambda x, t=None, real=real: calls.append(1) or real(x, t))
        x, y = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
        calls.clear()
        for batch in (x, x, y):  # ZSKT: the same pseudo-batch for its kd_steps, then a new one
            student.zero_grad()
            sr.step(batch)
        assert len(calls) == expected
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


def test_sr_options_use_a_temperature_one_kl_unless_told_to_use_the_methods_divergence() -> None:
    from abd.distill.zskt import ZSKT, ZSKTOptions
    from abd.experiment.distill_config import SROptions

    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)

    def l1(a, b):
        return (a - b).abs().mean()

    assert SROptions().build(student, teacher, l1).divergence is kl_mean
    assert SROptions(divergence="method").build(student, teacher, l1).divergence is l1
    # ZSKT's own divergence is that KL: its SR runs are the same whichever is chosen
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    zskt = ZSKT.__new__(ZSKT)
    zskt.opts = ZSKTOptions()
    assert torch.equal(zskt.divergence(a, b), kl_mean(a, b))


def _teacher_student_batch(teacher_dir):
    """The backdoored teacher (eval), a fresh LeNet-5-half student and a seeded random batch of 32."""
    teacher, _ = load_model(teacher_dir)
    teacher.eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    torch.manual_seed(0)
    return teacher, student, torch.randn(32, 1, 28, 28)


def test_max_abs_bounds_every_pixel_of_the_perturbation(backdoored_teacher_dir) -> None:
    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    free = SelfRetrospection(student, teacher, inner_rounds=10, pert_lr=2.0).synthesize(x)
    bound = torch.full((1, 1, 1, 1), 0.75)
    capped = SelfRetrospection(student, teacher, inner_rounds=10, pert_lr=2.0, max_abs=bound).synthesize(x)
    assert float(free.abs().max()) > 0.75  # unbounded, the synthesis moves pixels further
    assert float(capped.abs().max()) <= 0.75 + 1e-6 and float(capped.abs().max()) > 0.5


def test_support_bound_finds_the_trigger_corner(backdoored_teacher_dir) -> None:
    teacher, student, _ = _teacher_student_batch(backdoored_teacher_dir)
    kw = dict(inner_rounds=4, pert_lr=0.5, l1=0.01, l2=0.01, warm_start=True)

    def corner_share(support):
        torch.manual_seed(0)
        sr = SelfRetrospection(student, teacher, support=support, **kw)
        for _ in range(30):  # as over training: short syntheses on new batches, each from the last delta
            sr.last_delta = sr.synthesize(torch.randn(64, 1, 28, 28))
        mag = sr.last_delta.abs().sum(1)[0]
        return int((mag > 0).sum()), float(mag[20:, 20:].sum() / mag.sum())  # the trigger: bottom right

    n_free, share_free = corner_share(None)
    n_sparse, share_sparse = corner_share(0.02)
    assert n_free > 700 and n_sparse == round(0.02 * 28 * 28)
    assert share_sparse >= 0.9 > share_free  # the dense delta spreads over clean-feature pixels too
    with pytest.raises(ValueError, match="support must be"):
        SelfRetrospection(student, teacher, support=1.5)


def test_flip_objective_is_bounded_and_still_flips_the_teacher(backdoored_teacher_dir) -> None:
    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    kw = dict(inner_rounds=30, pert_lr=0.5, l2=0.01)
    div = SelfRetrospection(student, teacher, **kw).synthesize(x)
    flip = SelfRetrospection(student, teacher, objective="flip", **kw).synthesize(x)
    with torch.no_grad():
        y = teacher(x).argmax(1)
        flipped = (teacher(x + flip).argmax(1) != y).float().mean()
    assert flipped >= 0.5  # most inputs leave their clean label
    assert float(flip.norm()) < float(div.norm())  # the unbounded divergence keeps growing delta
    with pytest.raises(ValueError, match="objective must be"):
        SelfRetrospection(student, teacher, objective="maximize")


def test_sr_unlearning_criterion_follows_the_method_unless_set() -> None:
    from abd.experiment.distill_config import DistillConfig, SROptions

    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)

    def l1(a, b):
        return (a - b).abs().mean()

    assert DistillConfig(teacher="t", method="zskt").resolved().sr.unlearn == "kl"
    dfad = DistillConfig(teacher="t", method="dfad").resolved()
    assert dfad.sr.unlearn == "method"  # DFAD's sr_defaults
    assert DistillConfig(teacher="t", method="dfad", sr=SROptions(unlearn="kl")).resolved().sr.unlearn == "kl"
    dfad_sr = dfad.sr.build(student, teacher, l1)
    assert dfad_sr.divergence is kl_mean and dfad_sr.unlearn_divergence is l1  # synthesis keeps the KL
    assert SROptions().build(student, teacher, l1).unlearn_divergence is kl_mean
    x = torch.randn(8, 1, 28, 28)
    loss = dfad_sr.step(x)
    with torch.no_grad():
        expected = dfad_sr.weight * l1(teacher(x), student(x + dfad_sr.last_delta))
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)


def test_mixed_consistency_perturbs_only_part_of_the_batch() -> None:
    torch.manual_seed(0)
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28).eval()
    x = torch.randn(16, 1, 28, 28)
    gen = torch.Generator().manual_seed(3)
    sr = SelfRetrospection(student, teacher, inner_rounds=3, mode="consistency", mix_portion=0.25, generator=gen)
    state = gen.get_state()
    delta = sr.synthesize(x)
    sr.synthesize = lambda x, t=None: delta  # the same delta in step()
    loss = sr.step(x)
    idx = torch.randperm(16, generator=torch.Generator().set_state(state))[:4]
    with torch.no_grad():
        expected = sr.weight * kl_mean(teacher(x)[idx], student(x + delta)[idx])
        whole = sr.weight * kl_mean(teacher(x), student(x + delta))
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    assert not torch.allclose(loss.detach(), whole, rtol=1e-3)


def test_resolved_config_spells_out_the_methods_unlearning_criterion(tmp_path) -> None:
    from abd.experiment.distill_config import DistillConfig, SROptions

    assert DistillConfig(teacher=str(tmp_path), method="dfad").resolved().sr.unlearn == "method"
    assert DistillConfig(teacher=str(tmp_path), method="zskt").resolved().sr.unlearn == "kl"
    assert DistillConfig(teacher=str(tmp_path), method="zskt",
                         sr=SROptions(divergence="method")).resolved().sr.unlearn == "method"
    assert DistillConfig(teacher=str(tmp_path), method="dfad",
                         sr=SROptions(unlearn="kl")).resolved().sr.unlearn == "kl"


def test_clean_targets_occlude_the_found_trigger(backdoored_teacher_dir) -> None:
    from abd.attacks import create_trigger
    from abd.attacks.poison import make_eval_data
    from abd.data import load_dataset

    teacher, student, _ = _teacher_student_batch(backdoored_teacher_dir)
    ds = load_dataset("mnist5k")
    ev = make_eval_data(ds, create_trigger("badnet_grid", ds.image_size, ds.channels), 0)
    sr = SelfRetrospection(student, teacher, inner_rounds=4, pert_lr=0.5, l1=0.01, l2=0.01, warm_start=True,
                           support=0.02, clean_target=True)
    assert sr.clean_dilate == 2
    xp, yp, xc, yc = ev.x_poison[:500], ev.y_poison[:500], ev.x_clean[:500], ev.y_clean[:500]
    with torch.no_grad():
        tp, tc = teacher(xp), teacher(xc)
        assert torch.equal(sr.clean_targets(xp, tp), tp)  # nothing found yet: the teacher's answer as it is
        for _ in range(30):  # SR over training: short syntheses on random batches, each from the last delta
            with torch.enable_grad():
                sr.last_delta = sr.synthesize(torch.randn(64, 1, 28, 28))
        cleaned = sr.clean_targets(xp, tp).argmax(1)
        clean_kept = sr.clean_targets(xc, tc).argmax(1)
        sr.clean_dilate = 0
        support_only = sr.clean_targets(xp, tp).argmax(1)

    def rate(pred, y):
        return float((pred == y).float().mean())

    assert rate(tp.argmax(1), ev.target) > 0.9 and rate(cleaned, ev.target) < 0.2  # the trigger is occluded
    assert rate(cleaned, yp) > 0.8  # ... and the true class answers
    # delta's largest pixels lie around the trigger, not on all of its pixels: the support alone leaves it
    assert rate(support_only, ev.target) > rate(cleaned, ev.target) + 0.3
    assert rate(clean_kept, yc) > rate(tc.argmax(1), yc) - 0.02  # on clean digits the corner hardly matters
    with pytest.raises(ValueError, match="clean_target needs"):
        SelfRetrospection(student, teacher, clean_target=True)
    with pytest.raises(ValueError, match="clean_dilate"):
        SelfRetrospection(student, teacher, support=0.02, clean_target=True, clean_dilate=-1)


def test_dense_candidate_is_image_wide_bounded_and_unlearned_beside_the_patch(backdoored_teacher_dir) -> None:
    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    bound = torch.full((1, 1, 1, 1), 0.9)
    kw = dict(mode="consistency", inner_rounds=4, pert_lr=0.5, l1=0.01, l2=0.01, warm_start=True, support=0.02)
    patch_only = SelfRetrospection(student, teacher, **kw)
    both = SelfRetrospection(student, teacher, dense_max_abs=bound, **kw)
    torch.manual_seed(0)
    extra_patch = patch_only.step(x)
    torch.manual_seed(0)
    extra_both = both.step(x)
    assert patch_only.last_dense is None
    dense = both.last_dense
    assert dense is not None and float(dense.abs().max()) <= 0.9 + 1e-6
    assert int((dense.abs() > 0).sum()) > 0.5 * dense.numel()  # image-wide, not the 2 % patch
    assert int((both.last_delta.abs() > 0).sum()) == round(0.02 * 28 * 28)
    torch.testing.assert_close(both.last_delta, patch_only.last_delta)  # the patch candidate is unchanged
    assert float(extra_both.detach()) > float(extra_patch.detach())  # both perturbations are unlearned
    with torch.no_grad():  # and the dense one does change the teacher's answers
        assert kl_mean(teacher(x), teacher(x + dense)) > 0.01


def test_suspect_class_is_deterministic_and_steers_the_dense_candidate(backdoored_teacher_dir) -> None:
    from abd.defense.retrospect import suspect_class

    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    cls, share = suspect_class(teacher, (1, 28, 28), (0.1307,), (0.3081,))
    assert 0 <= cls < 10 and 0.1 <= share <= 1  # a suspect, not a verdict: this 6-epoch teacher's default
    assert suspect_class(teacher, (1, 28, 28), (0.1307,), (0.3081,)) == (cls, share)  # is class 2, not 0
    bound = torch.full((1, 1, 1, 1), 0.97)
    kw = dict(mode="consistency", inner_rounds=8, pert_lr=0.5, l2=0.01, support=0.02, dense_max_abs=bound)
    toward = {}
    for suspect in (0, 7):
        sr = SelfRetrospection(student, teacher, suspect=suspect, **kw)
        sr.step(x)
        with torch.no_grad():
            toward[suspect] = float((teacher(x + sr.last_dense).argmax(1) == suspect).float().mean())
    assert toward[0] > 0.5 > toward[7]  # a bounded image-wide change reaches the backdoor target, not any class
