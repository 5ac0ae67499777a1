"""Benchmark checks are evaluated from data, against the measured results."""

from __future__ import annotations

from abd.experiment.bench import check_targets, load_targets


def _results(abd_asr: float, abd_target: float) -> dict:
    arms = {
        "teacher": {"acc": 0.98, "asr": 1.0},
        "clean_kd": {"acc": 0.95, "asr": 0.01},
        "zskt": {"acc": 0.90, "asr": 0.99, "target_acc": 0.80},
        "zskt+sv": {"asr": 0.95, "time_ratio_vs_vanilla": 1.1},
        "zskt+sr": {"asr": 0.50},
        "zskt+abd": {"acc": 0.87, "asr": abd_asr, "target_acc": abd_target},
    }
    return {"arms": arms, "wall_seconds": 1200.0, "config": {"seeds": 3}}


def test_packaged_targets_pass_and_fail_on_the_right_numbers() -> None:
    targets = load_targets()
    assert len(targets) >= 10
    good = {r["check"]: r["ok"] for r in check_targets(_results(0.02, 0.75), targets)}
    assert all(good.values()), good
    bad = {r["check"]: r["ok"] for r in check_targets(_results(0.02, 0.10), targets)}
    assert not bad["zskt+abd.target_acc >= zskt.target_acc-0.1"]
    assert sum(not ok for ok in bad.values()) == 1
