"""Numpy augmentations on whole batches of images (N, C, H, W).

Every function draws different random parameters for each image, all at once (no
loop over images), from the generator ``rng`` it is given, and returns a new array:
the input is never modified (a DataLoader may hand out views of the dataset).

    from functools import partial
    train_tf = Compose([partial(random_crop, padding=4), horizontal_flip,
                        partial(cutout, size=8)])
    loader = DataLoader(x, y, batch_size=128, shuffle=True, transform=train_tf)
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check(x):
    if x.ndim != 4:
        raise ValueError(f"augmentations take a batch (N, C, H, W), got shape {x.shape}")


def random_crop(x, padding, rng=None):
    """Pad every side with ``padding`` zeros, then crop back to (H, W) at a random offset."""
    _check(x)
    rng, p = _rng(rng), int(padding)
    if p == 0:
        return x.copy()
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dy, dx = rng.integers(0, 2 * p + 1, n), rng.integers(0, 2 * p + 1, n)
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (N, C, 2p+1, 2p+1, H, W), a view
    return windows[np.arange(n), :, dy, dx]


def horizontal_flip(x, rng=None, p=0.5):
    """Mirror each image left-right with probability ``p``."""
    _check(x)
    flip = _rng(rng).random(len(x)) < p
    return np.where(flip[:, None, None, None], x[..., ::-1], x)


def gaussian_noise(x, std, rng=None):
    """Add independent N(0, std^2) noise to every value (no clipping)."""
    _check(x)
    noise = _rng(rng).standard_normal(x.shape, dtype=np.float32) * np.float32(std)
    return (x + noise).astype(x.dtype, copy=False)


def cutout(x, size, rng=None, value=0.0):
    """Set a ``size`` x ``size`` square to ``value`` in every image, centred at a random
    pixel (the square may hang over the border, as in DeVries & Taylor 2017)."""
    _check(x)
    rng = _rng(rng)
    n, _, h, w = x.shape
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    top, left = cy - size // 2, cx - size // 2
    rows = np.arange(h)[None, :]
    cols = np.arange(w)[None, :]
    inside = (((rows >= top[:, None]) & (rows < top[:, None] + size))[:, :, None]
              & ((cols >= left[:, None]) & (cols < left[:, None] + size))[:, None, :])
    return np.where(inside[:, None], np.asarray(value, x.dtype), x)


class Compose:
    """Apply augmentations in order, each called as ``step(x, rng=rng)``.

    Use ``functools.partial`` to fix parameters: ``partial(random_crop, padding=4)``.
    Called without ``rng`` (outside a DataLoader) it uses its own generator from ``seed``.
    """

    def __init__(self, steps, seed=0):
        self.steps = list(steps)
        self.rng = np.random.default_rng(seed)

    def __call__(self, x, rng=None):
        rng = self.rng if rng is None else rng
        for step in self.steps:
            x = step(x, rng=rng)
        return x

    def __repr__(self):
        names = [getattr(s, "__name__", None) or getattr(getattr(s, "func", None), "__name__", repr(s))
                 for s in self.steps]
        return f"Compose([{', '.join(names)}])"
