"""GTSRB (German Traffic Sign Recognition Benchmark) from the official folder layout; no downloads."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from abd.data.base import DATASETS, DataFormatError, ImageDataset

GTSRB_MEAN = (0.3403, 0.3121, 0.3214)
GTSRB_STD = (0.2724, 0.2608, 0.2669)
NUM_CLASSES = 43
GTSRB_CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)",
    "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited",
    "No entry", "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
]
TEST_CSV = "GT-final_test.csv"

LAYOUT = (
    "expected <root>/GTSRB/Final_Training/Images/<00000..00042>/{*.ppm, GT-<classid>.csv} and "
    "<root>/GTSRB/Final_Test/Images/*.ppm with labels in GT-final_test.csv (from GTSRB_Final_Test_GT.zip; "
    "at <root> or beside the test images); <root> may also be GTSRB/ itself. "
    "CSVs are ';'-separated with columns Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
)


def _find_base(root: Path) -> Path:
    """The folder holding ``Final_Training`` and ``Final_Test``."""
    for base in (root, root / "GTSRB"):
        if (base / "Final_Training" / "Images").is_dir() and (base / "Final_Test" / "Images").is_dir():
            return base
    raise DataFormatError(f"gtsrb: no Final_Training/Images and Final_Test/Images under {root}; {LAYOUT}")


def _find_test_csv(root: Path, base: Path) -> Path:
    images = base / "Final_Test" / "Images"
    for d in dict.fromkeys((root, base, base.parent, base / "Final_Test", images)):
        if (d / TEST_CSV).is_file():
            return d / TEST_CSV
    unlabeled = (images / "GT-final_test.test.csv").is_file()
    hint = " (GT-final_test.test.csv beside the images has no ClassId column)" if unlabeled else ""
    raise DataFormatError(f"gtsrb: missing test labels {TEST_CSV}{hint}; {LAYOUT}")


def _read_csv(path: Path) -> list[tuple[str, int]]:
    """(Filename, ClassId) rows of a ';'-separated GTSRB annotation file."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=";"))
        out = [(r["Filename"].strip(), int(r["ClassId"])) for r in rows]
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError, csv.Error) as e:
        raise DataFormatError(
            f"gtsrb: {path} is malformed ({type(e).__name__}: {e}); {LAYOUT}"
        ) from None
    bad = [c for _, c in out if not 0 <= c < NUM_CLASSES]
    if bad:
        raise DataFormatError(f"gtsrb: {path} has ClassId {bad[0]} outside 0..{NUM_CLASSES - 1}")
    return out


def _load_image(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(f"gtsrb: missing image {path}; {LAYOUT}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(f"gtsrb: cannot read image {path} ({e})") from None


def _load_split(items: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (p, _) in enumerate(items):
        x[i] = _load_image(p, size)
    return x, np.array([c for _, c in items], dtype=np.int64)


def _train_items(base: Path) -> list[tuple[Path, int]]:
    img_root = base / "Final_Training" / "Images"
    items: list[tuple[Path, int]] = []
    for d in sorted(p for p in img_root.iterdir() if p.is_dir()):
        gt = d / f"GT-{d.name}.csv"
        if gt.is_file():
            items += [(d / f, c) for f, c in _read_csv(gt)]
        elif d.name.isdigit() and int(d.name) < NUM_CLASSES:  # no annotation: label from the folder name
            items += [(p, int(d.name)) for p in sorted(d.glob("*.ppm"))]
        else:
            raise DataFormatError(f"gtsrb: {d} has no {gt.name} and is not a class folder; {LAYOUT}")
    if not items:
        raise DataFormatError(f"gtsrb: no training images under {img_root}; {LAYOUT}")
    return items


@DATASETS.register("gtsrb")
def load_gtsrb(root: str | Path | None = None, seed: int = 0, image_size: int = 32) -> ImageDataset:
    """GTSRB (39,209 train / 12,630 test, 43 classes), every image PIL-resized to ``image_size`` squared.

    The train order is shuffled once with ``numpy.random.default_rng(seed)`` (the reference used the
    global torch RNG); the test order is that of GT-final_test.csv. Horizontal flips are off: they turn
    "keep left" into "keep right".
    """
    if root is None:
        raise DataFormatError(f"gtsrb: root is required (nothing is downloaded); {LAYOUT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataFormatError(f"gtsrb: root {root} is not a directory; {LAYOUT}")
    base = _find_base(root)
    test_dir = base / "Final_Test" / "Images"
    x_train, y_train = _load_split(_train_items(base), image_size)
    test_csv = _find_test_csv(root, base)
    test_items = [(test_dir / f, c) for f, c in _read_csv(test_csv)]
    if not test_items:
        raise DataFormatError(f"gtsrb: {test_csv} lists no test images; {LAYOUT}")
    x_test, y_test = _load_split(test_items, image_size)
    perm = np.random.default_rng(seed).permutation(len(x_train))
    return ImageDataset(
        name="gtsrb",
        x_train=x_train[perm], y_train=y_train[perm], x_test=x_test, y_test=y_test,
        class_names=list(GTSRB_CLASSES),
        mean=GTSRB_MEAN, std=GTSRB_STD, hflip=False, crop_padding=4,
        info={"source": str(base), "shuffle_seed": seed},
    )
