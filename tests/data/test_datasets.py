"""Dataset loaders: each real format is read from a tiny fixture written in exactly that format."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from abd.data import DATASETS, DataFormatError, ImageDataset, load_dataset
from abd.data.cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from abd.data.gtsrb import GTSRB_MEAN, GTSRB_STD
from abd.data.safe_pickle import ForbiddenGlobalError, safe_loads
from abd.registry import UnknownNameError

REAL_FORMATS = ("cifar10", "gtsrb", "folder")

# ------------------------------------------------------------------ registry


def test_all_loaders_registered() -> None:
    assert {"mnist5k", "digits", *REAL_FORMATS} <= set(DATASETS.names())


def test_unknown_dataset_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match="mnist5k"):
        load_dataset("mnist5")


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_loader_root_none(name: str) -> None:
    """Built-in datasets load without a root; real formats say root is required (no download)."""
    if name in REAL_FORMATS:
        with pytest.raises(DataFormatError, match="root is required"):
            load_dataset(name)
    else:
        ds = load_dataset(name)
        assert isinstance(ds, ImageDataset) and ds.x_train.dtype == np.uint8


@pytest.mark.parametrize("name", REAL_FORMATS)
def test_missing_root_dir(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not a directory"):
        load_dataset(name, root=tmp_path / "nope")


# ------------------------------------------------------------------ mnist5k, digits


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "shape", "padding"),
    [("mnist5k", 4000, 1000, (28, 28, 1), 2), ("digits", 1437, 360, (8, 8, 1), 1)],
)
def test_builtin_sizes_and_deterministic_split(
    name: str, n_train: int, n_test: int, shape: tuple[int, ...], padding: int
) -> None:
    a, b, c = load_dataset(name), load_dataset(name), load_dataset(name, seed=1)
    assert a.x_train.shape == (n_train, *shape) and a.x_test.shape == (n_test, *shape)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64
    assert a.num_classes == 10 and set(np.unique(a.y_train)) == set(range(10))
    assert not a.hflip and a.crop_padding == padding
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)  # another seed, another split


def test_digits_scaled_and_stats_from_train() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    f = ds.x_train.astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(f.mean()) and ds.std[0] == pytest.approx(f.std())


# ------------------------------------------------------------------ cifar10 fixtures


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _channel_major(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def _batches(n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """NHWC images and labels for data_batch_1..5 and test_batch."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {b: (_images(n, i), np.arange(i, i + n) % 10) for i, b in enumerate(names)}


def _dump(obj: object, path: Path, protocol: int, py2_names: bool = False) -> None:
    raw = pickle.dumps(obj, protocol=protocol)
    if py2_names:  # the real files (Python 2) name numpy.core.multiarray, not numpy._core.multiarray
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


def write_cifar_py(
    root: Path, n: int = 3, protocol: int = 2, py2_names: bool = False, meta: bool = True
) -> tuple[Path, dict]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    data = _batches(n)
    for name, (x, y) in data.items():
        batch = {
            b"batch_label": name.encode(), b"labels": [int(v) for v in y],
            b"data": _channel_major(x), b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        _dump(batch, d / name, protocol, py2_names)
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        meta_dict = {b"num_cases_per_batch": n, b"label_names": names, b"num_vis": 3072}
        _dump(meta_dict, d / "batches.meta", protocol)
    return d, data


def write_cifar_bin(root: Path, n: int = 3) -> tuple[Path, dict]:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    data = _batches(n)
    for name, (x, y) in data.items():
        rec = np.concatenate([y.astype(np.uint8)[:, None], _channel_major(x)], axis=1)
        (d / f"{name}.bin").write_bytes(rec.tobytes())
    (d / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES[::-1]) + "\n\n")
    return d, data


