"""``load_dataset``: every dataset as train/val/test arrays ready for a model.

    splits = load_dataset("shapes")                  # embedded, offline, deterministic
    splits.train.x.shape                             # (8000, 3, 32, 32) float32 in [0, 1]
    x = splits.normalize(splits.train.x)             # (x - mean) / std per channel

All images come as float32 (N, C, H, W) scaled to [0, 1] and labels as int64 (N,).
``mean``/``std`` are the constants courses use for the real datasets (computed on the
official training sets) and are computed from the training split for the embedded ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .bias import add_bias_patch
from .embedded import load_digits_arrays
from .real import (FASHION_MNIST_CLASSES, MNIST_CLASSES, load_cifar10, load_cifar100,
                   load_fashion_mnist, load_mnist)
from .shapes import make_shapes

# Per-channel mean and std of the official training images, as the courses use them.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# Validation share of the official training set: 5,000 images for MNIST (55,000/5,000)
# and CIFAR (45,000/5,000), as in the courses.
VAL_FRACTION = {"mnist": 1 / 12, "fashion_mnist": 1 / 12, "cifar10": 0.1, "cifar100": 0.1}


@dataclass
class ArrayDataset:
    """Images ``x`` (N, C, H, W) float32, labels ``y`` (N,) int64 and optionally
    ``mask`` (N, H, W) bool: the pixels that carry the label's evidence (the shape in
    ``shapes``; the bias patch for a biased real dataset, which has no object mask),
    and ``patch_mask`` (N, H, W) bool where a bias patch was drawn."""
    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None = None
    patch_mask: np.ndarray | None = None

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    def subset(self, index):
        """The same dataset restricted to ``index`` (indices or a boolean mask)."""
        masks = [None if m is None else m[index] for m in (self.mask, self.patch_mask)]
        return ArrayDataset(self.x[index], self.y[index], *masks)


@dataclass
class Splits:
    name: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    classes: list
    mean: tuple
    std: tuple
    description: str = ""
    options: dict = field(default_factory=dict)

    @property
    def in_shape(self):
        """(C, H, W) of one image."""
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)

    def normalize(self, x):
        """``(x - mean) / std`` per channel with this dataset's constants."""
        return normalize(x, self.mean, self.std)

    def __repr__(self):
        sizes = "/".join(f"{len(s):,}" for s in (self.train, self.val, self.test))
        return (f"Splits({self.name!r}, train/val/test {sizes}, in_shape {self.in_shape}, "
                f"{self.num_classes} classes)")


def normalize(x, mean, std):
    """``(x - mean) / std`` per channel for images (..., C, H, W), as float32."""
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    if x.ndim < 3 or x.shape[-3] != len(mean):
        raise ValueError(f"normalize: images of shape {x.shape} do not have {len(mean)} channels "
                         "on axis -3 (expected (..., C, H, W))")
    return ((x - mean) / std).astype(np.float32, copy=False)


def stratified_split(y, count, seed):
    """Pick ``count`` indices with the class proportions of ``y`` (exact total,
    per-class counts by largest remainder). Returns ``(rest, picked)``, both sorted."""
    y = np.asarray(y)
    if not 0 <= count <= len(y):
        raise ValueError(f"cannot pick {count} of {len(y)} examples")
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(y, return_counts=True)
    quota = sizes * count / len(y)
    take = np.floor(quota).astype(int)
    extra = count - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    picked = np.sort(np.concatenate(picked)) if picked else np.array([], int)
    return np.setdiff1d(np.arange(len(y)), picked), picked


def images_to_float(images):
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    x *= np.float32(1 / 255)
    return x


