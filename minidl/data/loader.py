"""A DataLoader over numpy arrays: batches, seeded shuffling, a transform hook.

    loader = DataLoader(splits.train.x, splits.train.y, batch_size=64, shuffle=True, seed=0,
                        transform=augment.Compose([augment.horizontal_flip]))
    for epoch in range(10):
        for xb, yb in loader:          # a new order every epoch, the same in every run
            ...

torch's form works too: ``DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)``,
or any dataset with ``__len__`` and ``__getitem__`` giving a sample (a tuple of arrays).
"""
from __future__ import annotations

import math

import numpy as np


class TensorDataset:
    """torch's TensorDataset: aligned arrays or tensors, ``dataset[i]`` the tuple of
    their i-th entries."""

    def __init__(self, *tensors):
        self.tensors = tuple(np.asarray(t) for t in tensors)
        if not self.tensors or len({len(t) for t in self.tensors}) != 1:
            raise ValueError(f"TensorDataset needs one or more arrays of the same length, got "
                             f"lengths {[len(t) for t in self.tensors]}")

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)


def _is_dataset(value):
    """A dataset object (torch's form) rather than an array of samples."""
    return not isinstance(value, (np.ndarray, list, tuple)) and not hasattr(value, "__array__") \
        and hasattr(value, "__getitem__") and hasattr(value, "__len__")


class DataLoader:
    """Iterate over aligned arrays (same first dimension) in batches.

    Each pass over the loader is one epoch. With ``shuffle=True`` epoch ``e`` uses the
    order drawn from a generator seeded by ``(seed, e)``: a new order every epoch, the
    same sequence of orders in every run, and ``set_epoch`` to resume in the middle.
    ``transform(x, rng=rng)`` is applied to the first array's batch (the inputs), with
    the loader's generator for its randomness; the other arrays pass unchanged.

    Instead of arrays, one dataset: a ``TensorDataset`` (its arrays are used directly)
    or any object with ``__len__`` and ``__getitem__`` (its samples are stacked per batch).
    """

    def __init__(self, *arrays, batch_size=32, shuffle=False, drop_last=False, seed=0,
                 transform=None):
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        self.dataset = None
        if len(arrays) == 1 and _is_dataset(arrays[0]):
            if isinstance(arrays[0], TensorDataset):
                arrays = arrays[0].tensors
            else:  # indexed sample by sample; the index array stands in for the data
                self.dataset = arrays[0]
                arrays = (np.arange(len(self.dataset)),)
        arrays = tuple(np.asarray(a) for a in arrays)
        lengths = {len(a) for a in arrays}
        if len(lengths) != 1:
            raise ValueError(f"DataLoader: arrays of different lengths {[len(a) for a in arrays]}; "
                             "they must be aligned (same first dimension)")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.arrays = arrays
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed, self.transform = seed, transform
        self.epoch = 0

    def __len__(self):
        """Batches per epoch."""
        n = len(self.arrays[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_examples(self):
        return len(self.arrays[0])

    def set_epoch(self, epoch):
        """The epoch the next pass will be (its order and transforms follow from it)."""
        self.epoch = int(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n = self.num_examples
        order = rng.permutation(n) if self.shuffle else None
        for b in range(len(self)):
            if order is None:  # slices are views: no copy of the data
                pick = slice(b * self.batch_size, (b + 1) * self.batch_size)
            else:
                pick = order[b * self.batch_size: (b + 1) * self.batch_size]
            batch = [a[pick] for a in self.arrays]
            if self.dataset is not None:
                samples = [self.dataset[int(i)] for i in batch[0]]
                batch = [np.stack([np.asarray(s[k]) for s in samples]) for k in range(len(samples[0]))]
            if self.transform is not None:
                batch[0] = self.transform(batch[0], rng=rng)
            yield tuple(batch)
