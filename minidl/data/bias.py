"""The bias of the KTH ModelBias practical: a small striped patch whose colour is the label.

A model trained on such images can reach high accuracy by reading the patch alone, a
shortcut that explanation methods should reveal and that fails on clean images. The
patch is a square of horizontal stripes, label colour and white, in matplotlib's
``tab10`` colour for the class. Its position is a function of the image content (a
hash of the pixels), so it moves from image to image but the same image always gets
it in the same place, whichever array or order it arrives in.
"""
from __future__ import annotations

import numpy as np

# matplotlib's tab10 colours ("tab:blue", "tab:orange", ...), one per class
TAB10 = np.array([
    [0x1F, 0x77, 0xB4], [0xFF, 0x7F, 0x0E], [0x2C, 0xA0, 0x2C], [0xD6, 0x27, 0x28],
    [0x94, 0x67, 0xBD], [0x8C, 0x56, 0x4B], [0xE3, 0x77, 0xC2], [0x7F, 0x7F, 0x7F],
    [0xBC, 0xBD, 0x22], [0x17, 0xBE, 0xCF]]) / 255.0


def _channels_first(x, channels_first):
    if channels_first is not None:
        return channels_first
    first, last = x.shape[1] in (1, 3), x.shape[-1] in (1, 3)
    if first == last:
        raise ValueError(f"add_bias_patch: cannot tell the channel axis of shape {x.shape}; "
                         "pass channels_first=True (N, C, H, W) or False (N, H, W, C)")
    return first


def _content_hash(x_nhwc, seed, chunk=2048):
    """One non-negative integer per image from its pixels quantised to 8 bits: a
    random integer projection, so equal images give equal numbers. In chunks, so
    that 50,000 CIFAR images need no gigabytes of temporary integers."""
    weights = np.random.default_rng(seed).integers(0, 2 ** 20, x_nhwc[0].size, dtype=np.int64)
    hashes = np.empty(len(x_nhwc), np.int64)
    for start in range(0, len(x_nhwc), chunk):
        part = x_nhwc[start:start + chunk]
        if part.dtype != np.uint8:
            part = np.round(np.clip(part, 0, 1) * 255)
        hashes[start:start + chunk] = part.reshape(len(part), -1).astype(np.int64) @ weights
    return hashes


def _positions(hashes, height, width, size, avoid):
    """Top-left corner (row, col) per image: the hash picks one of the positions
    where the patch fits, preferring those that do not cover ``avoid``."""
    rows, cols = height - size + 1, width - size + 1
    if avoid is None:
        allowed = np.ones((len(hashes), rows * cols), bool)
    else:
        # patch-sized window sums of the mask through a summed-area table
        table = np.zeros((len(avoid), height + 1, width + 1), np.int32)
        table[:, 1:, 1:] = avoid.astype(np.int32).cumsum(1).cumsum(2)
        overlap = (table[:, size:, size:] - table[:, :-size, size:]
                   - table[:, size:, :-size] + table[:, :-size, :-size]).reshape(len(avoid), -1)
        allowed = overlap == overlap.min(axis=1, keepdims=True)  # zero wherever possible
    k = hashes % allowed.sum(axis=1)
    choice = np.argmax(allowed & (np.cumsum(allowed, axis=1) == (k + 1)[:, None]), axis=1)
    return choice // cols, choice % cols


def add_bias_patch(x, y, seed=0, size=None, avoid=None, colours=None, channels_first=None):
    """Images with the ModelBias patch, and where it is: ``(x_biased, patch_mask)``.

    x        images (N, C, H, W), (N, H, W, C) or grey (N, H, W); uint8 in 0..255 or
             floats in [0, 1]. Grey images come back with 3 channels (the colour is
             the signal), in the same layout; (N, H, W) becomes (N, H, W, 3).
    y        labels (N,) in 0..9 (or below ``len(colours)``)
    seed     picks the hash, hence where the patches land
    size     the patch side in pixels (default: an eighth of the image, at least 3)
    avoid    optional (N, H, W) bool: regions the patch should not cover (for
             ``shapes``, the object mask), respected whenever the image has room
    colours  optional (K, 3) RGB in [0, 1], one per class (default: tab10)
    Returns  x_biased (a new array, same dtype) and patch_mask (N, H, W) bool.
    """
    x, y = np.asarray(x), np.asarray(y)
    colours = TAB10 if colours is None else np.asarray(colours, float)
    if x.ndim == 3:  # grey (N, H, W)
        x, channels_first = x[..., None], False
    if x.ndim != 4 or len(x) != len(y):
        raise ValueError(f"add_bias_patch: expected images (N, ...) and N labels, got {x.shape} "
                         f"and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= len(colours)):
        raise ValueError(f"add_bias_patch: labels must be in 0..{len(colours) - 1} to get a "
                         f"colour each (found {y.min()}..{y.max()}); pass colours=(K, 3) for K classes")
    first = _channels_first(x, channels_first)
    channel_axis = 1 if first else -1
    if x.shape[channel_axis] == 1:
        out = np.repeat(x, 3, axis=channel_axis)  # a new array either way: x is never modified
    else:
        out = x.copy()
    nhwc = np.moveaxis(out, 1, -1) if first else out  # a view: writing to it writes to out
    n, height, width, _ = nhwc.shape
    size = max(3, round(min(height, width) / 8)) if size is None else int(size)
    if not 1 <= size <= min(height, width):
        raise ValueError(f"add_bias_patch: patch size {size} does not fit {height}x{width} images")

    top, left = _positions(_content_hash(nhwc, seed), height, width, size, avoid)
    even_rows = (np.arange(size) % 2 == 0)[None, :, None, None]
    stripes = np.where(even_rows, colours[y][:, None, None, :], 1.0)  # label colour, white, ...
    if out.dtype == np.uint8:
        stripes = np.round(stripes * 255)
    rows = top[:, None, None] + np.arange(size)[None, :, None]
    cols = left[:, None, None] + np.arange(size)[None, None, :]
    images = np.arange(n)[:, None, None]
    nhwc[images, rows, cols] = np.broadcast_to(stripes, (n, size, size, 3))
    patch_mask = np.zeros((n, height, width), bool)
    patch_mask[images, rows, cols] = True
    return out, patch_mask
