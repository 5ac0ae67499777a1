"""Every registered classifier: CPU forward/backward on tiny inputs, naming and sizes (the paper's architectures)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from abd.models import MODELS, capture_features, conv_layers, create_model, feature_layers, list_models
from abd.models.wrn import WideResNet
from abd.registry import UnknownNameError

SHAPES = [(3, 32, 10), (1, 28, 10), (3, 8, 4)]  # (in_channels, image_size, num_classes)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"c{s[0]}-s{s[1]}-k{s[2]}")
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str, shape: tuple[int, int, int]) -> None:
    in_ch, size, k = shape
    torch.manual_seed(0)
    model = create_model(name, num_classes=k, in_channels=in_ch, image_size=size)
    x = torch.randn(2, in_ch, size, size)
    names = feature_layers(model)
    with capture_features(model, names) as feats:
        out = model(x)
    assert out.shape == (2, k)
    assert torch.isfinite(out).all()
    assert len(feats) == len(names)
    for f in feats:
        assert isinstance(f, torch.Tensor) and f.shape[0] == 2 and f.requires_grad
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_registered_metadata(name: str) -> None:
    assert MODELS.summary()[name], "every factory needs a one-line docstring"
    model = create_model(name)
    assert model.arch["name"] == name
    for layer in feature_layers(model):
        model.get_submodule(layer)


@pytest.mark.parametrize(
    "name, millions, tol",
    [("wrn16_1", 0.175, 0.01), ("wrn16_2", 0.69, 0.02), ("wrn40_2", 2.24, 0.05), ("resnet18", 11.17, 0.1)],
)
def test_parameter_counts(name: str, millions: float, tol: float) -> None:
    n = sum(p.numel() for p in create_model(name, num_classes=10, in_channels=3).parameters())
    assert abs(n / 1e6 - millions) < tol


def test_wrn_conv_layers_match_spec() -> None:
    t, s = create_model("wrn16_2"), create_model("wrn16_1")
    assert len(conv_layers(t)) == 16 and len(conv_layers(s)) == 15
    # SPEC 5: SV counts state-dict keys containing "conv", in state-dict order.
    t_keys = [k for k in t.state_dict() if "conv" in k]
    assert t_keys == [f"{n}.weight" for n, _ in conv_layers(t)]
    assert len([k for k in s.state_dict() if "conv" in k]) == 15
    assert t_keys[-5:] == [
        "block3.layer.0.conv1.weight",
        "block3.layer.0.conv2.weight",
        "block3.layer.0.convShortcut.weight",
        "block3.layer.1.conv1.weight",
        "block3.layer.1.conv2.weight",
    ]
    sd = t.state_dict()
    assert sd["block3.layer.0.convShortcut.weight"].shape == (128, 64, 1, 1)
    assert sd["block3.layer.1.conv2.weight"].shape == (128, 128, 3, 3)
    assert "block1.layer.0.convShortcut.weight" in sd  # 16 -> 32 channels
    assert "block1.layer.0.convShortcut.weight" not in s.state_dict()  # 16 -> 16
    for key in ("conv1.weight", "bn1.weight", "fc.weight", "fc.bias", "block2.layer.1.bn2.running_var"):
        assert key in sd
    assert not any(k.endswith(".bias") and "conv" in k for k in sd), "WRN convs are bias-free"


def test_wrn_init_and_activations() -> None:
    torch.manual_seed(0)
    model = create_model("wrn16_2")
    w = model.get_submodule("block3.layer.1.conv2").weight
    assert abs(w.std().item() - math.sqrt(2.0 / (9 * 128))) < 0.005
    assert torch.all(model.fc.bias == 0) and torch.all(model.bn1.weight == 1)
    with capture_features(model, model.feature_layers) as feats:
        model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]


def test_wrn_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=15)


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match="'wrn16_2'"):
        create_model("wrn16-2")


def test_plain_module_has_no_feature_layers() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert feature_layers(model) == ()
    with capture_features(model, feature_layers(model)) as feats:
        model(torch.randn(2, 3, 2, 2))
    assert feats == []
