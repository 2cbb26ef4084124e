"""The embedded datasets (shapes, digits, toy regression) and the ModelBias patch."""
import time

import numpy as np
import pytest
from scipy import ndimage

from minidl.data import (SHAPE_CLASSES, TAB10, add_bias_patch, load_dataset, make_shapes,
                         normalize, stratified_split, toy_regression)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(600, seed=3)


# --------------------------------------------------------------------------- shapes
def test_same_seed_same_images_other_seed_other_images():
    a, b, c = make_shapes(50, seed=7), make_shapes(50, seed=7), make_shapes(50, seed=8)
    for left, right in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a[0], c[0])


def test_arrays_and_class_balance(shapes):
    x, y, mask, classes = shapes
    assert x.shape == (600, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and mask.shape == (600, 32, 32) and mask.dtype == bool
    assert tuple(classes) == SHAPE_CLASSES and len(set(classes)) == 10
    assert np.bincount(y, minlength=10).tolist() == [60] * 10
    odd = make_shapes(1003, size=16, seed=1)[1]
    counts = np.bincount(odd, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1003
    assert x.std() > 40  # cluttered, not flat


def test_masks_cover_the_shapes(shapes):
    """Inside the mask the pixels share the shape's colour; just outside they do not."""
    x, y, mask, _ = shapes
    images = x.astype(np.float64) / 255
    inside_match, outside_match = [], []
    for img, m in zip(images, mask):
        colour = np.median(img[m], axis=0)
        close = np.abs(img - colour).sum(-1) < 0.35
        core = ndimage.binary_erosion(m)
        rim = ndimage.binary_dilation(m, iterations=2) & ~ndimage.binary_dilation(m)
        inside_match.append(close[core].mean() if core.any() else 1.0)
        outside_match.append(close[rim].mean())
    inside_match, outside_match = np.array(inside_match), np.array(outside_match)
    assert np.median(inside_match) > 0.85 and np.median(outside_match) < 0.1
    assert (inside_match > outside_match + 0.3).mean() > 0.97
    # every class has a plausible, distinct-sized area: never empty, never the whole image
    area = mask.mean((1, 2))
    assert area.min() > 0.01 and area.max() < 0.6
    circle, arrow = (area[y == SHAPE_CLASSES.index(name)].mean() for name in ("circle", "arrow"))
    assert circle > 2 * arrow


def test_ring_has_a_hole_and_cross_does_not_fill_its_corners():
    x, y, mask, _ = make_shapes(200, size=64, seed=0)
    for i in np.flatnonzero(y == SHAPE_CLASSES.index("ring"))[:5]:
        holes = ndimage.binary_fill_holes(mask[i]) & ~mask[i]
        assert holes.sum() > 5
    for i in np.flatnonzero(y == SHAPE_CLASSES.index("cross"))[:5]:
        filled = ndimage.binary_fill_holes(mask[i])
        assert ndimage.label(filled)[1] == 1
        hull_fill = mask[i].sum() / np.prod(np.ptp(np.argwhere(mask[i]), axis=0) + 1)
        assert hull_fill < 0.75  # a plus sign leaves the corners of its box empty


def test_generation_is_vectorised():
    start = time.process_time()  # CPU time: stable on a busy machine
    make_shapes(2000, seed=0)
    assert time.process_time() - start < 3.0  # about 0.3 s; a loop over pixels takes minutes


# sha256 of x, y and mask (their bytes, in that order) of make_shapes(200, seed=0), recorded
# before the clean variant was added: the default images must not change
DEFAULT_DIGEST = "5acdee2910356ee1af03c5f112a0098abc00206fe129435dd15d08cfe3f16c09"


def test_default_images_are_the_recorded_ones():
    import hashlib
    for x, y, mask, _ in (make_shapes(200, seed=0), make_shapes(200, seed=0, clutter=True)):
        assert hashlib.sha256(x.tobytes() + y.tobytes() + mask.tobytes()).hexdigest() == DEFAULT_DIGEST


def test_clean_variant_is_one_shape_on_a_plain_background():
    x, y, mask, _ = make_shapes(300, seed=4, clutter=False)
    assert x.shape == (300, 32, 32, 3) and np.bincount(y).tolist() == [30] * 10
    near = np.ones((1, 5, 5), bool)  # the soft edge, up to two pixels either side of the outline
    background, core = ~ndimage.binary_dilation(mask, near), ndimage.binary_erosion(mask, near, border_value=1)
    for img, outside, inside in zip(x, background, core):
        # each one colour: no clutter, light, line or noise (where two edges of a shape meet, as at the
        # star's tips and the crescent's horns, the soft edge reaches a little further)
        colours = []
        for pixels in (img[outside], img[inside]):
            colour, count = np.unique(pixels, axis=0, return_counts=True)
            assert count.max() > 0.9 * len(pixels)
            colours.append(colour[count.argmax()].astype(int))
        assert (colours[1] > colours[0] + 0.1 * 255 - 1).all()  # lighter in every channel
    area = mask.mean((1, 2))
    circle_centre = np.array([np.argwhere(m).mean(0) for m in mask[y == SHAPE_CLASSES.index("circle")]])
    assert area.min() > 0.08 and np.median(area) > 0.25 and np.abs(circle_centre - 15.5).max() < 2
    # upright and centred: two shapes of a class overlap more than shapes of two classes (pairs among the
    # first 20 of each class)
    def overlap(a, b):
        return (a & b).sum() / (a | b).sum()
    by_class = [mask[y == k][:20] for k in range(10)]
    same = [np.mean([overlap(a, b) for a, b in zip(m[::2], m[1::2])]) for m in by_class]
    other = [np.mean([overlap(a, b) for a, b in zip(m, by_class[(k + 1) % 10])]) for k, m in enumerate(by_class)]
    assert min(same) > 0.55 and np.mean(same) > np.mean(other) + 0.2
    np.testing.assert_array_equal(load_dataset("shapes", n=300, seed=4, clutter=False).test.mask, mask[270:])


def test_load_dataset_shapes():
    splits = load_dataset("shapes", n=500, seed=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (400, 50, 50)
    assert splits.in_shape == (3, 32, 32) and splits.classes == list(SHAPE_CLASSES)
    x = splits.train.x
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert splits.train.mask.shape == (400, 32, 32)
    raw_x, raw_y, raw_mask, _ = make_shapes(500, seed=2)
    np.testing.assert_allclose(splits.test.x, raw_x[450:].transpose(0, 3, 1, 2) / 255, atol=1e-6)
    np.testing.assert_array_equal(splits.test.mask, raw_mask[450:])
    np.testing.assert_allclose(splits.mean, x.mean((0, 2, 3)), atol=1e-4)
    z = splits.normalize(x)
    np.testing.assert_allclose(z.mean((0, 2, 3)), 0, atol=1e-3)
    np.testing.assert_allclose(z.std((0, 2, 3)), 1, atol=1e-3)


# --------------------------------------------------------------------------- bias patch
def patch_pixels(x_nhwc, patch_mask, i):
    return x_nhwc[i][patch_mask[i]]


def test_bias_patch_colour_encodes_the_label(shapes):
    x, y, mask, _ = shapes
    biased, patch = add_bias_patch(x, y, avoid=mask)
    assert biased.shape == x.shape and biased.dtype == np.uint8
    assert (patch.sum((1, 2)) == 16).all()  # 4x4 patch on 32x32 images
    np.testing.assert_array_equal(biased[~patch], x[~patch])  # nothing else changed
    for i in range(0, 600, 37):
        colours = {tuple(c) for c in patch_pixels(biased, patch, i)}
        expected = tuple(np.round(TAB10[y[i]] * 255).astype(np.uint8))
        assert colours == {expected, (255, 255, 255)}  # stripes: label colour and white
    assert not (patch & mask).any()  # shapes leave room: the patch never covers them


def test_bias_patch_position_follows_image_content(shapes):
    x, y, _, _ = shapes
    _, patch = add_bias_patch(x[:100], y[:100], seed=0)
    order = np.random.default_rng(0).permutation(100)
    _, patch_shuffled = add_bias_patch(x[:100][order], y[:100][order], seed=0)
    np.testing.assert_array_equal(patch_shuffled, patch[order])  # same image, same place
    corners = {tuple(np.argwhere(p)[0]) for p in patch}
    assert len(corners) > 50  # different images, different places
    _, other_seed = add_bias_patch(x[:100], y[:100], seed=1)
    assert not np.array_equal(other_seed, patch)


def test_bias_patch_layouts_and_grey_images():
    rng = np.random.default_rng(0)
    grey = rng.random((6, 1, 28, 28)).astype(np.float32)
    y = np.arange(6)
    out, patch = add_bias_patch(grey, y)
    assert out.shape == (6, 3, 28, 28) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0][~patch], grey[:, 0][~patch])
    first = np.argwhere(patch[2])[0]
    np.testing.assert_allclose(out[2, :, first[0], first[1]], TAB10[2])
    # the same images channels-last and as uint8 get the same patch positions
    as_uint8 = np.round(grey[:, 0] * 255).astype(np.uint8)
    out8, patch8 = add_bias_patch(as_uint8, y)
    assert out8.shape == (6, 28, 28, 3)
    np.testing.assert_array_equal(patch8, patch)
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        add_bias_patch(grey, y + 5)


def test_load_dataset_with_bias_matches_clean_images():
    clean = load_dataset("shapes", n=200, seed=1)
    biased = load_dataset("shapes", n=200, seed=1, bias=True)
    for part in ("train", "test"):
        a, b = getattr(clean, part), getattr(biased, part)
        outside = ~b.patch_mask[:, None].repeat(3, axis=1)
        np.testing.assert_array_equal(a.x[outside], b.x[outside])
        np.testing.assert_array_equal(a.mask, b.mask)  # shapes keep their object mask
        assert not (b.patch_mask & b.mask).any()
    digits = load_dataset("digits", bias=True)
    assert digits.in_shape == (3, 8, 8) and digits.train.mask is digits.train.patch_mask


# --------------------------------------------------------------------------- digits, toy, splits
def test_digits_fixed_stratified_split():
    a = load_dataset("digits")
    b = load_dataset("digits", seed=5)
    assert (len(a.train), len(a.val), len(a.test)) == (1077, 360, 360)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    np.testing.assert_array_equal(a.val.y, b.val.y)
    assert np.ptp(np.bincount(a.test.y)) <= 2  # about 36 of each digit
    assert a.in_shape == (1, 8, 8) and a.train.x.max() == 1.0
    assert a.classes == [str(d) for d in range(10)]


def test_digits_28_is_mnist_framed():
    splits = load_dataset("digits", size=28)
    x = splits.train.x
    assert x.shape[1:] == (1, 28, 28) and x.min() >= 0 and x.max() <= 1
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert (x[:, 0][:, border] == 0).all()  # the digit sits in the central 20x20
    small = load_dataset("digits").train.x
    np.testing.assert_allclose(x.mean((2, 3)) / small.mean((2, 3)), 400 / 784, rtol=0.15)


def test_toy_regression_values():
    x, t = toy_regression()
    assert x.dtype == t.dtype == np.float64 and x.shape == t.shape == (11,)
    np.testing.assert_allclose(x, np.arange(11) / 10)
    assert t.tolist() == [0.15, -0.16, -0.61, -0.86, -1.02, -0.44, 0.16, 0.05, 0.45, 1.39, 0.86]


def test_stratified_split_is_exact_and_proportional():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    rest, picked = stratified_split(y, 20, seed=0)
    assert len(picked) == 20 and len(rest) == 80
    assert np.intersect1d(rest, picked).size == 0
    assert np.bincount(y[picked]).tolist() == [10, 6, 3, 1]


def test_normalize_and_option_errors():
    x = np.ones((2, 3, 4, 4), np.float32)
    np.testing.assert_allclose(normalize(x, (0.5, 0.5, 0.0), (0.5, 0.25, 2.0))[:, :, 0, 0],
                               [[1, 2, 0.5]] * 2)
    with pytest.raises(ValueError, match="3 channels"):
        normalize(x[:, :1], (0.5, 0.5, 0.0), (1, 1, 1))
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*cifar10"):
        load_dataset("cifar")
    with pytest.raises(TypeError, match="unknown option.*sizes.*size"):
        load_dataset("digits", sizes=28)
