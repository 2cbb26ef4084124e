"""IDX and CIFAR files written here in the real formats, good and bad: the raw loaders
read the good ones exactly and name the file and the fault for the bad ones; pickles
that try to run code are refused without running it."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from minidl.data import (CorruptFileError, DatasetNotFoundError, UnsafePickleError, load_cifar10,
                         load_cifar100, load_dataset, load_fashion_mnist, load_mnist)
from minidl.data.formats import read_cifar_pickle, read_idx


# --------------------------------------------------------------------------- writers
def idx_bytes(array, magic=None):
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), sizes, data."""
    array = np.asarray(array, np.uint8)
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder, split, images, labels, compress=True):
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, data in (("images-idx3", images), ("labels-idx1", labels)):
        name = f"{prefix}-{kind}-ubyte"
        raw = idx_bytes(data)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def digit_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def cifar_batch(n, seed, classes=10, label_key=b"labels", extra=None):
    """A batch dict as in the official files: data rows are the R, G, B planes."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"testing batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, classes, n)],
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    batch.update(extra or {})
    return batch


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root, batches=(1, 2, 3, 4, 5), per_batch=20, test=True, meta=True):
    folder = root / "cifar-10-batches-py"
    for i in batches:
        write_pickle(folder / f"data_batch_{i}", cifar_batch(per_batch, seed=i))
    if test:
        write_pickle(folder / "test_batch", cifar_batch(per_batch, seed=99))
    if meta:
        names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                 b"ship", b"truck"]
        write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return folder


# --------------------------------------------------------------------------- IDX
def test_mnist_official_layout_round_trip(tmp_path):
    images, labels = digit_images(30)
    write_mnist(tmp_path / "mnist", "train", images, labels)
    got_images, got_labels = load_mnist(tmp_path, split="train", download=False)
    assert got_images.dtype == np.uint8 and got_images.shape == (30, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)


def test_uncompressed_torchvision_layout_and_fashion(tmp_path):
    images, labels = digit_images(12, seed=1)
    write_mnist(tmp_path / "FashionMNIST" / "raw", "test", images, labels, compress=False)
    got_images, got_labels = load_fashion_mnist(tmp_path, split="test", download=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_missing_file_names_file_address_and_place(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, split="test", download=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in message


def test_truncated_idx_reports_expected_and_found_size(tmp_path):
    images, labels = digit_images(10)
    write_mnist(tmp_path / "mnist", "test", images, labels)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = idx_bytes(images)
    path.write_bytes(gzip.compress(raw[:-100]))  # a valid gzip of a cut-short file
    with pytest.raises(CorruptFileError) as info:
        load_mnist(tmp_path, split="test", download=False)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert str(len(raw)) in message and str(len(raw) - 100) in message


def test_wrong_magic_number_is_named(tmp_path):
    images, labels = digit_images(10)
    write_mnist(tmp_path / "mnist", "test", images, labels)
    folder = tmp_path / "mnist"
    # the labels file where the images should be: a valid IDX file of the wrong kind
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(CorruptFileError) as info:
        load_mnist(tmp_path, split="test", download=False)
    assert "magic number 2049" in str(info.value) and "expected 2051" in str(info.value)


def test_damaged_gzip_and_cut_gzip(tmp_path):
    images, _ = digit_images(10)
    good = gzip.compress(idx_bytes(images))
    path = tmp_path / "x.gz"
    path.write_bytes(good[: len(good) // 2])  # download cut short
    with pytest.raises(CorruptFileError, match="damaged gzip"):
        read_idx(path)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # one corrupted byte in the deflate stream
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match=str(path).replace("\\", "\\\\")):
        read_idx(path)


def test_image_and_label_counts_must_agree(tmp_path):
    images, labels = digit_images(10)
    write_mnist(tmp_path / "mnist", "test", images, labels[:9])
    with pytest.raises(CorruptFileError, match="10 images but .* 9 labels"):
        load_mnist(tmp_path, split="test", download=False)


def test_only_test_set_present_error_suggests_train_from_test(tmp_path):
    images, labels = digit_images(100)
    write_mnist(tmp_path / "mnist", "test", images, labels)
    with pytest.raises(DatasetNotFoundError, match="train_from_test"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    splits = load_dataset("mnist", data_dir=tmp_path, download=False, train_from_test=80)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (70, 10, 20)
    assert splits.in_shape == (1, 28, 28) and splits.mean == (0.1307,)
    # train, val and test are disjoint parts of the 100 test images
    rows = np.concatenate([s.x.reshape(len(s), -1) for s in (splits.train, splits.val, splits.test)])
    assert len(np.unique(rows, axis=0)) == 100
    np.testing.assert_allclose(np.sort(rows.sum(1)), np.sort(images.reshape(100, -1).sum(1) / 255),
                               rtol=1e-5)


def test_mnist_validation_split_from_train(tmp_path):
    write_mnist(tmp_path / "mnist", "train", *digit_images(120, seed=3))
    write_mnist(tmp_path / "mnist", "test", *digit_images(30, seed=4))
    splits = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (110, 10, 30)
    assert splits.train.x.dtype == np.float32 and splits.train.y.dtype == np.int64
    assert np.bincount(splits.val.y, minlength=10).tolist() == [1] * 10  # stratified


# --------------------------------------------------------------------------- CIFAR
def test_cifar10_pixel_layout_and_names(tmp_path):
    folder = write_cifar10(tmp_path)
    # overwrite one image so that each colour plane has its own value
    batch = cifar_batch(20, seed=1)
    batch[b"data"][0] = np.repeat(np.array([10, 20, 30], np.uint8), 1024)
    batch[b"data"][1, :32] = 255  # first row of the red plane: top row of the image
    write_pickle(folder / "data_batch_1", batch)
    images, labels, classes = load_cifar10(tmp_path, split="train", download=False)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    assert images[0, 5, 7].tolist() == [10, 20, 30]
    assert (images[1, 0, :, 0] == 255).all()
    assert labels.dtype == np.int64 and labels[:20].tolist() == batch[b"labels"]
    assert classes[0] == "airplane" and classes[9] == "truck"


def test_cifar10_partial_layout_loads_what_exists_or_errors_when_strict(tmp_path):
    write_cifar10(tmp_path, batches=(1, 3))
    with pytest.warns(UserWarning, match="data_batch_2"):
        images, _, _ = load_cifar10(tmp_path, split="train", download=False)
    assert len(images) == 40
    with pytest.raises(DatasetNotFoundError, match="data_batch_2, data_batch_4, data_batch_5"):
        load_cifar10(tmp_path, split="train", download=False, strict=True)
    test_images, _, _ = load_cifar10(tmp_path, split="test", download=False, strict=True)
    assert len(test_images) == 20


def test_cifar10_load_dataset_split_and_constants(tmp_path):
    write_cifar10(tmp_path, per_batch=40)
    splits = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 40)
    assert splits.in_shape == (3, 32, 32)
    assert splits.mean == pytest.approx((0.491, 0.482, 0.447), abs=6e-4)
    assert splits.std == pytest.approx((0.247, 0.243, 0.262), abs=6e-4)
    again = load_dataset("cifar10", data_dir=tmp_path, download=False)
    other = load_dataset("cifar10", data_dir=tmp_path, download=False, seed=1)
    np.testing.assert_array_equal(splits.val.x, again.val.x)  # the split is seeded
    assert not np.array_equal(splits.val.x, other.val.x)
    np.testing.assert_array_equal(splits.test.x, other.test.x)  # the test set never moves


def test_cifar_missing_folder_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path, download=False)
    message = str(info.value)
    assert "cifar-10-batches-py" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    for split, seed in (("train", 1), ("test", 2)):
        batch = cifar_batch(30, seed, classes=100, label_key=b"fine_labels")
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        write_pickle(folder / split, batch)
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    _, fine, fine_names = load_cifar100(tmp_path, split="test", download=False)
    _, coarse, coarse_names = load_cifar100(tmp_path, split="test", label="coarse", download=False)
    np.testing.assert_array_equal(coarse, fine // 5)
    assert len(fine_names) == 100 and coarse_names[3] == "coarse3"
    splits = load_dataset("cifar100", data_dir=tmp_path, download=False, label="coarse")
    assert splits.num_classes == 20 and (len(splits.train), len(splits.val)) == (27, 3)
    with pytest.raises(ValueError, match="'fine'"):
        load_cifar100(tmp_path, label="medium", download=False)


def test_truncated_cifar_pickle_is_named(tmp_path):
    folder = write_cifar10(tmp_path, batches=(1,))
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptFileError) as info:
        load_cifar10(tmp_path, split="test", download=False)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_cifar_batch_with_wrong_shape_is_named(tmp_path):
    folder = write_cifar10(tmp_path, batches=(1,))
    batch = cifar_batch(5, seed=0)
    batch[b"data"] = batch[b"data"][:, :1000]
    write_pickle(folder / "test_batch", batch)
    with pytest.raises(CorruptFileError, match=r"\(N, 3072\), found \(\(5, 1000\)"):
        load_cifar10(tmp_path, split="test", download=False)


def python2_batch_pickle(pixels, labels):
    """A batch pickled the way the official files were, by Python 2 and numpy 1: byte
    strings as SHORT_BINSTRING (Python 3 never writes those) and the array rebuilt by
    numpy.core.multiarray._reconstruct. Written opcode by opcode."""
    def string(raw):  # a Python 2 str: SHORT_BINSTRING or BINSTRING
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<I", len(raw)) + raw

    def small(i):  # BININT1 or BININT2
        return b"K" + bytes([i]) if i < 256 else b"M" + struct.pack("<H", i)

    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + small(0) + b"\x85"
             + string(b"b") + b"\x87R"
             + b"(" + small(1) + small(pixels.shape[0]) + small(pixels.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + string(b"u1") + small(0) + small(1) + b"\x87R"
             + b"(" + small(3) + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + small(0) + b"tb"
             + b"\x89" + string(pixels.tobytes()) + b"tb")
    label_list = b"](" + b"".join(small(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list
            + string(b"batch_label") + string(b"training batch 1 of 5") + b"u.")


def test_python2_pickle_as_in_the_official_files(tmp_path):
    pixels = np.arange(2 * 3072, dtype=np.uint32).reshape(2, 3072).astype(np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(python2_batch_pickle(pixels, [3, 8]))
    images, labels, classes = load_cifar10(tmp_path, split="test", download=False)
    np.testing.assert_array_equal(images, pixels.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == [3, 8] and classes[3] == "cat"  # no meta file: built-in names


# --------------------------------------------------------------------------- malicious pickles
CALLS = []


def record_call(*args):
    """What a malicious pickle would call; it must never run."""
    CALLS.append(args)
    return {}


class CallsFunction:
    def __reduce__(self):
        return record_call, ("pwned",)


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_calling_a_function_is_refused_unrun(tmp_path):
    path = tmp_path / "data_batch_1"
    write_pickle(path, {b"data": CallsFunction(), b"labels": []})
    with pytest.raises(UnsafePickleError, match="record_call"):
        read_cifar_pickle(path)
    assert CALLS == []


def test_pickle_running_a_shell_command_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    folder = write_cifar10(tmp_path, batches=(1,))
    write_pickle(folder / "test_batch", {b"data": RunsShell(marker), b"labels": []})
    with pytest.raises(UnsafePickleError, match="system"):
        load_cifar10(tmp_path, split="test", download=False)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "batch"
    write_pickle(path, {b"data": np.array([1, "two", None], dtype=object)})
    with pytest.raises(UnsafePickleError, match="dtype object"):
        read_cifar_pickle(path)


def test_plain_numeric_arrays_pass(tmp_path):
    path = tmp_path / "batch"
    data = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 3],
            "weights": np.linspace(0, 1, 5)}
    write_pickle(path, data)
    got = read_cifar_pickle(path)
    np.testing.assert_array_equal(got["data"], data["data"])
    np.testing.assert_array_equal(got["weights"], data["weights"])
    assert got["labels"] == [1, 2, 3]
