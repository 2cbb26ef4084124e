"""The small datasets that ship with the kit (no download): digits and the ITU toy data."""
from __future__ import annotations

import numpy as np


def toy_regression():
    """The ITU week-5 regression data: 11 points ``(x, t)``, float64.

    x = 0, 0.1, ..., 1 and noisy targets t that follow roughly sin(2 pi x).
    """
    x = np.linspace(0.0, 1.0, 11)
    t = np.array([0.15, -0.16, -0.61, -0.86, -1.02, -0.44, 0.16, 0.05, 0.45, 1.39, 0.86])
    return x, t


def load_digits_arrays(size=8):
    """scikit-learn's 1,797 handwritten digits as ``(images float32 (N, size, size) in
    [0, 1], labels int64)``.

    ``size=8`` keeps the original 8x8 images (16 grey levels). ``size=28`` makes them
    MNIST-shaped the way MNIST itself is framed: the digit is resized (bilinear) to
    20x20 and centred in a 28x28 image with a 4-pixel empty border.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    if size == 8:
        return images, labels
    if size != 28:
        raise ValueError(f"digits size {size!r}: choose 8 (original) or 28 (MNIST-shaped)")
    from scipy.ndimage import zoom

    # grid_mode=True maps pixel *areas* onto each other, so the digit is not shifted
    inner = zoom(images, (1, 20 / 8, 20 / 8), order=1, grid_mode=True, mode="nearest")
    framed = np.zeros((len(images), 28, 28), np.float32)
    framed[:, 4:24, 4:24] = np.clip(inner, 0.0, 1.0)
    return framed, labels
