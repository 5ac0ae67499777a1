"""An image-folder dataset: ``<root>/{train,test}/<class>/*.png|jpg`` or a single ``<root>/<class>/`` tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from abd.data.base import DATASETS, DataFormatError, ImageDataset, channel_stats, seeded_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
LAYOUT = (
    "expected <root>/train/<class>/*.png|jpg and <root>/test/<class>/*.png|jpg with the same class "
    "folders in both, or <root>/<class>/*.png|jpg (split 80/20 with a fixed seed)"
)


def _class_dirs(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan(d: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (image, label) pairs of a ``<class>/<image>`` tree."""
    classes = _class_dirs(d)
    if not classes:
        raise DataFormatError(f"folder: no class sub-folders in {d}; {LAYOUT}")
    items = [(p, i) for i, c in enumerate(classes) for p in _images(c)]
    return [c.name for c in classes], items


def _load(items: list[tuple[Path, int]], size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(items), size, size, 1 if mode == "L" else 3), dtype=np.uint8)
    for i, (p, _) in enumerate(items):
        try:
            with Image.open(p) as im:
                im = im.convert(mode).resize((size, size), Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise DataFormatError(f"folder: cannot read image {p} ({e})") from None
        x[i] = arr.reshape(size, size, -1)
    return x, np.array([c for _, c in items], dtype=np.int64)


@DATASETS.register("folder")
def load_folder(
    root: str | Path | None = None,
    seed: int = 0,
    image_size: int = 32,
    channels: int = 3,
    test_fraction: float = 0.2,
) -> ImageDataset:
    """Images from class sub-folders, resized to ``image_size`` squared, RGB (``channels=3``) or gray (1).

    With ``train/`` and ``test/`` sub-folders their class folders must match; otherwise ``root``'s class
    folders are split with a fixed seeded split (``test_fraction`` to test). The train order is a seeded
    shuffle (the files are sorted by class); mean/std come from train.
    """
    if root is None:
        raise DataFormatError(f"folder: root is required; {LAYOUT}")
    if channels not in (1, 3):
        raise ValueError(f"folder: channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFormatError(f"folder: root {root} is not a directory; {LAYOUT}")
    mode = "L" if channels == 1 else "RGB"
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not ((root / "train").is_dir() and (root / "test").is_dir()):
            raise DataFormatError(f"folder: {root} needs both train/ and test/; {LAYOUT}")
        classes, train_items = _scan(root / "train")
        test_classes, test_items = _scan(root / "test")
        if classes != test_classes:
            raise DataFormatError(
                f"folder: class folders differ between train/ {classes} and test/ {test_classes}; {LAYOUT}"
            )
        x_train, y_train = _load(train_items, image_size, mode)
        x_test, y_test = _load(test_items, image_size, mode)
        perm = np.random.default_rng(1234 + seed).permutation(len(x_train))  # files are sorted by class
        x_train, y_train = x_train[perm], y_train[perm]
        split = "folders"
    else:
        classes, items = _scan(root)
        x, y = _load(items, image_size, mode)
        tr, te = seeded_split(len(x), int(round(test_fraction * len(x))), seed=1234 + seed)
        x_train, y_train, x_test, y_test = x[tr], y[tr], x[te], y[te]
        split = f"seeded {test_fraction:g}"
    empty = [c for i, c in enumerate(classes) if not np.any(y_train == i)]
    if not len(x_train) or empty:
        raise DataFormatError(
            f"folder: no training images for classes {empty or classes} under {root}; {LAYOUT}"
        )
    mean, std = channel_stats(x_train)
    return ImageDataset(
        name="folder",
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        class_names=classes, mean=mean, std=std, hflip=True, crop_padding=4,
        info={"source": str(root), "split": split},
    )
