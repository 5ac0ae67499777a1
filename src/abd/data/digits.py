"""scikit-learn's 8x8 handwritten digits (1,797 images): a tiny, always-available dataset."""

from __future__ import annotations

import numpy as np

from abd.data.base import DATASETS, DIGITS_ADV_EPS, DataFormatError, ImageDataset, channel_stats, seeded_split

N_TEST = 360


@DATASETS.register("digits")
def load_digits(root: str | None = None, seed: int = 0) -> ImageDataset:
    """sklearn digits: 8x8x1 (values 0..16 scaled to 0..255), fixed seeded split of 1,437 train / 360 test."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ModuleNotFoundError as e:
        raise DataFormatError("digits needs the `scikit-learn` package (sklearn.datasets.load_digits)") from e
    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8) in 0..16
    x = np.rint(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = seeded_split(len(x), N_TEST, seed=1234 + seed)
    mean, std = channel_stats(x[tr])
    return ImageDataset(
        name="digits",
        x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te],
        class_names=[str(i) for i in range(10)],
        mean=mean, std=std, hflip=False, adv_eps=DIGITS_ADV_EPS, crop_padding=1,
    )
