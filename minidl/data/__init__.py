"""The data layer both engines read from (numpy only, never torch).

Embedded, offline and deterministic:
    load_dataset("digits", size=8 | 28)      scikit-learn's 1,797 handwritten digits
    load_dataset("shapes", n=10000)          procedural 10-class colour shapes + masks
    make_shapes(n, size, seed)               the raw shapes arrays
    toy_regression()                         the ITU week-5 11-point regression data
Real, read from the data directory and downloaded when missing (see ``download``):
    load_dataset("mnist" | "fashion_mnist" | "cifar10" | "cifar100", data_dir=...)
    load_mnist, load_fashion_mnist, load_cifar10, load_cifar100   raw uint8 arrays
The ModelBias patch, on any images:  add_bias_patch(x, y)  or  load_dataset(..., bias=True)
Loading and augmentation:  DataLoader(x, y, batch_size=..., shuffle=True, seed=0, transform=...)
                           DataLoader(TensorDataset(x, y), batch_size=...)  (torch's form)
                           augment.random_crop / horizontal_flip / gaussian_noise / cutout / Compose
"""
from . import augment
from .bias import TAB10, add_bias_patch
from .datasets import (DATASETS, NORMALIZATION, ArrayDataset, Splits, images_to_float,
                       load_dataset, normalize, stratified_split)
from .download import DatasetNotFoundError, DownloadError, data_root
from .embedded import toy_regression
from .formats import CorruptFileError, UnsafePickleError
from .loader import DataLoader, TensorDataset
from .real import load_cifar10, load_cifar100, load_fashion_mnist, load_mnist
from .shapes import SHAPE_CLASSES, make_shapes

__all__ = [
    "ArrayDataset", "CorruptFileError", "DATASETS", "DataLoader", "DatasetNotFoundError",
    "DownloadError", "NORMALIZATION", "SHAPE_CLASSES", "Splits", "TAB10", "UnsafePickleError",
    "add_bias_patch", "augment", "data_root", "images_to_float", "load_cifar10", "load_cifar100",
    "load_dataset", "load_fashion_mnist", "load_mnist", "make_shapes", "normalize",
    "stratified_split", "TensorDataset", "toy_regression",
]
