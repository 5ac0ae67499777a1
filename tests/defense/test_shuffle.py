"""Shuffling Vaccine on a real backdoored teacher: the mask and the score single out triggered inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from abd.attacks import create_trigger
from abd.attacks.poison import make_eval_data
from abd.checkpoint import load_model
from abd.data import load_dataset
from abd.defense import ShufflingVaccine, shufflable_layers


@pytest.fixture(scope="module")
def teacher_and_data(backdoored_teacher_dir):
    teacher, meta = load_model(backdoored_teacher_dir)
    ds = load_dataset("mnist5k")
    ev = make_eval_data(ds, create_trigger("badnet_grid", ds.image_size, ds.channels), 0)
    return teacher.eval(), ev


def test_copies_are_shuffled_frozen_and_teacher_untouched(teacher_and_data) -> None:
    teacher, _ = teacher_and_data
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    sv = ShufflingVaccine(teacher, n_copies=3, n_layers=1, seed=0)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    name = sv.layer_names[0]
    w_t = teacher.get_submodule(name).weight
    for c in sv.copies:
        w_c = c.get_submodule(name).weight
        assert not torch.equal(w_c, w_t)  # input channels permuted...
        torch.testing.assert_close(w_c.sum(1), w_t.detach().sum(1))  # ...but the same kernels
        assert not any(p.requires_grad for p in c.parameters())


def test_argmax_mask_flags_triggered_inputs_far_more_than_clean(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, mask="argmax", seed=0)
    flag_poison = sv.flag(ev.x_poison).float().mean().item()
    flag_clean = sv.flag(ev.x_clean).float().mean().item()
    assert flag_poison > 0.9
    assert flag_poison > flag_clean + 0.4


def test_tail_mask_flags_triggered_inputs_in_a_mixed_batch(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, mask="tail", seed=0)
    x = torch.cat([ev.x_clean[:230], ev.x_poison[:26]])
    is_poison = torch.cat([torch.zeros(230), torch.ones(26)]).bool()
    flags = sv.flag(x)
    assert flags[is_poison].float().mean() > 0.8
    assert flags[~is_poison].float().mean() < 0.05


def test_detection_auc_and_divergence_gap(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    diag = ShufflingVaccine(teacher, n_layers=1, seed=1).detection_auc(ev.x_poison, ev.x_clean)
    assert diag["auc"] > 0.95
    assert diag["mean_d_poison"] < 0.1 * diag["mean_d_clean"]
    assert diag["log10_d_median_poison"] < diag["log10_d_median_clean"] - 2  # orders of magnitude apart


def test_verification_turns_sv_on_with_a_tail_and_off_without(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, seed=0, max_trials=3)
    mixed = torch.cat([ev.x_clean[:400], ev.x_poison[:40]])
    report = sv.verify(mixed)
    assert report.active and sv.enabled and sv.threshold is not None
    sv2 = ShufflingVaccine(teacher, n_layers=1, seed=0, max_trials=2, tail_ratio=0.5)
    report2 = sv2.verify(ev.x_clean[:400])
    assert not report2.active and not sv2.enabled and len(report2.trials) == 2
    assert report.log10_d_p01 < report2.log10_d_p01 - 2  # the triggered tail shows in the 1st percentile
    assert report2.log10_d_p01 <= report2.log10_d_median
    assert sv2.penalty(ev.x_clean[:8]).item() == 0.0


def test_penalty_pushes_the_input_away_from_agreement(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, mask="argmax", seed=0)
    x = ev.x_poison[:16].clone().requires_grad_(True)
    sv.penalty(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_layers_are_chosen_by_module_type_and_single_channel_convs_skipped() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3)  # one input channel: nothing to permute
            self.features = nn.Conv2d(4, 4, 3, bias=True)  # not named "conv", has a bias
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.features(self.stem(x)).mean((2, 3)))

    names = [n for n, _ in shufflable_layers(Net())]
    assert names == ["features"]
    assert [n for n, _ in shufflable_layers(Net(), ("conv", "linear"))] == ["features", "head"]
    with pytest.raises(ValueError, match="no shufflable"):
        ShufflingVaccine(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), n_layers=1)


def test_student_loss_repels_flagged_samples_only_up_to_the_cap(teacher_and_data) -> None:
    from abd.distill.losses import kl_elementwise

    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, mask="argmax", seed=0, coef=0.1)
    x = torch.cat([ev.x_clean[:32], ev.x_poison[:32]])
    with torch.no_grad():
        t = teacher(x)
    flagged = sv.flag(x)
    assert flagged[32:].all() and not flagged.all()
    wild = -50.0 * t.detach().clone()  # a student that contradicts the teacher as much as it can
    per = kl_elementwise(t, wild.requires_grad_(True), 8.0).mean(1)
    cap = kl_elementwise(t, torch.zeros_like(t), 8.0).mean(1)  # an uninformed (uniform) student
    unbounded = sv.student_loss(per, x, t)
    bounded = sv.student_loss(per, x, t, cap=cap)
    assert per[flagged].mean() > 10 * cap[flagged].mean()
    assert bounded > unbounded  # the repulsion stops at the cap...
    kept = per[~flagged].mean()
    torch.testing.assert_close(bounded, kept - 0.1 * torch.minimum(per, cap)[flagged].mean())
    bounded.backward()  # ...so it no longer pulls the flagged samples' logits further away
    assert wild.grad[flagged].abs().sum() == 0 and wild.grad[~flagged].abs().sum() > 0


def test_log_penalty_pushes_triggered_inputs_harder_than_the_paper_term(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    grads = {}
    for form in ("d", "log"):
        sv = ShufflingVaccine(teacher, n_layers=1, mask="argmax", penalty=form, seed=0)
        x = ev.x_poison[:16].clone().requires_grad_(True)
        sv.penalty(x).backward()
        grads[form] = x.grad.abs().sum().item()
    assert grads["log"] > 100 * grads["d"] > 0  # d ~ 1e-6 on triggered digits: its gradient all but vanishes
    with pytest.raises(ValueError, match="penalty"):
        ShufflingVaccine(teacher, penalty="l2")


def test_margin_flags_only_inputs_far_below_the_typical_divergence(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    x = torch.cat([ev.x_clean[:400], ev.x_poison[:40]])
    plain, deep = (ShufflingVaccine(teacher, n_layers=1, seed=0, margin=m) for m in (0.0, 3.0))
    plain.verify(x), deep.verify(x)
    assert deep.threshold < plain.threshold  # the same verification, a deeper mask threshold
    s = -deep.scores(x)
    assert deep.threshold <= float(s.median()) - 3.0
    flags_plain, flags_deep = plain.flag(x), deep.flag(x)
    assert flags_deep[400:].float().mean() > 0.8  # triggered digits lie ~6 decades down: still flagged
    assert flags_deep[:400].sum() <= flags_plain[:400].sum()


def test_floor_flags_a_batch_that_is_all_trigger_like(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    x = ev.x_poison[:128]  # every input triggered: the batch has no low tail of its own
    relative, absolute = (ShufflingVaccine(teacher, n_layers=1, seed=0, floor=f) for f in (None, -4.0))
    assert relative.flag(x).float().mean() < 0.2
    assert absolute.flag(x).float().mean() > 0.8
    assert absolute.flag(ev.x_clean[:512]).float().mean() < 0.1  # clean digits stay far above the floor


def test_balance_term_measures_and_reduces_the_batchs_class_imbalance(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, seed=0, balance=1.0)
    _, one_class = sv.regularizer(ev.x_poison[:64])
    _, balanced = sv.regularizer(ev.x_clean[torch.randperm(len(ev.x_clean))[:256]])
    assert one_class["sv_imbalance"] > 1.5 > 0.3 > balanced["sv_imbalance"]  # log 10 = 2.30 at worst
    x = ev.x_poison[:64].clone().requires_grad_(True)  # the synthesizer minimizes -coef * R
    for _ in range(30):
        loss = -sv.coef * sv.regularizer(x)[0]
        g, = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x -= 0.5 * g.sign()
    assert sv.regularizer(x.detach())[1]["sv_imbalance"] < one_class["sv_imbalance"] - 0.5


def test_bn_prior_is_small_on_real_digits_and_large_on_bright_noise(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    sv = ShufflingVaccine(teacher, n_layers=1, seed=0, bn_prior=1.0)
    real = float(sv.bn_statistics(ev.x_clean[:256]).detach())
    noise = float(sv.bn_statistics(torch.rand(256, *ev.x_clean.shape[1:]) * 3).detach())
    assert real < 0.5 * noise
    _, logs = sv.regularizer(ev.x_clean[:64])
    assert "sv_bn" in logs


def test_detection_flag_rates_mean_what_their_names_say(teacher_and_data) -> None:
    teacher, ev = teacher_and_data
    diag = ShufflingVaccine(teacher, n_layers=1, seed=1, floor=-4.0).detection_auc(ev.x_poison, ev.x_clean)
    assert diag["auc"] > 0.95
    assert diag["flag_rate_poison"] > 0.8 > 0.1 > diag["flag_rate_clean"]


class _TwoConv(nn.Module):
    """A small classifier with two multi-channel convs (the vaccine shuffles the last)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 3), nn.Conv2d(6, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_vaccine_shuffles_parametrized_weights(wrap: str) -> None:
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    teacher = _TwoConv()
    teacher.c2 = getattr(parametrizations, wrap)(teacher.c2)
    teacher.eval()
    sv = ShufflingVaccine(teacher, n_layers=1, seed=0)
    x = torch.randn(16, 1, 12, 12)
    with torch.no_grad():
        t = teacher(x)
        assert all(not torch.allclose(c(x), t) for c in sv.copies)  # the copies compute with shuffled weights
    assert float(sv.divergence(x)[0].mean()) > 0
    with torch.no_grad():  # the teacher itself is untouched, parametrization included
        assert torch.equal(teacher(x), t) and hasattr(teacher.c2, "parametrizations")


def test_vaccine_refuses_uncopyable_hooks_and_a_shuffle_that_changes_nothing() -> None:
    torch.manual_seed(0)
    legacy = _TwoConv()
    legacy.c2 = torch.nn.utils.weight_norm(legacy.c2)
    try:
        ShufflingVaccine(legacy.eval(), n_layers=1)
    except ValueError as e:  # the copy fails on torch's hooks: the message says how to fold them
        assert "remove_weight_norm" in str(e)
    else:  # a torch that can copy them: the copies must then really be shuffled
        pass
    same = _TwoConv()
    with torch.no_grad():
        same.c2.weight.copy_(same.c2.weight[:, :1].expand_as(same.c2.weight))  # every input channel alike
    with pytest.raises(ValueError, match="equal the teacher"):
        ShufflingVaccine(same.eval(), n_layers=1)
