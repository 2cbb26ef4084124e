"""Raw loaders for the real datasets: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.

Each returns the official arrays unchanged (uint8 images, int64 labels). Files are
looked for in the data directory (see :func:`minidl.data.download.data_root`) in the
official layouts, and downloaded there when missing and ``download=True``:

    <data_dir>/mnist/train-images-idx3-ubyte.gz          (also uncompressed, or
    <data_dir>/mnist/t10k-labels-idx1-ubyte.gz ...        torchvision's MNIST/raw/)
    <data_dir>/fashion_mnist/train-images-idx3-ubyte.gz ...
    <data_dir>/cifar-10-batches-py/data_batch_1 ... test_batch, batches.meta
    <data_dir>/cifar-100-python/train, test, meta

``data_dir`` may also point straight at one of these folders.
"""
from __future__ import annotations

import warnings

import numpy as np

from .download import (DatasetNotFoundError, Remote, data_root, ensure_file, extract_tar,
                       mirror_urls)
from .formats import (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, CorruptFileError, read_cifar_pickle,
                      read_idx)

SPLITS = ("train", "test")

# --------------------------------------------------------------------------- MNIST-like
_IDX_NAMES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

# Official md5 sums of the .gz files (the ones torchvision checks).
_IDX_SOURCES = {
    "mnist": {
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"),
        "md5": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        "torchvision": "MNIST",
    },
    "fashion_mnist": {
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        "md5": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        "torchvision": "FashionMNIST",
    },
}

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose 'train' or 'test'")


def _idx_file(root, name, filename, download):
    """An IDX file (gz or not) in any accepted folder, else downloaded into root/name."""
    source = _IDX_SOURCES[name]
    folders = [root / name, root / source["torchvision"] / "raw", root]
    for folder in folders:
        for candidate in (folder / filename, folder / filename[:-3]):  # .gz, or extracted
            if candidate.is_file():
                return candidate
    remote = Remote(filename, tuple(m + filename for m in source["mirrors"]),
                    "md5:" + source["md5"][filename])
    hint = ""
    if filename.startswith("train") and any((f / _IDX_NAMES["test"][0]).is_file() for f in folders):
        hint = ("\nOnly the test set (t10k-*) is here. To train on it offline, split it: "
                f"load_dataset({name!r}, train_from_test=8000).")
    return ensure_file(remote, root / name, download, hint)


def _load_idx_dataset(name, data_dir, split, download):
    _check_split(split)
    root = data_root(data_dir)
    image_name, label_name = _IDX_NAMES[split]
    image_path = _idx_file(root, name, image_name, download)
    label_path = _idx_file(root, name, label_name, download)
    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise CorruptFileError(f"{image_path}: images of {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise CorruptFileError(f"{image_path} has {len(images)} images but {label_path} has "
                               f"{len(labels)} labels; one of them is from another download")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CorruptFileError(f"{label_path}: labels outside 0..9 (max {labels.max()})")
    return images, labels


def load_mnist(data_dir=None, split="train", download=True):
    """MNIST as ``(images uint8 (N, 28, 28), labels int64 (N,))``; N = 60,000 or 10,000."""
    return _load_idx_dataset("mnist", data_dir, split, download)


def load_fashion_mnist(data_dir=None, split="train", download=True):
    """Fashion-MNIST as ``(images uint8 (N, 28, 28), labels int64 (N,))``."""
    return _load_idx_dataset("fashion_mnist", data_dir, split, download)


