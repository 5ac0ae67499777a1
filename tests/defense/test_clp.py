"""CLP: the channel Lipschitz upper bound, the pruning rule, and CLP as a teacher transform / student post-process."""

from __future__ import annotations

import torch
import torch.nn as nn

from abd.defense.clp import channel_lipschitz, clp_prune, conv_bn_pairs


def _power_iteration(op, shape, steps: int = 300) -> float:
    """The operator norm of the linear map `op` on inputs of `shape`, by power iteration through autograd."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    for _ in range(steps):
        x = x / x.norm()
        x.requires_grad_(True)
        y = op(x)
        (g,) = torch.autograd.grad(0.5 * y.pow(2).sum(), x)  # J^T J x
        x = g.detach()
    x = x / x.norm()
    return float(op(x).detach().norm())


def test_uclc_of_a_1x1_conv_with_bn_equals_the_channels_operator_norm() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 3, 1, bias=False), nn.BatchNorm2d(3).eval()
    bn.weight.data = torch.tensor([0.5, -2.0, 1.5])
    bn.running_var.data = torch.tensor([0.25, 4.0, 1.0])
    lips = channel_lipschitz(conv, bn)
    for k in range(3):  # x -> gamma_k / sigma_k * (W_k * x): linear, its norm is the channel's Lipschitz constant
        scale = bn.weight[k] / torch.sqrt(bn.running_var[k] + bn.eps)
        direct = _power_iteration(lambda x, k=k, scale=scale: scale * conv(x)[:, k], (1, 4, 5, 5))
        assert abs(float(lips[k]) - direct) < 1e-3 * direct


def test_uclc_is_the_spectral_norm_of_the_channel_kernel_and_bounds_the_channel() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    lips = channel_lipschitz(conv)
    for k in range(5):
        w = conv.weight[k].detach().reshape(3, 9)
        assert torch.isclose(lips[k], torch.linalg.svdvals(w)[0], rtol=1e-5)  # a direct SVD
        direct = _power_iteration(lambda x, k=k: conv(x)[:, k], (1, 3, 6, 6))
        # the channel's operator norm lies within a factor sqrt(kernel pixels) of the UCLC
        assert direct / 3.0 - 1e-4 <= float(lips[k]) <= direct * 3.0


def test_clp_prunes_exactly_the_outlier_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))
    with torch.no_grad():
        model[0].weight[5] *= 40.0  # one channel with a huge Lipschitz constant: a trigger channel
    pairs = conv_bn_pairs(model)
    assert pairs[0][2] is model[1] and pairs[1][2] is None
    pruned = clp_prune(model, u=3.0)
    assert pruned["0"] == 1
    assert float(model[1].weight[5]) == 0.0 and float(model[1].bias[5]) == 0.0
    assert int((model[1].weight == 0).sum()) == 1  # the others stay
    assert pruned["3"] == 0  # nothing stands out in the second conv


def test_clp_as_a_teacher_transform_and_a_student_post_process(backdoored_teacher_dir, tmp_path) -> None:
    import json

    from abd.checkpoint import load_model
    from abd.distill.config import DistillConfig
    from abd.experiment.runs import build_distiller

    def run(on: str, u: float, name: str) -> tuple[dict, object]:
        cfg = DistillConfig(teacher=str(backdoored_teacher_dir), method="zskt", defense="clp", device="cpu",
                            method_options={"rounds": 2, "batch_size": 8, "kd_steps": 1, "gen_width": 8},
                            defense_options={"clp": {"u": u, "on": on}}, eval_every=2)
        dist = build_distiller(cfg, tmp_path / name, progress=False)
        return dist.run(), dist

    original, _ = load_model(backdoored_teacher_dir)
    m, dist = run("teacher", 0.5, "t")
    assert m["clp_pruned_total"] > 0 and not m["clp_noop"]
    zeroed = sum(int((b.weight == 0).sum()) for _, _, b in conv_bn_pairs(dist.teacher) if b is not None)
    assert zeroed == m["clp_pruned_total"]  # the teacher the method distilled from is the pruned one
    assert all(int((b.weight == 0).sum()) == 0 for _, _, b in conv_bn_pairs(original) if b is not None)
    diag = m["clp_teacher"]
    assert diag["acc_before"] != diag["acc_after"] or diag["asr_before"] != diag["asr_after"]
    m, _ = run("teacher", 50.0, "noop")  # nothing stands out at a huge u: the run says the defense did nothing
    assert m["clp_noop"] and "message" not in m["clp_teacher"]
    m, dist = run("student", 0.5, "s")
    assert m["clp_pruned_total"] > 0 and "clp_teacher" not in m
    zeroed = sum(int((b.weight == 0).sum()) for _, _, b in conv_bn_pairs(dist.student) if b is not None)
    assert zeroed == m["clp_pruned_total"]
    saved = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert saved["acc"] == m["acc"]  # the metrics are the pruned student's


def test_clp_sweep_command_prints_one_row_per_threshold(backdoored_teacher_dir, capsys) -> None:
    from abd.cli import main

    assert main(["clp-sweep", str(backdoored_teacher_dir), "--u", "0.5,50"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith(("| 0.5", "| 50"))]
    assert len(rows) == 2 and rows[1].split("|")[2].strip() == "0"  # nothing pruned at u = 50