def _channel_stats(x):
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _train_val(images, labels, fraction, seed):
    """Stratified train/val ArrayDatasets from uint8 images, converted after the
    split so that the float copy of the whole training set is never made twice."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction={fraction}: must be in [0, 1)")
    train, val = stratified_split(labels, int(round(len(labels) * fraction)), seed)
    return tuple(ArrayDataset(images_to_float(images[i]), labels[i]) for i in (train, val))


# --------------------------------------------------------------------------- builders
def _digits(data_dir, seed, download, size=8):
    images, labels = load_digits_arrays(size)
    x = images[:, None]
    # a fixed split (not the run's seed): every run sees the same 60/20/20 partition
    rest, test = stratified_split(labels, 360, seed=0)
    train, val = stratified_split(labels[rest], 360, seed=1)
    data = ArrayDataset(x, labels)
    splits = Splits("digits", data.subset(rest[train]), data.subset(rest[val]), data.subset(test),
                    MNIST_CLASSES, (), (), f"scikit-learn digits, {size}x{size}, fixed "
                    "stratified split 1,077/360/360")
    return splits


def _shapes(data_dir, seed, download, n=10000, size=32, clutter=True):
    images, labels, mask, classes = make_shapes(n, size=size, seed=seed, clutter=clutter)
    data = ArrayDataset(images_to_float(images), labels, mask)
    # the labels are already in random order, so contiguous blocks are random splits
    n_test = n_val = n // 10
    n_train = n - n_val - n_test
    parts = [np.arange(0, n_train), np.arange(n_train, n_train + n_val), np.arange(n_train + n_val, n)]
    return Splits("shapes", *(data.subset(p) for p in parts), list(classes), (), (),
                  f"procedural shapes{'' if clutter else ' (clean: large, upright, centred, plain background)'}, "
                  f"{n:,} images of {size}x{size} from seed {seed}, 80/10/10 split")


def _idx_dataset(name, loader, classes):
    def build(data_dir, seed, download, train_from_test=None, val_fraction=None):
        # 5,000 of the 60,000 official training images; 1,000 of 8,000 from the test set
        default = 1 / 8 if train_from_test else VAL_FRACTION[name]
        fraction = default if val_fraction is None else val_fraction
        test_images, test_labels = loader(data_dir, "test", download)
        if train_from_test:
            if not 0 < int(train_from_test) < len(test_labels):
                raise ValueError(f"train_from_test={train_from_test}: must be between 1 and "
                                 f"{len(test_labels) - 1} (the test set has {len(test_labels):,} images)")
            # held-out test images fixed (seed 0) so that every run is scored on the same ones
            pool, test = stratified_split(test_labels, len(test_labels) - int(train_from_test), 0)
            train_x, train_y = test_images[pool], test_labels[pool]
            test_images, test_labels = test_images[test], test_labels[test]
            source = f"the official test set split {len(pool):,} train+val / {len(test):,} test"
        else:
            train_x, train_y = loader(data_dir, "train", download)
            source = "the official train/test sets"
        train, val = _train_val(train_x, train_y, fraction, seed)
        test = ArrayDataset(images_to_float(test_images), test_labels)
        return Splits(name, train, val, test, list(classes), *NORMALIZATION[name],
                      f"{name} from {source}; validation {fraction:.3g} of train (seed {seed})")
    return build


def _cifar(name):
    def build(data_dir, seed, download, val_fraction=0.1, strict=False, label="fine"):
        def load(split):
            if name == "cifar10":
                return load_cifar10(data_dir, split, download, strict)
            return load_cifar100(data_dir, split, label, download, strict)
        train_x, train_y, classes = load("train")
        test_x, test_y, _ = load("test")
        train, val = _train_val(train_x, train_y, val_fraction, seed)
        test = ArrayDataset(images_to_float(test_x), test_y)
        what = f"{name} ({label} labels)" if name == "cifar100" else name
        return Splits(name, train, val, test, classes, *NORMALIZATION[name],
                      f"{what}: validation {val_fraction:.3g} of the official train set "
                      f"(seed {seed}), official test set")
    return build


_BUILDERS = {
    "digits": (_digits, ("size",)),
    "shapes": (_shapes, ("n", "size", "clutter")),
    "mnist": (_idx_dataset("mnist", load_mnist, MNIST_CLASSES), ("train_from_test", "val_fraction")),
    "fashion_mnist": (_idx_dataset("fashion_mnist", load_fashion_mnist, FASHION_MNIST_CLASSES),
                      ("train_from_test", "val_fraction")),
    "cifar10": (_cifar("cifar10"), ("val_fraction", "strict")),
    "cifar100": (_cifar("cifar100"), ("val_fraction", "strict", "label")),
}
DATASETS = tuple(_BUILDERS)


def load_dataset(name, data_dir=None, seed=0, download=True, **options):
    """Load a dataset as :class:`Splits` (``.train``, ``.val``, ``.test``, ``.classes``,
    ``.mean``, ``.std``, ``.in_shape``).

    Embedded (offline): ``digits`` (``size=8`` or ``28``), ``shapes`` (``n=10000``,
    ``size=32``). Real (read from ``data_dir``, downloaded when missing and
    ``download=True``): ``mnist``, ``fashion_mnist`` (``train_from_test=8000`` splits
    the 10,000 official test images into 8,000 for train+val and 2,000 for test, for
    when only the test files are at hand), ``cifar10``, ``cifar100``
    (``label='fine'|'coarse'``). ``val_fraction`` and ``strict`` (CIFAR: error on
    missing batches instead of loading those present) where they apply.
    ``clutter=False``: the easy variant of ``shapes`` (see :func:`make_shapes`).

    ``bias=True`` (any dataset) adds the ModelBias patch to every image: a striped
    square whose colour encodes the label; see :func:`add_bias_patch`. The images are
    otherwise the same as without it, so the clean dataset is one call away.

    ``seed`` draws the validation split (and, for ``shapes``, the images); test sets
    do not depend on it, and ``digits`` has one fixed split.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    build, allowed = _BUILDERS[name]
    bias = options.pop("bias", False)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"load_dataset({name!r}): unknown option(s) {', '.join(unknown)}; "
                        f"{name} accepts {', '.join(allowed + ('bias',))}")
    splits = build(data_dir, seed, download, **options)
    if bias:
        splits = _with_bias(splits, seed)
    if not splits.mean:  # embedded datasets: statistics of their own training split
        splits.mean, splits.std = _channel_stats(splits.train.x)
    splits.options = dict(options, bias=bool(bias))
    return splits


def _with_bias(splits, seed):
    """Every split with its bias patch. Grey images become RGB, because the patch's
    colour is the signal; the normalisation constants are repeated per channel."""
    parts = {}
    for part in ("train", "val", "test"):
        data = getattr(splits, part)
        x, patch = add_bias_patch(data.x, data.y, seed=seed, avoid=data.mask)
        mask = patch if data.mask is None else data.mask
        parts[part] = ArrayDataset(x, data.y, mask, patch)
    grey = splits.in_shape[0] == 1
    mean = splits.mean * 3 if grey else splits.mean
    std = splits.std * 3 if grey else splits.std
    if splits.name in ("digits", "shapes"):
        mean = std = ()  # recomputed from the biased training images
    return replace(splits, **parts, mean=mean, std=std,
                   description=splits.description + "; with the ModelBias label patch")