# --------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": Remote("cifar-10-python.tar.gz",
                          ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                          "md5:c58f30108f718f92721af3b95e74349a"),
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": Remote("cifar-100-python.tar.gz",
                          ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                          "md5:eb9058c3a382ffc7106e4002c42a8d85"),
        "train": ["train"], "test": ["test"], "meta": "meta",
    },
}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _cifar_folder(root, name, download):
    """The extracted folder: under root, root itself, or downloaded and extracted."""
    spec = _CIFAR[name]
    if root.name == spec["folder"] or any((root / f).is_file() for f in spec["train"] + spec["test"]):
        return root  # data_dir points straight at the extracted folder
    if (root / spec["folder"]).is_dir():
        return root / spec["folder"]
    if not download:
        raise DatasetNotFoundError(
            f"{spec['folder']}/ not found under {root}. Download {mirror_urls(spec['archive'])[0]}, "
            f"extract it there (giving {root / spec['folder']}), or pass download=True "
            "(or data_dir=/where/it/is).")
    archive = ensure_file(spec["archive"], root, True)
    return extract_tar(archive, root, spec["folder"], spec["train"] + spec["test"] + [spec["meta"]])


def _read_cifar_batch(path, label_key, classes):
    batch = read_cifar_pickle(path)
    missing = {"data", label_key} - set(batch)
    if missing:
        raise CorruptFileError(f"{path}: no {sorted(missing)} entry (has {sorted(batch)}); "
                               "not a CIFAR batch of this dataset")
    data = batch["data"]
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: {label_key} are not integers ({exc})") from exc
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        found = (getattr(data, "shape", None), getattr(data, "dtype", type(data).__name__))
        raise CorruptFileError(f"{path}: data should be uint8 of shape (N, 3072), found {found}")
    if labels.shape != (len(data),):
        raise CorruptFileError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise CorruptFileError(f"{path}: labels outside 0..{classes - 1}")
    # rows hold the red, then green, then blue plane, each 32x32 row-major
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _label_names(folder, name, key, fallback):
    path = folder / _CIFAR[name]["meta"]
    if not path.is_file():
        return list(fallback)
    names = read_cifar_pickle(path).get(key)
    if not isinstance(names, list):
        raise CorruptFileError(f"{path}: no list {key!r}; not the meta file of {name}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _load_cifar(name, data_dir, split, download, strict, label_key, classes):
    _check_split(split)
    folder = _cifar_folder(data_root(data_dir), name, download)
    wanted = _CIFAR[name][split]
    present = [f for f in wanted if (folder / f).is_file()]
    missing = [f for f in wanted if f not in present]
    if not present or (missing and strict):
        raise DatasetNotFoundError(
            f"{folder} is missing {', '.join(missing)} ({name} {split} split). Put the official "
            f"files there, or delete the folder so that download=True fetches the whole dataset"
            + ("" if present else "."))
    if missing:
        warnings.warn(f"{folder} is a partial {name} layout: loading {', '.join(present)} only "
                      f"({', '.join(missing)} absent); pass strict=True to make this an error",
                      stacklevel=3)
    parts = [_read_cifar_batch(folder / f, label_key, classes) for f in present]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, folder


def load_cifar10(data_dir=None, split="train", download=True, strict=False):
    """CIFAR-10 as ``(images uint8 (N, 32, 32, 3), labels int64 (N,), class names)``.

    A partial folder (for example only ``data_batch_1`` and ``test_batch``) loads the
    batches present, with a warning; ``strict=True`` makes missing batches an error.
    """
    images, labels, folder = _load_cifar("cifar10", data_dir, split, download, strict, "labels", 10)
    return images, labels, _label_names(folder, "cifar10", "label_names", CIFAR10_CLASSES)


def load_cifar100(data_dir=None, split="train", label="fine", download=True, strict=False):
    """CIFAR-100 as ``(images uint8 (N, 32, 32, 3), labels int64 (N,), class names)``,
    with the 100 ``'fine'`` labels or the 20 ``'coarse'`` superclasses."""
    if label not in ("fine", "coarse"):
        raise ValueError(f"label {label!r}: choose 'fine' (100 classes) or 'coarse' (20)")
    count = 100 if label == "fine" else 20
    images, labels, folder = _load_cifar("cifar100", data_dir, split, download, strict,
                                         f"{label}_labels", count)
    names = _label_names(folder, "cifar100", f"{label}_label_names", [str(i) for i in range(count)])
    return images, labels, names
