"""KD generators: output shapes, ranges, re-initialization, registry."""

from __future__ import annotations

import pytest
import torch

from abd.models import GENERATORS, CMIGenerator, create_generator, list_generators
from abd.registry import UnknownNameError


@pytest.mark.parametrize("size", [28, 32, 30])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["zskt", "cmi", "large"])
def test_output_shape_and_range(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    g = create_generator(name, z_dim=16, channels=channels, image_size=size, width=8)
    x = g(g.sample_z(4))
    assert x.shape == (4, channels, size, size)
    assert torch.isfinite(x).all()
    if name in ("cmi", "large"):
        assert x.min() >= 0 and x.max() <= 1
    else:  # ZSKT ends in BatchNorm: a normalized image, not bounded
        assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    x.mean().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_default_sizes_match_spec() -> None:
    assert create_generator("zskt").l1.out_features == 128 * 8 * 8
    assert create_generator("cmi").l1.out_features == 128 * 8 * 8
    assert create_generator("large").l1.out_features == 256 * 8 * 8
    assert create_generator("zskt").z_dim == 100 and create_generator("cmi").z_dim == 256


def test_reinit_changes_weights() -> None:
    g = CMIGenerator(z_dim=16, image_size=32, width=8)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    g.reinit()
    after = g.state_dict()
    assert not torch.equal(before["l1.weight"], after["l1.weight"])
    assert after["l1.weight"].std().item() == pytest.approx(0.02, rel=0.2)
    bn = g.conv_blocks[0]
    assert not torch.equal(before["conv_blocks.0.weight"], bn.weight)
    assert (bn.weight - 1).abs().max() < 0.2 and torch.all(bn.bias == 0)


def test_registry() -> None:
    assert list_generators() == ["cmi", "large", "zskt"]
    assert all(GENERATORS.summary().values())
    with pytest.raises(UnknownNameError, match="'zskt'"):
        create_generator("zkst")
