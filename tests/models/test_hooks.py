"""Feature, BatchNorm-statistics and penultimate hooks; conv enumeration."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from abd.models import bn_stat_hooks, capture_features, conv_layers, create_model, penultimate_features
from abd.models.hooks import remove_hooks


class Plain(nn.Module):
    """A user-defined classifier with no BatchNorm and no feature_layers."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_bn_stat_hooks_values_and_gradient() -> None:
    torch.manual_seed(0)
    model = create_model("wrn16_1").eval()
    hooks = bn_stat_hooks(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(hooks) == n_bn
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    model(x)
    losses = torch.stack([h.r_feature for h in hooks])
    assert losses.shape == (n_bn,) and torch.isfinite(losses).all()
    # the first block's bn1 sees the stem output: check against a direct computation
    feat = model.conv1(x)
    mean, var = feat.mean(dim=(0, 2, 3)), feat.var(dim=(0, 2, 3), unbiased=False)
    bn = model.block1.layer[0].bn1
    expected = (bn.running_mean - mean).norm() + (bn.running_var - var).norm()
    h0 = next(h for h in hooks if h.module is bn)
    assert torch.allclose(h0.r_feature, expected, atol=1e-5)
    assert h0.instance_mean.shape == (4, 16)
    losses.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    remove_hooks(hooks)
    last = h0.r_feature
    model(torch.randn(2, 3, 32, 32))
    assert h0.r_feature is last  # no longer updated
    assert not bn._forward_hooks


def test_bn_stat_hooks_need_batchnorm() -> None:
    with pytest.raises(ValueError, match="no BatchNorm layers: BN-statistics losses need a teacher"):
        bn_stat_hooks(Plain())


def test_plain_module_helpers() -> None:
    model = Plain()
    with penultimate_features(model) as feats:
        out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5) and feats[0].shape == (2, 4)
    assert [n for n, _ in conv_layers(model)] == ["body.0"]


def test_penultimate_features_wrn() -> None:
    model = create_model("wrn16_1")
    with penultimate_features(model) as feats:
        model(torch.randn(2, 3, 32, 32))
    assert feats[0].shape == (2, 64) and feats[0].requires_grad
    assert not model.fc._forward_pre_hooks


def test_capture_features_nested_and_unknown() -> None:
    model = create_model("wrn16_1")
    with capture_features(model, ["block2.layer.1", "block1"]) as feats:
        model(torch.randn(2, 3, 32, 32))
    assert feats[0].shape == (2, 32, 16, 16) and feats[1].shape == (2, 16, 32, 32)
    assert not model.block1._forward_hooks
    with pytest.raises(ValueError, match="no submodule 'block9'"):
        with capture_features(model, ["block9"]):
            pass


def test_conv_layers_by_type_not_name() -> None:
    model = nn.Sequential()
    model.add_module("first", nn.Conv2d(1, 2, 3))
    model.add_module("convolution_free", nn.ReLU())
    model.add_module("second", nn.Conv2d(2, 2, 3))
    assert [n for n, _ in conv_layers(model)] == ["first", "second"]
