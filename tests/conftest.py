"""Shared fixtures: a small real backdoored teacher, trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The tests use tiny models: one intra-op thread is as fast as several on an idle machine, and several
# threads spin-wait badly when the cores are shared (measured on a busy 2-core machine: a LeNet epoch
# 0.7 s with 1 thread vs 12 s with 2; tests/distill/test_engine.py 293 s -> 53 s).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def backdoored_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 teacher with a BadNets-grid backdoor (target 0) on mnist5k, 6 epochs (a few seconds)."""
    from abd.attacks.config import TeacherConfig
    from abd.attacks.teacher import train_teacher

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path_factory.mktemp("teacher_grid")
    m = train_teacher(TeacherConfig(trigger="badnet_grid", epochs=6, device="cpu"), out, progress=False)
    assert m["asr"] > 0.9 and m["acc"] > 0.9, m  # a real backdoor, or the tests below prove nothing
    return out
