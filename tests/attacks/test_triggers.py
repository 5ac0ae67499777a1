"""Every registered trigger: determinism, dtype/shape, effect, footprint; exact SPEC values at 32x32 RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from abd.attacks import TRIGGERS, Trigger, create_trigger, list_triggers, save_gallery
from abd.registry import UnknownNameError

SHAPES = [(32, 3), (28, 1), (8, 1)]  # (image_size, channels)
SHAPE_IDS = [f"s{s}-c{c}" for s, c in SHAPES]
PATCH = {"badnet_grid", "badnet_sq", "trojan_3x3", "trojan_8x8", "l0_inv", "cl"}
P = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=np.uint8)


def batch(size: int, channels: int, n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def tiny_surrogate(size: int, channels: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size * channels, classes))


def test_suite_is_registered() -> None:
    expected = {"badnet_grid", "badnet_sq", "trojan_wm", "trojan_3x3", "trojan_8x8", "blend", "sig", "cl",
                "l0_inv", "l2_inv", "smooth"}
    assert set(list_triggers()) == expected
    for name in expected:
        cls = TRIGGERS.get(name)
        assert cls.name == name
        assert cls.clean_label == (name in {"sig", "cl"})
        assert cls.needs_surrogate == (name == "cl")
        assert cls.__doc__ and "20" in cls.__doc__  # cites a paper (year)
    assert list_triggers("trojan*") == ["trojan_3x3", "trojan_8x8", "trojan_wm"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", list_triggers())
def test_trigger_contract(name: str, shape: tuple[int, int]) -> None:
    size, channels = shape
    x = batch(size, channels)
    x_before = x.copy()
    trig = create_trigger(name, image_size=size, channels=channels, seed=0)
    assert isinstance(trig, Trigger)
    y = trig.apply(x)
    np.testing.assert_array_equal(x, x_before)  # input untouched
    assert y.dtype == np.uint8 and y.shape == x.shape
    # deterministic: same call and a second instance with the same seed agree
    np.testing.assert_array_equal(trig.apply(x), y)
    twin = create_trigger(name, image_size=size, channels=channels, seed=0)
    np.testing.assert_array_equal(twin.apply(x), y)
    # it changes (almost) every image of a random batch
    changed = (y != x).reshape(len(x), -1).any(axis=1)
    assert changed.mean() >= 0.9, f"{name} changed only {changed.sum()} of {len(x)} images"
    fp = trig.footprint()
    if name in PATCH:
        assert fp is not None and fp.shape == (size, size) and fp.dtype == bool
        assert 0 < fp.sum() <= 0.6 * size * size
        assert not (y != x)[:, ~fp].any(), f"{name} changed pixels outside its footprint"
    else:
        assert fp is None
    if not trig.needs_surrogate:
        np.testing.assert_array_equal(trig.poison(x), y)


@pytest.mark.parametrize("name", ["blend", "l2_inv", "trojan_8x8", "trojan_wm"])
def test_random_patterns_depend_on_seed(name: str) -> None:
    x = batch(32, 3, n=4)
    assert (create_trigger(name, seed=0).apply(x) != create_trigger(name, seed=1).apply(x)).any()


def test_rejects_wrong_shape_or_dtype() -> None:
    trig = create_trigger("badnet_sq", image_size=32, channels=3)
    with pytest.raises(ValueError):
        trig.apply(batch(28, 3))
    with pytest.raises(ValueError):
        trig.apply(batch(32, 3).astype(np.float32))
    with pytest.raises(ValueError, match="numpy uint8 array"):
        trig.apply(torch.as_tensor(batch(32, 3)))


def test_badnet_grid_exact() -> None:
    x = batch(32, 3)
    y = create_trigger("badnet_grid").apply(x)
    for c in range(3):
        np.testing.assert_array_equal(y[:, 29:32, 29:32, c], np.broadcast_to(P, (len(x), 3, 3)))
    np.testing.assert_array_equal(y[:, :29], x[:, :29])
    np.testing.assert_array_equal(y[:, :, :29], x[:, :, :29])


@pytest.mark.parametrize(("size", "rows"), [(32, slice(27, 31)), (28, slice(23, 27))])
def test_badnet_sq_exact(size: int, rows: slice) -> None:
    x = batch(size, 3)
    y = create_trigger("badnet_sq", image_size=size).apply(x)
    assert (y[:, rows, rows] == 255).all()
    fp = np.zeros((size, size), bool)
    fp[rows, rows] = True
    np.testing.assert_array_equal(create_trigger("badnet_sq", image_size=size).footprint(), fp)


def test_small_images_keep_a_patch() -> None:
    sq = create_trigger("badnet_sq", image_size=8, channels=1).footprint()
    assert 1 <= sq.sum() <= 9 and not sq[0].any() and not sq[:, 0].any()
    grid = create_trigger("badnet_grid", image_size=16, channels=1).footprint()
    assert grid.sum() == 9 and grid[13:, 13:].all()


def test_l0_inv_exact() -> None:
    x = batch(32, 3)
    y = create_trigger("l0_inv").apply(x)
    r = [0, 255, 0, 255, 255, 0, 0, 255, 255]
    g = [0, 0, 0, 255, 255, 255, 255, 0, 255]
    b = [0, 255, 255, 0, 255, 255, 255, 0, 255]
    expected = np.stack([r, g, b], axis=-1).astype(np.uint8)
    np.testing.assert_array_equal(y[:, 31, 23:32], np.broadcast_to(expected, (len(x), 9, 3)))
    np.testing.assert_array_equal(y[:, :31], x[:, :31])
    np.testing.assert_array_equal(y[:, 31, :23], x[:, 31, :23])


def test_trojan_3x3_exact() -> None:
    x = np.zeros((2, 32, 32, 3), np.uint8)
    y = create_trigger("trojan_3x3").apply(x)
    np.testing.assert_array_equal(y[0, 25:28, 25:28, 0], [[207, 175, 29], [79, 137, 248], [131, 6, 246]])
    np.testing.assert_array_equal(y[0, 25:28, 25:28, 2], [[181, 120, 179], [126, 32, 146], [4, 61, 246]])
    assert y.sum() == y[:, 25:28, 25:28].sum()


def test_additive_saturates() -> None:
    x = np.full((1, 32, 32, 3), 250, np.uint8)
    y = create_trigger("trojan_8x8").apply(x)
    assert y.max() == 255 and (y >= x).all()


def test_blend_formula() -> None:
    x = batch(32, 3)
    trig = create_trigger("blend")
    k = trig.pattern
    assert k.shape == (32, 32, 3) and k.min() >= 0 and k.max() <= 255
    expected = np.rint(0.8 * x.astype(np.float64) + 0.2 * k).astype(np.uint8)
    np.testing.assert_array_equal(trig.apply(x), expected)


def test_sig_stripes() -> None:
    x = np.zeros((1, 32, 32, 3), np.uint8)
    y = create_trigger("sig").apply(x)
    row = np.where(np.arange(32) % 8 >= 4, 51, 0)
    np.testing.assert_array_equal(y[0, :, :, 1], np.broadcast_to(row, (32, 32)))
    small = create_trigger("sig", image_size=8, channels=1).apply(np.zeros((1, 8, 8, 1), np.uint8))
    assert len(np.unique(small[0, 0, :, 0])) == 2 and (small[0, :, :, 0] == small[0, :1, :, 0]).all()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_smooth_spans_full_range(shape: tuple[int, int]) -> None:
    size, channels = shape
    x = np.random.default_rng(1).integers(60, 180, (8, size, size, channels), dtype=np.uint8)
    y = create_trigger("smooth", image_size=size, channels=channels).apply(x)
    assert (y.reshape(len(y), -1).min(1) == 0).all() and (y.reshape(len(y), -1).max(1) == 255).all()
    magenta = create_trigger("smooth", colour="magenta").delta
    assert magenta[..., 1].max() < magenta[..., 0].max()
    with pytest.raises(ValueError):
        create_trigger("smooth", colour="blue")


def test_l2_inv_range() -> None:
    delta = create_trigger("l2_inv").delta
    assert delta.min() >= 0 and delta.max() <= 68 and 5 < delta.mean() < 15


@pytest.mark.parametrize("shape", [(32, 3), (8, 1)], ids=["s32-c3", "s8-c1"])
def test_cl_poison(shape: tuple[int, int]) -> None:
    size, channels = shape
    x = batch(size, channels, n=8)
    trig = create_trigger("cl", image_size=size, channels=channels)
    model = tiny_surrogate(size, channels)
    mean, std = (0.5,) * channels, (0.25,) * channels
    y = trig.poison(x, surrogate=model, mean=mean, std=std)
    assert y.dtype == np.uint8 and y.shape == x.shape
    fp = trig.footprint()
    k = 3 if size >= 16 else 2
    assert fp.sum() == 4 * k * k and fp[:k, :k].all() and fp[-k:, -k:].all()
    diff = np.abs(y.astype(int) - x.astype(int))[:, ~fp]
    assert diff.max() <= 16 and (diff > 0).mean() > 0.5  # perturbed within eps = 16/255
    np.testing.assert_array_equal(y[:, fp], trig.apply(x)[:, fp])  # corners stamped
    if size == 32:
        np.testing.assert_array_equal(y[:, :3, :3, 0], np.broadcast_to(P, (len(x), 3, 3)))
        np.testing.assert_array_equal(y[:, 29:, 29:, 2], np.broadcast_to(P, (len(x), 3, 3)))
    # deterministic, and the surrogate's mode and parameters are left alone
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    np.testing.assert_array_equal(trig.poison(x, surrogate=model, mean=mean, std=std), y)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_cl_poison_fools_the_surrogate() -> None:
    x = batch(32, 3, n=32)
    model = tiny_surrogate(32, 3)
    trig = create_trigger("cl")
    from abd.attacks.clean_label import pgd_linf

    def preds(imgs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.as_tensor(imgs).permute(0, 3, 1, 2).float() / 255
            return model(t).argmax(1).numpy()

    adv = pgd_linf(model, x, eps=16 / 255, steps=5)
    labels = preds(x)
    assert (preds(adv) != labels).mean() > 0.5
    y = trig.poison(x, surrogate=model, labels=labels)
    assert y.shape == x.shape


def test_cl_poison_needs_surrogate() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        create_trigger("cl").poison(batch(32, 3))


def test_unknown_name_suggests() -> None:
    with pytest.raises(UnknownNameError, match="badnet_grid|badnet_sq"):
        create_trigger("badnet")


@pytest.mark.parametrize("shape", [(32, 3), (28, 1)], ids=["s32-c3", "s28-c1"])
def test_gallery(tmp_path: Path, shape: tuple[int, int]) -> None:
    size, channels = shape
    names = list_triggers() if size == 32 else ["badnet_sq", "sig"]
    path = save_gallery(batch(size, channels, n=3), tmp_path / "gallery", triggers=names)
    files = [path] + [tmp_path / "gallery" / f"trigger_{n}.png" for n in names]
    for f in files:
        assert f.is_file()
        with Image.open(f) as im:
            im.verify()
            assert im.format == "PNG"
