"""Plain-torch transforms: conversion, normalization, seeded augmentation, resize, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abd.data.transforms import (
    Normalizer,
    augment_batch,
    iterate_batches,
    random_crop,
    random_hflip,
    resize,
    to_float,
)


def _batch(n: int = 6, size: int = 8, c: int = 3) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(0))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_float_range_and_layout() -> None:
    x = np.random.default_rng(0).integers(0, 256, (4, 5, 7, 3), dtype=np.uint8)
    x[0, 0, 0] = (0, 128, 255)
    t = to_float(x)
    assert t.shape == (4, 3, 5, 7) and t.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 1
    assert t[0, :, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    assert torch.equal(to_float(torch.from_numpy(x)), t)


def test_normalizer_roundtrip_and_bounds() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    norm = Normalizer(mean, std)
    x = _batch()
    z = norm(x)
    assert torch.allclose(norm.inverse(z), x, atol=1e-6)
    assert torch.allclose(z[:, 0], (x[:, 0] - mean[0]) / std[0])
    lo, hi = norm.bounds()
    assert torch.allclose(lo.flatten(), torch.tensor([-m / s for m, s in zip(mean, std)]))
    assert torch.allclose(hi.flatten(), torch.tensor([(1 - m) / s for m, s in zip(mean, std)]))


def test_random_crop_padding_zero_is_identity() -> None:
    x = _batch()
    assert torch.equal(random_crop(x, 0, _gen()), x)


def test_random_crop_seeded_and_shape_preserving() -> None:
    x = _batch(n=16)
    a, b = random_crop(x, 2, _gen(1)), random_crop(x, 2, _gen(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)  # 16 images: some crop moved
    # every output is a shifted window of the zero-padded input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        assert any(
            torch.equal(a[i], padded[i, :, dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5)
        )


def test_random_hflip_seeded() -> None:
    x = _batch(n=32)
    a, b = random_hflip(x, _gen(3)), random_hflip(x, _gen(3))
    assert torch.equal(a, b)
    flipped = [torch.equal(a[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(a[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    assert torch.equal(random_hflip(x, _gen(), p=0.0), x)
    assert torch.equal(random_hflip(x, _gen(), p=1.0), x.flip(3))


def test_augment_batch_respects_hflip_flag() -> None:
    x = _batch()
    assert torch.equal(augment_batch(x, padding=0, hflip=False, generator=_gen()), x)
    assert torch.equal(augment_batch(x, 1, True, _gen(5)), augment_batch(x, 1, True, _gen(5)))


def test_resize_output_size() -> None:
    x = _batch(n=2, size=8)
    assert resize(x, 16).shape == (2, 3, 16, 16)
    assert resize(x, 4).shape == (2, 3, 4, 4)
    assert resize(x, 8) is x
    const = torch.full((1, 1, 10, 10), 0.25)
    assert torch.allclose(resize(const, 32), torch.full((1, 1, 32, 32), 0.25))


@pytest.mark.parametrize(("shuffle", "drop_last"), [(False, False), (True, False), (True, True)])
def test_iterate_batches_covers_indices(shuffle: bool, drop_last: bool) -> None:
    n, bs = 23, 5
    x, y = torch.arange(n).float().view(n, 1), torch.arange(n)
    batches = list(iterate_batches(x, y, bs, shuffle=shuffle, generator=_gen(), drop_last=drop_last))
    seen = torch.cat([yb for _, yb in batches])
    for xb, yb in batches:
        assert torch.equal(xb.view(-1).long(), yb)
    if drop_last:
        assert len(batches) == n // bs and all(len(yb) == bs for _, yb in batches)
        assert len(set(seen.tolist())) == len(seen) == n - n % bs
    else:
        assert sorted(seen.tolist()) == list(range(n))
        assert [len(yb) for _, yb in batches] == [5, 5, 5, 5, 3]
    if not shuffle:
        assert seen.tolist() == list(range(n))
    else:
        again = torch.cat([yb for _, yb in iterate_batches(x, y, bs, True, _gen(), drop_last)])
        assert torch.equal(seen, again)
