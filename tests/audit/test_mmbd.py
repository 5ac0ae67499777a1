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


@pytest.fixture(scope="module")
def clean_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean LeNet-5 trained as the backdoored fixture teacher is (6 epochs), without poison."""
    from abd.attacks.config import TeacherConfig
    from abd.attacks.teacher import train_teacher

    clean = tmp_path_factory.mktemp("clean")
    train_teacher(TeacherConfig(trigger="none", epochs=6, device="cpu"), clean, progress=False)
    return clean


def test_audit_of_a_bare_weights_file_and_of_a_clean_teacher(clean_teacher_dir: Path, tmp_path: Path,
                                                              capsys) -> None:
    clean = clean_teacher_dir
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


class Patch(nn.Module):
    """A linear classifier on 28 x 28 images with a planted shortcut: four bright pixels in a corner add a
    large amount to class 6's logit, whatever else the image shows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(784, 10)
        with torch.no_grad():
            self.fc.weight.normal_(0, 0.3)
            corner = torch.zeros(28, 28)
            corner[24:26, 24:26] = 1.0
            self.fc.weight[6] += 40.0 * corner.flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_retrospect_finds_the_small_mask_of_a_planted_shortcut() -> None:
    r = create_detector("retrospect", {"per_class": 4, "invert_steps": 40, "steps": 300}).run(
        Patch(), SPEC, torch.device("cpu"))
    norms = r.extra["mask_norms"]
    assert r.target_class == 6 and r.backdoored and r.score > r.threshold
    assert norms[6] < 0.5 * sorted(norms)[5]  # a far smaller mask than the median class needs
    assert r.trigger is not None and r.mask.shape == (1, 28, 28)
    assert r.mask[0, 24:26, 24:26].mean() > r.mask.mean() * 5  # the mask sits on the planted pixels


def test_combined_detector_takes_the_part_further_above_its_threshold() -> None:
    opts = {"retrospect": {"per_class": 4, "invert_steps": 40, "steps": 300}, "shuffle": {"copies": 3, "inputs": 16}}
    r = create_detector("combined", opts).run(Patch(), SPEC, torch.device("cpu"))
    assert r.extra["lead"] == "retrospect" and r.target_class == 6 and r.backdoored
    assert "shuffle" in r.extra["skipped"]  # a linear model has no conv to shuffle: the part is left out
    assert r.score == pytest.approx(r.extra["retrospect_score"] / 3.0)
    assert r.per_class[6] == pytest.approx(r.score)


@pytest.mark.slow
def test_defense_auto_picks_abd_for_the_backdoored_teacher_and_none_for_the_clean_one(
        backdoored_teacher_dir: Path, clean_teacher_dir: Path, tmp_path: Path, capsys) -> None:
    import yaml

    from abd.cli import AUTO_DEFENSE

    picked = {}
    for name, teacher in (("backdoored", backdoored_teacher_dir), ("clean", clean_teacher_dir)):
        out = tmp_path / name
        assert main(["distill", "--teacher", str(teacher), "--defense", "auto", "--method", "zskt", "--rounds", "2",
                     "--device", "cpu", "--out", str(out)]) == 0
        auto = json.loads((out / "defense_auto.json").read_text())
        assert auto["defense"] == AUTO_DEFENSE[auto["audit"]["backdoored"]]
        assert yaml.safe_load((out / "config.yaml").read_text())["defense"] == auto["defense"]
        assert f"-> --defense {auto['defense']}" in capsys.readouterr().out
        picked[name] = auto["defense"]
    assert picked == {"backdoored": "abd", "clean": "none"}


def test_combine_from_parts_equals_running_the_combined_detector(backdoored_teacher_dir: Path) -> None:
    from abd.audit.combined import combine
    from abd.checkpoint import load_model

    model, _ = load_model(backdoored_teacher_dir, "teacher")
    quick = {"per_class": 2, "invert_steps": 10, "steps": 20}
    run = create_detector("combined", {"retrospect": quick}).run(model, SPEC, torch.device("cpu"))
    parts = {"shuffle": create_detector("shuffle").run(model, SPEC, torch.device("cpu")),
             "retrospect": create_detector("retrospect", quick).run(model, SPEC, torch.device("cpu"))}
    joined = combine(parts, 10)
    assert (joined.score, joined.target_class, joined.per_class) == (run.score, run.target_class, run.per_class)
