"""Self-Retrospection: perturbation synthesis and the unlearning step on a real backdoored teacher."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from abd.checkpoint import load_model
from abd.defense import SelfRetrospection, SROptions, frozen_bn_stats
from abd.distill.losses import kl_mean
from abd.models import create_model

MNIST = ((0.1307,), (0.3081,))  # the normalization of the tests' teacher


def test_frozen_bn_stats_keeps_running_statistics() -> None:
    m = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28).train()
    before = [b.clone() for b in m.buffers()]
    with frozen_bn_stats(m):
        m(torch.randn(8, 1, 28, 28))
    assert all(torch.equal(a, b) for a, b in zip(before, m.buffers()))
    m(torch.randn(8, 1, 28, 28))
    assert not all(torch.equal(a, b) for a, b in zip(before, m.buffers()))


def _teacher_student_batch(teacher_dir):
    """The backdoored teacher (eval), a fresh LeNet-5-half student and a seeded random batch of 32."""
    teacher, _ = load_model(teacher_dir)
    teacher.eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    torch.manual_seed(0)
    return teacher, student, torch.randn(32, 1, 28, 28)


def _random_pair():
    torch.manual_seed(0)
    teacher = create_model("lenet5", num_classes=10, in_channels=1, image_size=28).eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    return teacher, student, torch.randn(16, 1, 28, 28)


def test_synthesized_perturbation_changes_the_teacher_and_leaves_grads_clean(backdoored_teacher_dir) -> None:
    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    sr = SelfRetrospection(student, teacher, SROptions(mode="hypergrad", inner_rounds=10, pert_lr=0.5, l2=0.01))
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


def test_hypergradient_step_accumulates_into_student_grads() -> None:
    teacher, student, x = _random_pair()
    sr = SelfRetrospection(student, teacher, SROptions(mode="hypergrad", inner_rounds=3))
    extra = sr.step(x)
    assert float(extra) == 0.0
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_consistency_mode_distills_the_perturbed_batch_towards_the_teachers_clean_answer() -> None:
    teacher, student, x = _random_pair()
    sr = SelfRetrospection(student, teacher, SROptions(inner_rounds=3, weight=2.0))
    loss = sr.step(x)
    assert all(p.grad is None for p in student.parameters())  # a loss term, not accumulated gradients
    with torch.no_grad():
        expected = 2.0 * kl_mean(teacher(x), student(x + sr.last_delta))
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    # clipped: the perturbed images stay valid images, and the term is computed on them
    opts = SROptions(inner_rounds=3, pert_lr=2.0, clip=True, support=None, blend=None)
    clipped = SelfRetrospection(student, teacher, opts, mean=(0.0,), std=(1.0,))
    x = torch.rand(16, 1, 28, 28)
    loss = clipped.step(x)
    xd = clipped.perturb(x, clipped.last_delta)
    assert float(xd.min()) >= 0.0 and float(xd.max()) <= 1.0
    assert float((x + clipped.last_delta).abs().max()) > 1.0  # the clamp did act
    with torch.no_grad():
        assert torch.allclose(loss, opts.weight * kl_mean(teacher(x), student(xd)), rtol=1e-5)
    with pytest.raises(ValidationError, match="mode"):
        SROptions(mode="hypergradient")


def test_consistency_reuses_its_perturbation_on_a_repeated_batch_and_the_paper_does_not(
        backdoored_teacher_dir, monkeypatch) -> None:
    teacher, _ = load_model(backdoored_teacher_dir)
    teacher.eval()
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    calls = []
    for mode, expected in (("consistency", 2), ("hypergrad", 3)):
        sr = SelfRetrospection(student, teacher, SROptions(mode=mode, inner_rounds=2))
        real = sr.synthesize
        monkeypatch.setattr(sr, "synthesize", lambda x, t=None, real=real: calls.append(1) or real(x, t))
        x, y = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
        calls.clear()
        for batch in (x, x, y):  # ZSKT: the same pseudo-batch for its kd_steps, then a new one
            student.zero_grad()
            extra = sr.step(batch)
            if extra.requires_grad:  # the consistency mode's term (the paper's mode fills .grad itself)
                extra.backward()
        assert len(calls) == expected
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


def test_synthesis_uses_a_temperature_one_kl_in_consistency_and_the_methods_divergence_in_the_paper() -> None:
    from abd.distill.zskt import ZSKT, ZSKTOptions

    teacher, student, _ = _random_pair()

    def l1(a, b):
        return (a - b).abs().mean()

    assert SelfRetrospection(student, teacher, SROptions(), divergence=l1).divergence is kl_mean
    assert SelfRetrospection(student, teacher, SROptions(mode="hypergrad"), divergence=l1).divergence is l1
    # ZSKT's own divergence is that KL: its SR runs are the same whichever is chosen
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    zskt = ZSKT.__new__(ZSKT)
    zskt.opts = ZSKTOptions()
    assert torch.equal(zskt.divergence(a, b), kl_mean(a, b))


def test_support_bound_finds_the_trigger_corner(backdoored_teacher_dir) -> None:
    teacher, student, _ = _teacher_student_batch(backdoored_teacher_dir)

    def corner_share(support):
        torch.manual_seed(0)
        opts = SROptions(inner_rounds=4, pert_lr=0.5, l1=0.01, l2=0.01, support=support, blend=None)
        sr = SelfRetrospection(student, teacher, opts)
        for _ in range(30):  # as over training: short syntheses on new batches, each from the last delta
            sr.last_delta = sr.synthesize(torch.randn(64, 1, 28, 28))
        mag = sr.last_delta.abs().sum(1)[0]
        return int((mag > 0).sum()), float(mag[20:, 20:].sum() / mag.sum())  # the trigger: bottom right

    n_free, share_free = corner_share(None)
    n_sparse, share_sparse = corner_share(0.02)
    assert n_free > 700 and n_sparse == round(0.02 * 28 * 28)
    assert share_sparse >= 0.9 > share_free  # the dense delta spreads over clean-feature pixels too
    with pytest.raises(ValidationError, match="support"):
        SROptions(support=1.5)


def test_sr_unlearning_criterion_follows_the_method_unless_set() -> None:
    from abd.distill.config import DistillConfig

    teacher, student, _ = _random_pair()

    def l1(a, b):
        return (a - b).abs().mean()

    def unlearn(method, **given):
        cfg = DistillConfig(teacher="t", method=method, defense="abd", defense_options={"sr": given} if given else {})
        return cfg.resolved().defense_options["sr"]["unlearn"]

    assert unlearn("zskt") == "kl"
    assert unlearn("dfad") == "method"  # the SR defense's option for DFAD
    assert unlearn("dfad", unlearn="kl") == "kl"
    assert unlearn("zskt", mode="hypergrad") == "method"  # the paper's mode unlearns with the method's
    opts = DistillConfig(teacher="t", method="dfad", defense="abd").options_of("sr")
    dfad_sr = SelfRetrospection(student, teacher, opts.model_copy(update={"clean_target": False}), divergence=l1)
    assert dfad_sr.divergence is kl_mean and dfad_sr.unlearn_divergence is l1  # synthesis keeps the KL
    x = torch.randn(8, 1, 28, 28)
    loss = dfad_sr.step(x)
    with torch.no_grad():
        expected = dfad_sr.weight * l1(teacher(x), student(x + dfad_sr.last_delta))
    assert torch.allclose(loss.detach(), expected, rtol=1e-5)


def test_mode_options_are_inert_in_the_other_mode() -> None:
    paper = SROptions(mode="hypergrad")
    assert paper.support is None and paper.blend is None and paper.l1 == 0 and not paper.clean_target
    with pytest.raises(ValidationError, match="consistency mode"):
        SROptions(mode="hypergrad", support=0.02)
    with pytest.raises(ValidationError, match="clean_target needs a support"):
        SROptions(support=None, clean_target=True)


def test_clean_targets_occlude_the_found_trigger(backdoored_teacher_dir, monkeypatch) -> None:
    import abd.defense.retrospect as retrospect
    from abd.attacks import create_trigger
    from abd.attacks.poison import make_eval_data
    from abd.data import load_dataset

    teacher, student, _ = _teacher_student_batch(backdoored_teacher_dir)
    ds = load_dataset("mnist5k")
    ev = make_eval_data(ds, create_trigger("badnet_grid", ds.image_size, ds.channels), 0)
    sr = SelfRetrospection(student, teacher, SROptions(clean_target=True, blend=None))
    assert retrospect.CLEAN_DILATE == 2
    xp, yp, xc, yc = ev.x_poison[:500], ev.y_poison[:500], ev.x_clean[:500], ev.y_clean[:500]
    with torch.no_grad():
        tp, tc = teacher(xp), teacher(xc)
        assert torch.equal(sr.clean_targets(xp, tp), tp)  # nothing found yet: the teacher's answer as it is
        for _ in range(30):  # SR over training: short syntheses on random batches, each from the last delta
            with torch.enable_grad():
                sr.last_delta = sr.synthesize(torch.randn(64, 1, 28, 28))
        cleaned = sr.clean_targets(xp, tp).argmax(1)
        clean_kept = sr.clean_targets(xc, tc).argmax(1)
        monkeypatch.setattr(retrospect, "CLEAN_DILATE", 0)
        support_only = sr.clean_targets(xp, tp).argmax(1)

    def rate(pred, y):
        return float((pred == y).float().mean())

    assert rate(tp.argmax(1), ev.target) > 0.9 and rate(cleaned, ev.target) < 0.2  # the trigger is occluded
    assert rate(cleaned, yp) > 0.8  # ... and the true class answers
    # delta's largest pixels lie around the trigger, not on all of its pixels: the support alone leaves it
    assert rate(support_only, ev.target) > rate(cleaned, ev.target) + 0.3
    assert rate(clean_kept, yc) > rate(tc.argmax(1), yc) - 0.02  # on clean digits the corner hardly matters


def test_blend_candidate_is_image_wide_in_range_and_unlearned_beside_the_patch(backdoored_teacher_dir) -> None:
    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    unit = {"mean": (0.0,), "std": (1.0,)}  # normalized units = pixel units: the pattern lies in [0, 1]
    patch_only = SelfRetrospection(student, teacher, SROptions(blend=None), **unit)
    both = SelfRetrospection(student, teacher, SROptions(blend=0.9, blend_gate=None),  # the candidate, ungated
                             generator=torch.Generator().manual_seed(0), **unit)
    torch.manual_seed(0)
    extra_patch = patch_only.step(x)
    torch.manual_seed(0)
    extra_both = both.step(x)
    assert patch_only.last_pattern is None
    pattern = both.last_pattern
    assert pattern is not None and pattern.shape == (1, *x.shape[1:])
    assert float(pattern.min()) >= 0.0 and float(pattern.max()) <= 1.0  # a pattern of valid pixels
    assert int((pattern != x.mean(0, keepdim=True)).sum()) > 0.5 * pattern.numel()  # moved image-wide
    assert int((both.last_delta.abs() > 0).sum()) == round(0.02 * 28 * 28)
    torch.testing.assert_close(both.last_delta, patch_only.last_delta)  # the patch candidate is unchanged
    assert float(extra_both.detach()) > float(extra_patch.detach())  # both perturbations are unlearned
    with torch.no_grad():  # and blending the pattern in does change the teacher's answers
        assert kl_mean(teacher(x), teacher(both.blended(x, pattern, 0.9))) > 0.01

    def unlearning_loss(seed: int) -> float:  # the blend weights are drawn per sample from SR's generator
        sr = SelfRetrospection(student, teacher, SROptions(blend=0.9, blend_gate=None),
                               generator=torch.Generator().manual_seed(seed), **unit)
        sr.last_delta, sr.last_pattern, sr._last_x = both.last_delta, both.last_pattern, x  # reused: no synthesis
        sr.blend_on = True
        return float(sr.step(x).detach())

    assert unlearning_loss(1) == unlearning_loss(1) != unlearning_loss(2)


def test_suspect_class_is_deterministic_and_steers_the_blend_candidate(backdoored_teacher_dir) -> None:
    from abd.defense.retrospect import suspect_class

    teacher, student, x = _teacher_student_batch(backdoored_teacher_dir)
    cls, share = suspect_class(teacher, (1, 28, 28), *MNIST)
    assert 0 <= cls < 10 and 0.1 <= share <= 1  # a suspect, not a verdict: this 6-epoch teacher's default
    assert suspect_class(teacher, (1, 28, 28), *MNIST) == (cls, share)  # is class 2, not 0
    toward = {}
    for suspect in (0, 7):
        sr = SelfRetrospection(student, teacher, SROptions(inner_rounds=8, blend=0.3), mean=(0.0,), std=(1.0,))
        sr.suspect = suspect
        sr.step(x)
        with torch.no_grad():
            toward[suspect] = float((teacher(sr.blended(x, sr.last_pattern, 0.3)).argmax(1) == suspect)
                                    .float().mean())
    assert toward[0] > 0.5 > toward[7]  # a bounded image-wide change reaches the backdoor target, not any class


def test_blend_gate_opens_for_an_image_wide_trigger_and_stays_shut_for_a_patch(backdoored_teacher_dir,
                                                                               tmp_path) -> None:
    from abd.attacks.config import TeacherConfig
    from abd.attacks.teacher import train_teacher
    from abd.data import load_dataset

    blend_dir = tmp_path / "blend"
    m = train_teacher(TeacherConfig(trigger="blend", epochs=4, device="cpu"), blend_dir, progress=False)
    assert m["asr"] > 0.9, m  # a real image-wide backdoor (target 0)
    ds = load_dataset("mnist5k")
    digits = torch.as_tensor(ds.x_test[:64]).float().permute(0, 3, 1, 2) / 255
    x = (digits - MNIST[0][0]) / MNIST[1][0]
    shares = {}
    for name, tdir in (("blend", blend_dir), ("badnet_grid", backdoored_teacher_dir)):
        teacher, student, _ = _teacher_student_batch(tdir)
        sr = SelfRetrospection(student, teacher, SROptions(), generator=torch.Generator().manual_seed(0),
                               mean=MNIST[0], std=MNIST[1])
        for i in range(4):  # four rounds of pattern synthesis on four batches
            sr.step(x[16 * i: 16 * (i + 1)])
        shares[name] = (sr.clean_stats["sr_blend_faint"], sr.blend_on, sr.blend_count)
    assert shares["blend"][1] and shares["blend"][0] >= 0.8, shares  # a faint blend fires the trigger
    assert not shares["badnet_grid"][1] and shares["badnet_grid"][0] < 0.8, shares  # a drawn class needs more
    assert shares["badnet_grid"][2][1] == 4  # every synthesis was gated and counted
