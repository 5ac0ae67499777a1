"""Datasets (a registry of loaders returning uint8 NHWC arrays) and plain-torch transforms."""

from abd.data import cifar10, digits, folder, gtsrb, mnist5k  # noqa: F401  (register loaders)
from abd.data.base import DATASETS, DataFormatError, ImageDataset, load_dataset
from abd.data.transforms import Normalizer, augment_batch, iterate_batches, to_float

__all__ = [
    "DATASETS",
    "DataFormatError",
    "ImageDataset",
    "Normalizer",
    "augment_batch",
    "iterate_batches",
    "load_dataset",
    "to_float",
]
