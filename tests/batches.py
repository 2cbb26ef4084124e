"""A minimal batch iterable for the training-loop tests: ``md.train`` must accept any
re-iterable of (x, y) ndarray batches, not only ``minidl.data.DataLoader``."""
import numpy as np


class Loader:
    """Batches of (x, y) ndarrays; shuffled per epoch from its own seeded generator,
    or in a fixed order. Re-iterable, like a DataLoader; the same seed gives the same
    batches, so twin loaders feed minidl and torch alike."""

    def __init__(self, x, y, batch_size, seed=None):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rng = None if seed is None else np.random.default_rng(seed)

    def __iter__(self):
        order = np.arange(len(self.x)) if self.rng is None else self.rng.permutation(len(self.x))
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.x[index], self.y[index]

    def __len__(self):
        return -(-len(self.x) // self.batch_size)
