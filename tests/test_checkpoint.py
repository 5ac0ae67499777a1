"""Checkpoints: safetensors round trip, clear failures, and no unpickling of foreign files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from abd.checkpoint import CheckpointError, load_model, load_state_dict, load_weights, save_model
from abd.models import create_model


def lenet(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5", num_classes=num_classes, in_channels=1, image_size=28)


class Payload:
    """A pickle whose loading creates ``marker`` (stands in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_round_trip(tmp_path: Path) -> None:
    model = lenet().eval()
    path = save_model(tmp_path, "teacher", model, {"kind": "teacher", "dataset": "mnist5k"})
    assert path == tmp_path / "teacher.safetensors" and path.is_file()
    loaded, meta = load_model(tmp_path, "teacher")
    assert meta["kind"] == "teacher" and meta["dataset"] == "mnist5k"
    assert meta["arch"]["name"] == "lenet5" and "torch" in meta["versions"]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), loaded.eval()(x))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="metadata not found"):
        load_model(tmp_path)  # a directory without teacher.json


def test_corrupt_safetensors(tmp_path: Path) -> None:
    save_model(tmp_path, "teacher", lenet(), {})
    garbage = b"\x10\x00\x00\x00\x00\x00\x00\x00not a header" + bytes(64)
    (tmp_path / "teacher.safetensors").write_bytes(garbage)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(tmp_path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = save_model(tmp_path, "teacher", lenet(), {})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_state_dict(path)


def test_corrupt_metadata(tmp_path: Path) -> None:
    save_model(tmp_path, "teacher", lenet(), {})
    (tmp_path / "teacher.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)


def test_shape_mismatch(tmp_path: Path) -> None:
    path = save_model(tmp_path, "teacher", lenet(num_classes=10), {})
    expected = r"shape mismatch: fc\.weight: file \(10, 84\) vs model \(5, 84\)"
    with pytest.raises(CheckpointError, match=expected):
        load_weights(lenet(num_classes=5), path)


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = lenet().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    torch.save(state, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(lenet(), tmp_path / "foreign.pt")
    msg = str(err.value)
    assert "missing keys (1): fc.bias" in msg and "unexpected keys (1): extra.weight" in msg


def test_foreign_pt_state_dict_loads(tmp_path: Path) -> None:
    model = lenet()
    wrapped = {"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "foreign.pth")
    state = load_state_dict(tmp_path / "foreign.pth")
    assert set(state) == set(model.state_dict())
    other = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    load_weights(other, tmp_path / "foreign.pth")
    assert torch.equal(other.fc.weight, model.fc.weight)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    # the payload really runs code when unpickled without restrictions ...
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()
    # ... but load_state_dict refuses it without running it
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2), "evil": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_weights(lenet(), tmp_path / "evil.pt")
    assert not marker.exists()


def test_non_tensor_pt_is_refused(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_state_dict(tmp_path / "list.pt")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"fc.weight": s["fc.weight"].to(torch.int64)}), "another dtype"),
    (lambda s: s.update({"fc.weight": s["fc.weight"].half()}), "another dtype"),
    (lambda s: s["fc.bias"].__setitem__(0, float("nan")), "non-finite"),
])
def test_weights_of_another_dtype_or_not_finite_are_refused(tmp_path: Path, change, message: str) -> None:
    model = lenet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    change(state)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        load_weights(lenet(), tmp_path / "w.pt")
    assert "\n" not in str(err.value)
    if message == "another dtype":  # an explicit cast is the user's choice
        load_weights(lenet(), tmp_path / "w.pt", allow_cast=True)
