"""The real loaders on the real files kept in ../shared/data (skipped where absent)."""
import numpy as np
import pytest

from minidl.data import DatasetNotFoundError, load_cifar10, load_dataset, load_mnist


def test_mnist_test_set(shared_data):
    images, labels = load_mnist(shared_data, split="test", download=False)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(labels).tolist()[:3] == [980, 1135, 1032]  # the official class counts
    assert 30 < images.mean() < 36  # about 33.3: MNIST's famous mean of 0.1307 * 255


def test_mnist_offline_split_of_the_test_set(shared_data):
    with pytest.raises(DatasetNotFoundError, match="train_from_test"):
        load_dataset("mnist", data_dir=shared_data, download=False)
    splits = load_dataset("mnist", data_dir=shared_data, download=False, train_from_test=8000)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7000, 1000, 2000)
    assert splits.train.x.shape[1:] == (1, 28, 28) and splits.train.x.max() == 1.0
    assert np.ptp(np.bincount(splits.test.y)) < 60  # stratified: about 200 per digit


def test_cifar10_subset(shared_data):
    with pytest.warns(UserWarning, match="partial"):
        images, labels, classes = load_cifar10(shared_data, split="train", download=False)
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                       "ship", "truck"]
    test_images, test_labels, _ = load_cifar10(shared_data, split="test", download=False)
    assert test_images.shape == (2000, 32, 32, 3) and np.bincount(test_labels).tolist() == [200] * 10
    # real photographs: the channel means are near the published CIFAR-10 ones
    np.testing.assert_allclose(images.mean((0, 1, 2)) / 255, (0.491, 0.482, 0.447), atol=0.02)
    with pytest.raises(DatasetNotFoundError, match="data_batch_2"):
        load_cifar10(shared_data, download=False, strict=True)


def test_cifar10_splits(shared_data):
    with pytest.warns(UserWarning, match="partial"):
        splits = load_dataset("cifar10", data_dir=shared_data, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9000, 1000, 2000)
    assert splits.in_shape == (3, 32, 32) and splits.classes[3] == "cat"