def _check_cifar(ds: ImageDataset, data: dict, n: int) -> None:
    assert ds.x_train.shape == (5 * n, 32, 32, 3) and ds.x_test.shape == (n, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    x_tr = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_tr = np.concatenate([data[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.x_train, x_tr)  # channel-major -> HWC done right
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.x_test, data["test_batch"][0])
    np.testing.assert_array_equal(ds.y_test, data["test_batch"][1])
    assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD and ds.hflip and ds.num_classes == 10


@pytest.mark.parametrize(("protocol", "py2_names"), [(2, True), (2, False), (4, False), (5, False)])
def test_cifar10_python_batches(tmp_path: Path, protocol: int, py2_names: bool) -> None:
    d, data = write_cifar_py(tmp_path, protocol=protocol, py2_names=py2_names)
    for root in (tmp_path, d):  # parent or the batch folder itself
        ds = load_dataset("cifar10", root=root)
        _check_cifar(ds, data, 3)
        assert ds.class_names == [f"class{i}" for i in range(10)]  # from batches.meta
        assert ds.info["format"] == "py"


def test_cifar10_default_class_names(tmp_path: Path) -> None:
    write_cifar_py(tmp_path, meta=False)
    assert load_dataset("cifar10", root=tmp_path).class_names == CIFAR10_CLASSES


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    d, data = write_cifar_bin(tmp_path, n=4)
    for root in (tmp_path, d):
        ds = load_dataset("cifar10", root=str(root))
        _check_cifar(ds, data, 4)
        assert ds.class_names == CIFAR10_CLASSES[::-1]  # from batches.meta.txt
        assert ds.info["format"] == "bin"


def test_cifar10_empty_root_names_layout(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"cifar-10-batches-py/.*cifar-10-batches-bin"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    d, _ = write_cifar_py(tmp_path)
    (d / "test_batch").unlink()
    with pytest.raises(DataFormatError, match=r"missing .*test_batch"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_truncated_bin(tmp_path: Path) -> None:
    d, _ = write_cifar_bin(tmp_path)
    raw = (d / "data_batch_3.bin").read_bytes()
    (d / "data_batch_3.bin").write_bytes(raw[:-100])
    with pytest.raises(DataFormatError, match=r"data_batch_3\.bin is truncated.*3073"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_truncated_pickle(tmp_path: Path) -> None:
    d, _ = write_cifar_py(tmp_path)
    raw = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=r"data_batch_2: not a readable pickle"):
        load_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"labels": [0, 1]}, r"b'data'"),
        ([1, 2, 3], "instead of a dict"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"N x 3072 uint8"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"N x 3072 uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"b'labels' must be 2 integers"),
    ],
)
def test_cifar10_wrong_pickle_content(tmp_path: Path, content: object, message: str) -> None:
    d, _ = write_cifar_py(tmp_path)
    _dump(content, d / "data_batch_1", protocol=2)
    with pytest.raises(DataFormatError, match=message):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_labels_out_of_range(tmp_path: Path) -> None:
    d, _ = write_cifar_py(tmp_path)
    _dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, d / "test_batch", protocol=2)
    with pytest.raises(DataFormatError, match=r"labels outside 0\.\.9"):
        load_dataset("cifar10", root=tmp_path)


