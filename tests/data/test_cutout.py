"""Cutout (DeVries & Taylor 2017), the extra augmentation of clean-label teachers."""

from __future__ import annotations

import torch

from abd.data.transforms import cutout


def test_cutout_zeroes_one_square_per_image() -> None:
    x = torch.ones(64, 2, 12, 12)
    y = cutout(x, 4, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and torch.equal(x, torch.ones_like(x))  # input untouched
    holes = y == 0
    assert torch.equal(holes[:, 0], holes[:, 1])  # same square in every channel
    per_image = holes[:, 0].flatten(1).sum(1)
    assert (per_image >= 4).all() and (per_image <= 16).all()  # clipped at the borders
    assert (per_image == 16).any()
    rows, cols = holes[:, 0].any(2), holes[:, 0].any(1)
    assert (rows.sum(1) <= 4).all() and (cols.sum(1) <= 4).all()  # a square, not scattered pixels


def test_cutout_deterministic_and_off() -> None:
    x = torch.rand(8, 1, 10, 10)
    a = cutout(x, 5, torch.Generator().manual_seed(1))
    b = cutout(x, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert cutout(x, 0) is x
