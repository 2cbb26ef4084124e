"""minidl.data.DataLoader and the numpy batch augmentations."""
from functools import partial

import numpy as np
import pytest

from minidl.data import DataLoader, augment


def epoch_indices(loader):
    return np.concatenate([batch[1] for batch in loader])


def test_batches_cover_every_example_once_per_epoch():
    x, idx = np.random.default_rng(0).random((103, 2)), np.arange(103)
    loader = DataLoader(x, idx, batch_size=10, shuffle=True, seed=3)
    assert len(loader) == 11
    first, second = epoch_indices(loader), epoch_indices(loader)
    assert sorted(first) == sorted(second) == list(range(103))
    assert not np.array_equal(first, second)  # reshuffled every epoch
    for xb, ib in DataLoader(x, idx, batch_size=10, shuffle=True, seed=3):
        np.testing.assert_array_equal(xb, x[ib])  # arrays stay aligned


def test_shuffling_is_seeded_and_resumable():
    idx = np.arange(50)
    a = DataLoader(idx, batch_size=8, shuffle=True, seed=1)
    b = DataLoader(idx, batch_size=8, shuffle=True, seed=1)
    runs_a = [np.concatenate([bt[0] for bt in a]) for _ in range(3)]
    runs_b = [np.concatenate([bt[0] for bt in b]) for _ in range(3)]
    for ra, rb in zip(runs_a, runs_b):
        np.testing.assert_array_equal(ra, rb)
    c = DataLoader(idx, batch_size=8, shuffle=True, seed=1)
    c.set_epoch(2)
    np.testing.assert_array_equal(np.concatenate([bt[0] for bt in c]), runs_a[2])
    other = DataLoader(idx, batch_size=8, shuffle=True, seed=2)
    assert not np.array_equal(np.concatenate([bt[0] for bt in other]), runs_a[0])


def test_order_drop_last_and_sizes():
    idx = np.arange(25)
    plain = list(DataLoader(idx, batch_size=10))
    assert [len(b[0]) for b in plain] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in plain]), idx)
    dropped = DataLoader(idx, batch_size=10, drop_last=True, shuffle=True)
    assert len(dropped) == 2 and [len(b[0]) for b in dropped] == [10, 10]
    with pytest.raises(ValueError, match="different lengths"):
        DataLoader(idx, idx[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(idx, batch_size=0)


def test_transform_hook_sees_inputs_and_the_loader_rng():
    x, y = np.zeros((20, 1, 4, 4), np.float32), np.arange(20)
    seen = []

    def add_noise(xb, rng):
        seen.append(rng)
        return xb + rng.random()

    loader = DataLoader(x, y, batch_size=5, transform=add_noise, seed=0)
    batches = list(loader)
    assert all(isinstance(r, np.random.Generator) for r in seen)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)  # labels untouched
    assert (x == 0).all()  # the dataset itself is never modified
    offsets = [b[0][0, 0, 0, 0] for b in batches]
    assert len(set(offsets)) == 4 and min(offsets) > 0
    loader.set_epoch(0)
    np.testing.assert_array_equal([b[0][0, 0, 0, 0] for b in loader], offsets)


# --------------------------------------------------------------------------- augmentations
@pytest.fixture
def batch():
    return np.random.default_rng(0).random((16, 3, 8, 8)).astype(np.float32)


def test_random_crop_matches_per_image_crops(batch):
    out = augment.random_crop(batch, 2, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    dy, dx = rng.integers(0, 5, 16), rng.integers(0, 5, 16)
    padded = np.pad(batch, ((0, 0), (0, 0), (2, 2), (2, 2)))
    expected = np.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(16)])
    np.testing.assert_array_equal(out, expected)
    assert out.shape == batch.shape and len(set(zip(dy, dx))) > 5


def test_horizontal_flip(batch):
    np.testing.assert_array_equal(augment.horizontal_flip(batch, np.random.default_rng(0), p=0.0), batch)
    np.testing.assert_array_equal(augment.horizontal_flip(batch, np.random.default_rng(0), p=1.0),
                                  batch[..., ::-1])
    out = augment.horizontal_flip(batch, np.random.default_rng(1))
    flipped = np.array([np.array_equal(o, b[..., ::-1]) for o, b in zip(out, batch)])
    kept = np.array([np.array_equal(o, b) for o, b in zip(out, batch)])
    assert (flipped ^ kept).all() and 0 < flipped.sum() < 16  # each image one or the other


def test_gaussian_noise(batch):
    big = np.zeros((64, 3, 32, 32), np.float32)
    noisy = augment.gaussian_noise(big, 0.1, np.random.default_rng(0))
    assert noisy.dtype == np.float32 and abs(noisy.std() - 0.1) < 0.002 and abs(noisy.mean()) < 0.002
    assert (big == 0).all()


def test_cutout_zeroes_one_square_per_image():
    ones = np.ones((200, 2, 16, 16), np.float32)
    out = augment.cutout(ones, 4, np.random.default_rng(0))
    zeroed = (out == 0).all(1)  # (N, H, W): all channels cut together
    assert ((out == 0) | (out == 1)).all()
    counts = zeroed.sum((1, 2))
    assert counts.max() == 16 and counts.min() >= 4  # 4x4, or clipped at a border
    for img in zeroed[:20]:
        rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
        assert img.sum() == len(rows) * len(cols)  # a rectangle (the clipped square)


def test_compose_runs_steps_in_order_with_one_rng(batch):
    tf = augment.Compose([partial(augment.random_crop, padding=1), partial(augment.horizontal_flip, p=1.0)])
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    expected = augment.horizontal_flip(augment.random_crop(batch, 1, rng_b), rng_b, p=1.0)
    np.testing.assert_array_equal(tf(batch, rng=rng_a), expected)
    # in a DataLoader: a deterministic stream of augmented batches
    y = np.arange(16)
    runs = [[b[0] for b in DataLoader(batch, y, batch_size=4, shuffle=True, transform=tf, seed=4)]
            for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert "random_crop" in repr(tf)
