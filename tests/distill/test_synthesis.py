"""Synthesis helpers: the sample pool, normalized generators, the new KD losses, the OOD transfer set and
the plain-torch augmentations it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from abd.data.transforms import (
    color_jitter,
    cutmix,
    random_affine,
    random_resized_crop,
    to_grayscale,
)
from abd.distill import KDContext
from abd.distill.losses import (
    agreement_kl,
    class_balance,
    js_divergence,
    kl_per_sample,
    l1_per_sample,
    total_variation_l1,
)
from abd.distill.ood import OODOptions, _load_sources, balanced_subset, single_image_patches
from abd.distill.synthesis import SamplePool, frozen, jitter_flip, normalized_generator
from abd.models import create_model


def test_pool_is_a_fifo_ring_and_round_trips() -> None:
    pool = SamplePool(5)
    pool.add(torch.arange(3.0).view(3, 1))
    pool.add(torch.arange(3.0, 7.0).view(4, 1))  # 7 added, capacity 5: 0 and 1 dropped
    assert len(pool) == 5 and sorted(pool.data.flatten().tolist()) == [2, 3, 4, 5, 6]
    assert pool.sample(11).shape == (11, 1) and set(pool.take(10).flatten().tolist()) == {2, 3, 4, 5, 6}
    other = SamplePool(5)
    other.load_state(pool.state("p"), "p")
    other.add(torch.tensor([[7.0]]))
    pool.add(torch.tensor([[7.0]]))
    assert torch.equal(other.data, pool.data) and other.ptr == pool.ptr
    assert SamplePool(3).take(2).numel() == 0
    with pytest.raises(RuntimeError, match="empty"):
        SamplePool(3).sample(1)


@pytest.mark.parametrize("kind", ["zskt", "large", "cmi"])
def test_normalized_generator(kind: str) -> None:
    ctx = KDContext(teacher=torch.nn.Identity(), student=torch.nn.Identity(), num_classes=10, channels=1,
                    image_size=28, mean=(0.5,), std=(0.25,), device=torch.device("cpu"))
    g = normalized_generator(kind, 8, 4, ctx)
    x = g(torch.randn(4, 8))
    assert x.shape == (4, 1, 28, 28)
    if kind != "zskt":  # sigmoid in [0, 1], normalized to [-2, 2]
        assert x.min() >= -2 and x.max() <= 2


def test_frozen_restores_mode_and_grads() -> None:
    model = create_model("lenet5_half", in_channels=1, image_size=28).train()
    model.fc.weight.requires_grad_(False)
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    with frozen(model):
        assert not model.training
        model(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())
    assert model.training and not model.fc.weight.requires_grad and model.fc.bias.requires_grad


def test_losses() -> None:
    torch.manual_seed(0)
    t, s = torch.randn(6, 10), torch.randn(6, 10)
    assert torch.allclose(l1_per_sample(t, s), F.l1_loss(s, t, reduction="none").mean(1))
    assert js_divergence(t, t) == pytest.approx(0.0, abs=1e-6) and js_divergence(s, t) > 0
    agree = (s.argmax(1) == t.argmax(1)).float()
    assert torch.allclose(agreement_kl(s, t), (kl_per_sample(t, s) * agree).mean())
    uniform = torch.zeros(4, 10)
    assert class_balance(uniform) == pytest.approx(-np.log(10), rel=1e-5)  # minimum: balanced classes
    assert class_balance(torch.eye(10)[[0, 0, 0, 0]] * 50) == pytest.approx(0.0, abs=1e-4)
    assert total_variation_l1(torch.ones(2, 1, 5, 5)) == 0
    x = torch.zeros(1, 1, 4, 4)
    x[..., ::2] = 1  # vertical stripes
    assert total_variation_l1(x) > 0
    j = jitter_flip(torch.arange(16.0).view(1, 1, 4, 4), 1, False)
    assert sorted(j.flatten().tolist()) == list(range(16))


def test_augmentations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 12, 12, generator=g)
    assert random_resized_crop(x, 8, generator=g).shape == (5, 3, 8, 8)
    full = random_resized_crop(x, 12, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=g)
    assert torch.allclose(full, x, atol=1e-5)  # the whole image at its own size: identity
    assert torch.allclose(random_affine(x, 0.0, 0.0, generator=g), x, atol=1e-5)
    rot = random_affine(x, 30.0, 30.0, generator=g)
    assert rot.shape == x.shape and (rot == 0).any()  # zero fill in the corners
    j = color_jitter(x, p=1.0, generator=g)
    assert j.shape == x.shape and j.min() >= 0 and j.max() <= 1 and not torch.allclose(j, x)
    assert torch.equal(color_jitter(x, p=0.0, generator=g), x)
    assert to_grayscale(x).shape == (5, 1, 12, 12)
    torch.manual_seed(0)
    m = cutmix(x, beta=1.0, p=1.0)
    assert m.shape == x.shape
    # every pixel comes from the same position of some image of the batch
    assert ((m.unsqueeze(0) == x.unsqueeze(1)).all(2).any(0)).all()
    assert torch.equal(cutmix(x, beta=0.0), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_single_image_patches(channels: int) -> None:
    opts = OODOptions()
    src = _load_sources(opts)
    a = single_image_patches(src, 40, 16, channels, opts, seed=3, chunk=16)
    b = single_image_patches(src, 40, 16, channels, opts, seed=3, chunk=16)
    assert a.shape == (40, channels, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b)  # seeded: the same transfer set on resume
    assert a.float().std() > 10  # not blank


def test_balanced_subset() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)  # class 3 never predicted
    keep = balanced_subset(labels, 40, 4, seed=1)
    assert len(keep) == 40 and len(keep.unique()) == 40  # no index twice
    counts = torch.bincount(labels[keep], minlength=4).tolist()
    assert counts[2] == 5 and counts[3] == 0  # a rare class is kept whole
    assert counts[0] >= 10 and counts[1] >= 10 and counts[0] + counts[1] == 35  # the rest filled from the others
    assert torch.equal(keep, balanced_subset(labels, 40, 4, seed=1))
    assert torch.equal(balanced_subset(labels, 85, 4), torch.arange(85))  # pool == n: everything, in order
    score = torch.arange(85.0)  # within a class, the highest scores first
    top = balanced_subset(labels, 30, 3, score=score)
    assert set(range(40, 50)) <= set(top.tolist()) and set(range(70, 80)) <= set(top.tolist())


def test_image_folder_source(tmp_path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8)).save(tmp_path / "sub" / "b.jpg")
    opts = OODOptions(image_folder=str(tmp_path))
    src = _load_sources(opts)
    assert [s.shape for s in src] == [(1, 3, 40, 60), (1, 3, 50, 30)]
    assert single_image_patches(src, 8, 8, 1, opts).shape == (8, 1, 8, 8)
    with pytest.raises(ValueError, match="no images"):
        _load_sources(OODOptions(image_folder=str(tmp_path / "missing")))
