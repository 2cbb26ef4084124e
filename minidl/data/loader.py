"""A DataLoader over numpy arrays: batches, seeded shuffling, a transform hook.

    loader = DataLoader(splits.train.x, splits.train.y, batch_size=64, shuffle=True, seed=0,
                        transform=augment.Compose([augment.horizontal_flip]))
    for epoch in range(10):
        for xb, yb in loader:          # a new order every epoch, the same in every run
            ...
"""
from __future__ import annotations

import math

import numpy as np


class DataLoader:
    """Iterate over aligned arrays (same first dimension) in batches.

    Each pass over the loader is one epoch. With ``shuffle=True`` epoch ``e`` uses the
    order drawn from a generator seeded by ``(seed, e)``: a new order every epoch, the
    same sequence of orders in every run, and ``set_epoch`` to resume in the middle.
    ``transform(x, rng=rng)`` is applied to the first array's batch (the inputs), with
    the loader's generator for its randomness; the other arrays pass unchanged.
    """

    def __init__(self, *arrays, batch_size=32, shuffle=False, drop_last=False, seed=0,
                 transform=None):
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
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
            if self.transform is not None:
                batch[0] = self.transform(batch[0], rng=rng)
            yield tuple(batch)
