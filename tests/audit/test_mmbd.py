"""MM-BD and ``abd audit``: the order-statistic test, the margin search, and the verdict on real teachers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from abd.audit import DETECTORS, ModelSpec, create_detector, max_margins, order_pvalue
from abd.cli import main

SPEC = ModelSpec(channels=1, image_size=28, num_classes=10, mean=(0.1307,), std=(0.3081,))
FAST = ["--opt", "starts=4", "--opt", "steps=150", "--device", "cpu"]


def test_order_pvalue_flags_an_outlier_and_not_a_homogeneous_set() -> None:
    rng = np.random.default_rng(0)
    same = rng.gamma(20.0, 2.0, size=10)
    top, p = order_pvalue(same)
    assert top == int(np.argmax(same)) and p > 0.05
    outlier = same.copy()
    outlier[3] = same.max() * 3
    top, p = order_pvalue(outlier)
    assert top == 3 and p < 1e-3
    _, p_neg = order_pvalue(outlier - 100.0)  # negative margins: shifted onto the Gamma's support
    assert p_neg < 0.05


class Linear(nn.Module):
    """A linear classifier whose class 2 is reachable with a far larger margin (a big weight on one pixel)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        with torch.no_grad():
            self.fc.weight.normal_(0, 0.01)
            self.fc.weight[2, 100] = 50.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_max_margins_finds_the_class_with_the_reachable_margin() -> None:
    margins, images = max_margins(Linear(), SPEC, starts=2, steps=100, lr=0.05, device=torch.device("cpu"))
    assert int(margins.argmax()) == 2 and margins[2] > 5 * margins[[0, 1, 3]].max()
    assert images.shape == (10, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert images[2, 0].flatten()[100] == 1.0  # the pixel that drives class 2 is pushed to its bound
    r = create_detector("mmbd", {"starts": 2, "steps": 100}).run(Linear(), SPEC, torch.device("cpu"))
    assert r.backdoored and r.target_class == 2 and r.score > r.threshold


def test_audit_flags_the_backdoored_teacher_and_its_target(backdoored_teacher_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["audit", str(backdoored_teacher_dir), "--out", str(tmp_path / "a"), *FAST]) == 0
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert report["backdoored"] is True and report["target_class"] == 0 and report["detector"] == "mmbd"
    assert report["score"] > report["threshold"] and len(report["per_class"]) == 10
    assert report["reference"] == {"trigger": "badnet_grid", "target": 0}
    assert (tmp_path / "a" / "per_class.png").stat().st_size > 0 and (tmp_path / "a" / "trigger.png").is_file()
    assert "BACKDOORED" in capsys.readouterr().out


def test_audit_of_a_bare_weights_file_and_of_a_clean_teacher(tmp_path: Path, capsys) -> None:
    from abd.attacks.teacher import train_teacher
    from abd.experiment.config import TeacherConfig

    clean = tmp_path / "clean"
    train_teacher(TeacherConfig(trigger="none", epochs=6, device="cpu"), clean, progress=False)
    from safetensors.torch import load_file

    save_file(load_file(str(clean / "teacher.safetensors")), str(tmp_path / "w.safetensors"))
    assert main(["audit", "--weights", str(tmp_path / "w.safetensors"), "--model", "lenet5", "--dataset",
                 "mnist5k", "--out", str(tmp_path / "b"), *FAST]) == 0
    report = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert report["backdoored"] is False and report["score"] <= report["threshold"]
    assert "reference" not in report  # a bare file says nothing about how it was made
    assert "no backdoor found" in capsys.readouterr().out


def test_audit_input_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["audit"]) != 0
    assert main(["audit", "--weights", str(tmp_path / "w.safetensors")]) != 0
    assert main(["audit", str(tmp_path), "--detector", "mmdb"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("abd: error:") for line in err) and len(err) == 3
    assert "mmbd" in err[2] and "mmbd" in DETECTORS.names()


class Shortcut(nn.Module):
    """Two convs; class 3's logit reads the sum over channels (unchanged by a channel shuffle) of a feature
    that fires on any input, the other classes read single channels (scrambled by it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.c2.weight.copy_(torch.eye(4).view(4, 4, 1, 1) * 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))
        out = self.fc(h)
        return torch.cat([out[:, :3], 10 * h.sum(1, keepdim=True), out[:, 4:]], 1)


def test_shuffle_detector_names_the_class_its_shuffled_copies_lean_to() -> None:
    r = create_detector("shuffle", {"copies": 3, "inputs": 16}).run(Shortcut(), SPEC, torch.device("cpu"))
    assert r.target_class == 3 and r.backdoored and abs(sum(r.per_class) - 1) < 1e-5
    assert r.extra["layer"] == "c2"  # the last conv with more than one input channel
    with pytest.raises(ValueError, match="no conv layer"):
        create_detector("shuffle").run(Linear(), SPEC, torch.device("cpu"))
