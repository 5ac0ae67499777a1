"""Poisoned training sets (exact counts, SPEC section 1) and the triggered test set behind ASR."""

from __future__ import annotations

import numpy as np
import pytest

from abd.attacks import create_trigger
from abd.attacks.poison import make_eval_data, poison_indices, poison_training_set
from abd.data.base import ImageDataset

# 20 labels; target 0 appears at indices 0, 3, 7, 12, 19 (5 times), non-target 15 times
LABELS = np.array([0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 1, 0, 2, 3, 1, 2, 3, 1, 0])
TARGET = 0


def images(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (n, size, size, 1), dtype=np.uint8)


def test_dirty_label_indices_are_the_first_non_target() -> None:
    idx = poison_indices(LABELS, TARGET, rate=0.25, clean_label=False)  # int(0.25 * 20) = 5
    np.testing.assert_array_equal(idx, [1, 2, 4, 5, 6])


def test_clean_label_indices_are_target_only_and_capped() -> None:
    idx = poison_indices(LABELS, TARGET, rate=0.1, clean_label=True)  # 2 of the 5 target images
    np.testing.assert_array_equal(idx, [0, 3])
    capped = poison_indices(LABELS, TARGET, rate=0.5, clean_label=True)  # 10 asked, 5 exist
    np.testing.assert_array_equal(capped, [0, 3, 7, 12, 19])


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_out_of_range(rate: float) -> None:
    with pytest.raises(ValueError, match="poison rate"):
        poison_indices(LABELS, TARGET, rate, clean_label=False)


def test_zero_rate_poisons_nothing() -> None:
    x = images(len(LABELS))
    ps = poison_training_set(x, LABELS, create_trigger("badnet_grid", 28, 1), TARGET, 0.0)
    assert len(ps.indices) == 0
    np.testing.assert_array_equal(ps.x, x)
    np.testing.assert_array_equal(ps.y, LABELS)


def test_dirty_label_poisoning() -> None:
    x = images(len(LABELS))
    x_before, y_before = x.copy(), LABELS.copy()
    trig = create_trigger("badnet_grid", image_size=28, channels=1)
    ps = poison_training_set(x, LABELS, trig, TARGET, rate=0.25)
    np.testing.assert_array_equal(ps.indices, [1, 2, 4, 5, 6])
    assert ps.target == TARGET
    # inputs untouched
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(LABELS, y_before)
    # exactly the chosen images carry the trigger and the target label
    np.testing.assert_array_equal(ps.x[ps.indices], trig.apply(x[ps.indices]))
    assert (ps.y[ps.indices] == TARGET).all()
    rest = np.setdiff1d(np.arange(len(LABELS)), ps.indices)
    np.testing.assert_array_equal(ps.x[rest], x[rest])
    np.testing.assert_array_equal(ps.y[rest], LABELS[rest])
    assert int((ps.y != LABELS).sum()) == 5


def test_clean_label_poisoning_keeps_labels() -> None:
    x = images(len(LABELS))
    trig = create_trigger("sig", image_size=28, channels=1)
    ps = poison_training_set(x, LABELS, trig, TARGET, rate=0.5)
    np.testing.assert_array_equal(ps.indices, [0, 3, 7, 12, 19])
    np.testing.assert_array_equal(ps.y, LABELS)  # clean label: no label changes
    np.testing.assert_array_equal(ps.x[ps.indices], trig.apply(x[ps.indices]))
    rest = np.setdiff1d(np.arange(len(LABELS)), ps.indices)
    np.testing.assert_array_equal(ps.x[rest], x[rest])


def tiny_dataset() -> ImageDataset:
    y_test = np.array([0, 1, 2, 0, 3, 1, 0, 2])
    return ImageDataset(
        name="tiny", x_train=images(4), y_train=np.array([0, 1, 2, 3]), x_test=images(len(y_test), seed=1),
        y_test=y_test, class_names=list("abcd"), mean=(0.5,), std=(0.25,), hflip=False,
    )


def test_eval_data_asr_set_excludes_target() -> None:
    ds = tiny_dataset()
    trig = create_trigger("badnet_grid", image_size=28, channels=1)
    data = make_eval_data(ds, trig, target=0)
    assert len(data.x_clean) == 8 and data.y_clean.tolist() == ds.y_test.tolist()
    assert data.y_poison is not None and data.x_poison is not None
    assert data.y_poison.tolist() == [1, 2, 3, 1, 2]  # the 5 non-target images, true labels
    assert len(data.x_poison) == 5
    # the poisoned inputs are the normalized triggered images
    expected = (trig.apply(ds.x_test[ds.y_test != 0]).astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(data.x_poison.numpy()[:, 0], expected[..., 0], atol=1e-6)


def test_eval_data_without_trigger() -> None:
    data = make_eval_data(tiny_dataset(), None, None)
    assert data.x_poison is None and data.target is None


def test_cl_poison_keeps_black_pixels() -> None:
    import torch.nn as nn

    x = images(6)
    x[:, :10] = 0  # an exactly black band, like a digit's background
    torch_model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4))
    labels = np.array([1, 2, 0, 0, 3, 0])
    trig = create_trigger("cl", image_size=28, channels=1)
    ps = poison_training_set(x, labels, trig, TARGET, rate=0.5, surrogate=torch_model, adv_eps=0.3)
    np.testing.assert_array_equal(ps.indices, [2, 3, 5])
    fp = trig.footprint()
    assert fp is not None
    band = np.zeros((28, 28), dtype=bool)
    band[:10] = True
    poisoned = ps.x[ps.indices, :, :, 0]
    assert (poisoned[:, band & ~fp] == 0).all()  # black stays black (outside the stamped corners)
    diff = np.abs(poisoned.astype(int) - x[ps.indices, :, :, 0].astype(int))[:, ~band & ~fp]
    assert 16 < diff.max() <= 77  # the data's eps (0.3 * 255), larger than the reference 16/255
    np.testing.assert_array_equal(ps.y, labels)