# ------------------------------------------------------------------ malicious pickles


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(("payload", "forbidden"), [(_SystemPayload, r"\.system"), (_EvalPayload, r"\.eval")])
@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_refused_without_running(
    tmp_path: Path, payload: type, forbidden: str, protocol: int
) -> None:
    d, _ = write_cifar_py(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": payload(marker)}
    _dump(batch, d / "data_batch_1", protocol)
    with pytest.raises(DataFormatError, match=rf"forbidden global .*{forbidden}") as err:
        load_dataset("cifar10", root=tmp_path / "data")
    assert isinstance(err.value, pickle.UnpicklingError) and "data_batch_1" in str(err.value)
    assert not marker.exists()


def test_object_arrays_and_other_globals_refused() -> None:
    with pytest.raises(ForbiddenGlobalError, match="object dtype"):
        safe_loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    with pytest.raises(ForbiddenGlobalError, match="collections.OrderedDict"):
        from collections import OrderedDict

        safe_loads(pickle.dumps(OrderedDict(a=1)))
    # plain data and numeric arrays round-trip
    obj = {b"a": [1, 2.5, b"x", "y", (1, 2)], "s": {1, 2}, "arr": np.arange(6, dtype=np.int64).reshape(2, 3)}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        out = safe_loads(pickle.dumps(obj, protocol=protocol))
        assert out[b"a"] == obj[b"a"] and out["s"] == obj["s"]
        np.testing.assert_array_equal(out["arr"], obj["arr"])


# ------------------------------------------------------------------ gtsrb fixtures


def _color(cls: int, idx: int) -> tuple[int, int, int]:
    return (5 * cls, 17 * idx % 256, 200)


def _write_ppm(path: Path, cls: int, idx: int, size: tuple[int, int]) -> None:
    Image.new("RGB", size, _color(cls, idx)).save(path)  # .ppm suffix -> PPM format


def _write_gt_csv(path: Path, rows: list[tuple[str, int, int, int]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for name, wd, ht, cls in rows:
            w.writerow([name, wd, ht, 1, 1, wd - 2, ht - 2, cls])


def write_gtsrb(
    root: Path, classes: tuple[int, ...] = (0, 1, 42), per_class: int = 3, n_test: int = 4
) -> Path:
    """GTSRB/Final_Training/Images/000XX/{*.ppm, GT-000XX.csv}, Final_Test/Images/*.ppm, GT-final_test.csv."""
    base = root / "GTSRB"
    for c in classes:
        d = base / "Final_Training" / "Images" / f"{c:05d}"
        d.mkdir(parents=True)
        rows = []
        for i in range(per_class):
            size = (29 + i, 31 + 2 * i)
            _write_ppm(d / f"00000_{i:05d}.ppm", c, i, size)
            rows.append((f"00000_{i:05d}.ppm", *size, c))
        _write_gt_csv(d / f"GT-{c:05d}.csv", rows)
    test = base / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for i in range(n_test):
        c = classes[i % len(classes)]
        _write_ppm(test / f"{i:05d}.ppm", c, 100 + i, (40, 36))
        rows.append((f"{i:05d}.ppm", 40, 36, c))
    _write_gt_csv(root / "GT-final_test.csv", rows)
    _write_gt_csv(test / "GT-final_test.test.csv", [])  # the unlabeled file the image zip ships
    return base


def _check_colors(ds: ImageDataset) -> None:
    """Every image still has the solid colour that encodes its own label (labels follow the shuffle)."""
    for x, y in zip(ds.x_train, ds.y_train):
        assert tuple(x[0, 0]) in {_color(int(y), i) for i in range(3)}
        assert (x == x[0, 0]).all()


def test_gtsrb_loads_official_layout(tmp_path: Path) -> None:
    write_gtsrb(tmp_path)
    ds = load_dataset("gtsrb", root=tmp_path)
    assert ds.x_train.shape == (9, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert sorted(ds.y_train.tolist()) == [0, 0, 0, 1, 1, 1, 42, 42, 42]
    assert ds.y_test.tolist() == [0, 1, 42, 0]  # CSV order
    assert tuple(ds.x_test[2, 5, 5]) == _color(42, 102)
    assert ds.num_classes == 43 and ds.class_names[14] == "Stop"
    assert ds.mean == GTSRB_MEAN and ds.std == GTSRB_STD
    _check_colors(ds)


def test_gtsrb_seeded_shuffle(tmp_path: Path) -> None:
    write_gtsrb(tmp_path, per_class=4)
    a, b, c = (load_dataset("gtsrb", root=tmp_path, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    unshuffled = np.repeat([0, 1, 42], 4)
    assert not np.array_equal(a.y_train, unshuffled)
    np.testing.assert_array_equal(a.x_test, c.x_test)  # test order is fixed


def test_gtsrb_root_variants_and_image_size(tmp_path: Path) -> None:
    base = write_gtsrb(tmp_path)
    (tmp_path / "GT-final_test.csv").rename(base / "Final_Test" / "Images" / "GT-final_test.csv")
    for root in (tmp_path, base):
        ds = load_dataset("gtsrb", root=root, image_size=16)
        assert ds.x_train.shape == (9, 16, 16, 3) and ds.image_size == 16
        assert ds.y_test.tolist() == [0, 1, 42, 0]


def test_gtsrb_missing_test_labels(tmp_path: Path) -> None:
    write_gtsrb(tmp_path)
    (tmp_path / "GT-final_test.csv").unlink()
    with pytest.raises(DataFormatError, match=r"missing test labels GT-final_test\.csv.*no ClassId"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_missing_layout(tmp_path: Path) -> None:
    (tmp_path / "GTSRB" / "Final_Training" / "Images").mkdir(parents=True)
    with pytest.raises(DataFormatError, match=r"GTSRB/Final_Training/Images/<00000\.\.00042>"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_missing_image(tmp_path: Path) -> None:
    base = write_gtsrb(tmp_path)
    (base / "Final_Training" / "Images" / "00001" / "00000_00002.ppm").unlink()
    with pytest.raises(DataFormatError, match=r"missing image .*00001/00000_00002\.ppm"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_malformed_csv(tmp_path: Path) -> None:
    base = write_gtsrb(tmp_path)
    gt = base / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    gt.write_text(gt.read_text().replace(";", ","))  # wrong separator
    with pytest.raises(DataFormatError, match=r"GT-00000\.csv is malformed.*';'-separated"):
        load_dataset("gtsrb", root=tmp_path)


def test_gtsrb_class_out_of_range(tmp_path: Path) -> None:
    write_gtsrb(tmp_path)
    _write_gt_csv(tmp_path / "GT-final_test.csv", [("00000.ppm", 40, 36, 43)])
    with pytest.raises(DataFormatError, match=r"ClassId 43 outside 0\.\.42"):
        load_dataset("gtsrb", root=tmp_path)


# ------------------------------------------------------------------ folder fixtures


def write_folder(root: Path, classes: tuple[str, ...], n: int, ext: str, start: int = 0) -> None:
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.new("RGB", (20 + i, 24), (40 * ci + 10, 60, 200 - 10 * i))
            img.save(root / c / f"{start + i}.{ext}")


def test_folder_train_test(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", ("dog", "cat"), 3, "png")
    write_folder(tmp_path / "train", ("dog", "cat"), 1, "jpg", start=10)
    write_folder(tmp_path / "test", ("dog", "cat"), 2, "jpeg")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", root=tmp_path)
    assert ds.class_names == ["cat", "dog"]
    assert ds.x_train.shape == (8, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and sorted(ds.y_train.tolist()) == [0] * 4 + [1] * 4
    assert ds.y_test.tolist() == [0, 0, 1, 1]
    assert np.allclose(ds.mean, np.asarray(ds.x_train, np.float64).mean(axis=(0, 1, 2)) / 255)
    gray = load_dataset("folder", root=tmp_path, channels=1, image_size=12)
    assert gray.x_train.shape == (8, 12, 12, 1) and len(gray.mean) == 1 and gray.channels == 1


def test_folder_single_tree_seeded_split(tmp_path: Path) -> None:
    write_folder(tmp_path, ("a", "b"), 5, "png")
    a, b = load_dataset("folder", root=tmp_path), load_dataset("folder", root=tmp_path)
    assert len(a.x_train) == 8 and len(a.x_test) == 2 and a.class_names == ["a", "b"]
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_folder_class_mismatch(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", ("cat", "dog"), 1, "png")
    write_folder(tmp_path / "test", ("cat", "cow"), 1, "png")
    with pytest.raises(DataFormatError, match=r"class folders differ .*\['cat', 'cow'\]"):
        load_dataset("folder", root=tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no class sub-folders"):
        load_dataset("folder", root=tmp_path)
    write_folder(tmp_path / "train", ("cat",), 1, "png")
    with pytest.raises(DataFormatError, match="needs both train/ and test/"):
        load_dataset("folder", root=tmp_path)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match=r"cannot read image .*bad\.png"):
        load_dataset("folder", root=tmp_path)
