"""Real teacher training on mnist5k/lenet5 (5 epochs): the backdoor works, outputs, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from abd.attacks.config import TeacherConfig
from abd.attacks.poison import make_eval_data
from abd.attacks.teacher import eval_trigger_from_meta, train_teacher
from abd.checkpoint import load_model
from abd.data import load_dataset
from abd.metrics import evaluate

TINY = {"dataset": "mnist5k", "model": "lenet5", "trigger": "badnet_grid", "epochs": 5, "seed": 0,
        "device": "cpu"}
HEADLINE = ("acc", "asr", "ra", "target_acc", "asr_n", "acc_n", "n_poison", "n_train")


@pytest.fixture(scope="module")
def badnet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("badnet")
    return out, train_teacher(TeacherConfig(**TINY), out, progress=False)


def test_backdoored_teacher_works(badnet_run: tuple[Path, dict[str, Any]]) -> None:
    _, m = badnet_run
    assert m["acc"] > 0.9, m
    assert m["asr"] > 0.9, m
    assert m["ra"] < 0.1, m
    assert m["n_poison"] == 400 and m["n_train"] == 4000  # int(0.1 * 4000), the trigger's default rate
    assert m["asr_n"] == 900  # the 1,000 test images minus the 100 of the target class


def test_outputs(badnet_run: tuple[Path, dict[str, Any]]) -> None:
    out, m = badnet_run
    for name in ("teacher.safetensors", "teacher.json", "metrics.json", "metrics.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("acc", "asr", "ra", "target_acc"):
        assert 0.0 <= metrics[key] <= 1.0 and metrics[key] == pytest.approx(m[key])
    assert metrics["asr_n"] == 900
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["arch"]["name"] == "lenet5" and meta["dataset"] == "mnist5k"
    assert meta["trigger"] == "badnet_grid" and meta["eval_trigger"] == "badnet_grid"
    assert meta["target"] == 0 and meta["poison_rate"] == 0.1 and meta["seed"] == 0
    assert meta["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert {"torch", "numpy", "python"} <= set(meta["versions"])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["poison_rate"] == 0.1 and cfg["cutout"] == 0.0  # resolved, not None
    assert TeacherConfig(**cfg) == TeacherConfig(**meta["config"])
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5] and log[-1]["asr"] == pytest.approx(m["asr"])


def test_reload_gives_same_metrics(badnet_run: tuple[Path, dict[str, Any]]) -> None:
    out, m = badnet_run
    model, meta = load_model(out)
    ds = load_dataset(meta["dataset"])
    again = evaluate(model, make_eval_data(ds, eval_trigger_from_meta(meta, ds), meta["target"]))
    for key in ("acc", "asr", "ra", "target_acc"):
        assert again[key] == pytest.approx(m[key])


def test_same_seed_same_numbers(badnet_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, m = badnet_run
    m2 = train_teacher(TeacherConfig(**TINY), tmp_path, progress=False)
    assert {k: m[k] for k in HEADLINE} == {k: m2[k] for k in HEADLINE}
    a = load_model(out)[0].state_dict()
    b = load_model(tmp_path)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clean_teacher_reports_eval_trigger(tmp_path: Path) -> None:
    cfg = TeacherConfig(**{**TINY, "trigger": "none", "eval_trigger": "blend", "epochs": 1})
    m = train_teacher(cfg, tmp_path, progress=False)
    assert m["n_poison"] == 0 and m["asr_n"] == 900 and "asr" in m and "ra" in m
    assert m["asr"] < 0.1
    meta = json.loads((tmp_path / "teacher.json").read_text())
    assert meta["trigger"] == "none" and meta["eval_trigger"] == "blend" and meta["poison_rate"] == 0.0


def test_target_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target 10 out of range"):
        train_teacher(TeacherConfig(**{**TINY, "target": 10}), tmp_path, progress=False)
