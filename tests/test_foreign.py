"""Foreign teachers from the command line: a registered architecture from a .pt or .safetensors state dict, a
user's own ``module:factory`` with a tuple output, and the refusals that keep a teacher folder from running code."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from abd.checkpoint import CheckpointError, load_model
from abd.cli import main

TINY = ["--rounds", "2", "--opt", "batch_size=8", "--opt", "kd_steps=1", "--opt", "gen_width=8", "--eval-every", "2",
        "--device", "cpu", "--dataset", "mnist5k"]

FACTORY = '''
import torch
import torch.nn as nn


class TwoHeads(nn.Module):
    """Returns (logits, features), as many research models do."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(in_channels, 4, 3), nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        f = self.conv2(torch.relu(self.conv1(x))).mean((2, 3))
        return self.fc(f), f


def make(num_classes=10, in_channels=3):
    return TwoHeads(num_classes, in_channels)
'''


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_registered_model_from_a_state_dict_file_distills(suffix, backdoored_teacher_dir, tmp_path) -> None:
    model, _ = load_model(backdoored_teacher_dir)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    out = tmp_path / "run"
    assert main(["distill", "--teacher-weights", str(path), "--teacher-model", "lenet5", "--out", str(out), *TINY]) == 0
    loaded, meta = load_model(out / "teacher")
    assert meta["imported_from"] == path.name and (out / "metrics.json").is_file()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_users_factory_with_a_tuple_output_distills_with_abd(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "user_nets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_nets

    torch.manual_seed(0)
    net = user_nets.make(num_classes=10, in_channels=1)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "run"
    args = ["distill", "--teacher-weights", str(tmp_path / "w.safetensors"), "--teacher-model", "user_nets:make",
            "--out", str(out), "--defense", "abd", "--sr", "inner_rounds=1", *TINY]
    assert main(args) == 2 and "--teacher-output" in capsys.readouterr().err  # a tuple: say where the logits are
    assert main([*args, "--teacher-output", "0"]) == 0
    assert (out / "metrics.json").is_file()
    # a folder that names a factory never runs it: only a factory the user named in this process is called
    import abd.models.foreign as foreign

    assert load_model(out / "teacher")[0] is not None  # named above with --teacher-model
    monkeypatch.setattr(foreign, "_ALLOWED", set())
    monkeypatch.delitem(sys.modules, "user_nets")
    with pytest.raises(CheckpointError, match="never imports or runs code"):
        load_model(out / "teacher")


def test_bad_foreign_weights_are_refused_in_one_line(backdoored_teacher_dir, tmp_path, capsys) -> None:
    model, _ = load_model(backdoored_teacher_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    cases = [
        (["--teacher-weights", str(tmp_path / "nan.safetensors"), "--teacher-model", "lenet5"], "non-finite"),
        (["--teacher-weights", str(tmp_path / "nan.safetensors"), "--teacher-model", "lenet5_half"], "does not fit"),
        (["--teacher-weights", str(tmp_path / "nan.safetensors"), "--teacher-model", "nosuch:make"], "cannot import"),
        (["--teacher-weights", str(tmp_path / "missing.pt"), "--teacher-model", "lenet5"], "not found"),
    ]
    for extra, message in cases:
        out = tmp_path / "run"
        assert main(["distill", *extra, "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (out / "teacher").exists()
