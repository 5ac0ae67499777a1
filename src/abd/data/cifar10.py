"""CIFAR-10 from the official python (pickle) or binary batches; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from abd.data.base import DATASETS, DataFormatError, ImageDataset
from abd.data.safe_pickle import safe_load

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
RECORD = 1 + 3 * 32 * 32  # binary format: 1 label byte + 3072 channel-major pixel bytes

LAYOUT = (
    "expected <root>/cifar-10-batches-py/{data_batch_1..5, test_batch[, batches.meta]} (python pickles) "
    "or <root>/cifar-10-batches-bin/{data_batch_1..5.bin, test_batch.bin} (binary records); "
    "<root> may also be that folder itself. Get them from https://www.cs.toronto.edu/~kriz/cifar.html"
)


def _find_dir(root: Path) -> tuple[Path, str]:
    """The batch folder under ``root`` and its format, ``"py"`` or ``"bin"``."""
    for d in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-bin"):
        if (d / "data_batch_1").is_file():
            return d, "py"
        if (d / "data_batch_1.bin").is_file():
            return d, "bin"
    raise DataFormatError(f"cifar10: no CIFAR-10 batches found under {root}; {LAYOUT}")


def _get(d: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataFormatError(f"cifar10: missing {path}; {LAYOUT}")
    d = safe_load(path)
    try:
        if not isinstance(d, dict):
            raise TypeError(f"a {type(d).__name__} instead of a dict")
        data = np.asarray(_get(d, "data"))
        labels = np.asarray(_get(d, "labels"))
    except (KeyError, TypeError, ValueError) as e:
        raise DataFormatError(
            f"cifar10: {path} does not hold a CIFAR-10 batch (a dict with b'data' [N x 3072 uint8] and "
            f"b'labels' [N]): {e}"
        ) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD - 1:
        raise DataFormatError(
            f"cifar10: {path}: b'data' must be an N x 3072 uint8 array, got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"cifar10: {path}: b'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}"
        )
    return data, labels.astype(np.int64)


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataFormatError(f"cifar10: missing {path}; {LAYOUT}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise DataFormatError(
            f"cifar10: {path} is truncated or malformed: {raw.size} bytes is not a positive multiple of "
            f"the {RECORD}-byte record (1 label byte + 3072 pixel bytes)"
        )
    rec = raw.reshape(-1, RECORD)
    return rec[:, 1:], rec[:, 0].astype(np.int64)


def _class_names(d: Path, fmt: str) -> list[str]:
    if fmt == "py" and (d / "batches.meta").is_file():
        meta = safe_load(d / "batches.meta")
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names")]
        except (KeyError, TypeError) as e:
            raise DataFormatError(f"cifar10: {d / 'batches.meta'} lacks b'label_names' ({e})") from None
    elif fmt == "bin" and (d / "batches.meta.txt").is_file():
        names = [ln.strip() for ln in (d / "batches.meta.txt").read_text().splitlines() if ln.strip()]
    else:
        return list(CIFAR10_CLASSES)
    if len(names) != 10:
        raise DataFormatError(f"cifar10: {d} batches.meta lists {len(names)} class names, expected 10")
    return names


def _to_nhwc(data: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


@DATASETS.register("cifar10")
def load_cifar10(root: str | Path | None = None, seed: int = 0) -> ImageDataset:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32x3) from local python or binary batches.

    ``root`` is the folder holding ``cifar-10-batches-py`` / ``cifar-10-batches-bin`` or that folder
    itself. Pickles are read with a restricted unpickler. ``seed`` is unused (the order is the files').
    """
    if root is None:
        raise DataFormatError(f"cifar10: root is required (nothing is downloaded); {LAYOUT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFormatError(f"cifar10: root {root} is not a directory; {LAYOUT}")
    d, fmt = _find_dir(root)
    read, ext = (_read_py_batch, "") if fmt == "py" else (_read_bin_batch, ".bin")
    train = [read(d / f"{b}{ext}") for b in TRAIN_BATCHES]
    x_test, y_test = read(d / f"{TEST_BATCH}{ext}")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataFormatError(f"cifar10: {split} labels outside 0..9 in {d}")
    return ImageDataset(
        name="cifar10",
        x_train=_to_nhwc(x_train), y_train=y_train, x_test=_to_nhwc(x_test), y_test=y_test,
        class_names=_class_names(d, fmt),
        mean=CIFAR10_MEAN, std=CIFAR10_STD, hflip=True, crop_padding=4,
        info={"source": str(d), "format": fmt},
    )
