"""Batched augmentations: each checked against what it should do to every image."""
import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from reference_torch.augment import (RANDAUGMENT_OPS, ColorJitter, Compose, Cutout, GaussianBlur,
                                     Normalize, RandAugment, RandomCrop, RandomGrayscale,
                                     RandomHorizontalFlip, RandomResizedCrop, TrivialAugment, hsv_to_rgb,
                                     rgb_to_hsv, to_grayscale)


def images(b=16, h=12, w=12, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


ALL = [RandomCrop(padding=3), RandomHorizontalFlip(), RandomResizedCrop(10), ColorJitter(0.4, 0.4, 0.4, 0.1),
       RandomGrayscale(0.5), GaussianBlur(5), Cutout(0.4), RandAugment(2), TrivialAugment()]


@pytest.mark.parametrize("t", ALL, ids=lambda t: type(t).__name__)
def test_same_seed_same_result_other_seed_differs(t):
    x = images()
    a, b, c = t(x, gen(1)), t(x, gen(1)), t(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1


def test_compose_owns_a_seeded_generator_and_draws_new_views():
    x = images()
    make = lambda: Compose([RandomCrop(padding=2), RandomHorizontalFlip(), Cutout(4)], seed=5)
    aug = make()
    view1, view2 = aug(x), aug(x)
    assert not torch.equal(view1, view2)          # two SimCLR views differ
    again = make()
    assert torch.equal(again(x), view1) and torch.equal(again(x), view2)


def test_rejects_integer_images():
    with pytest.raises(ValueError, match="float batch"):
        RandomCrop()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_random_crop_takes_one_window_of_the_padded_image_per_image():
    x, p = images(), 3
    out = RandomCrop(padding=p, padding_mode="constant")(x, gen())
    padded = F.pad(x, (p,) * 4)
    offsets = []
    for i in range(len(x)):
        hits = [(t, l) for t in range(2 * p + 1) for l in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, t:t + 12, l:l + 12])]
        assert len(hits) == 1, f"image {i} is not a crop of its padded self"
        offsets.append(hits[0])
    assert len(set(offsets)) > 4, "every image should get its own offset"
    assert torch.equal(RandomCrop(padding=0)(x, gen()), x)  # nothing to move


def test_flip_flips_about_half_the_images():
    x = images(200, 4, 4)
    out = RandomHorizontalFlip()(x, gen())
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped ^ kept).all()
    assert 70 < flipped.sum() < 130


def test_random_resized_crop_full_box_is_identity_and_boxes_are_crops():
    x = images(4, 16, 16)
    same = RandomResizedCrop(16, scale=(1, 1), ratio=(1, 1))(x, gen())
    assert torch.allclose(same, x, atol=1e-5)
    # A quarter of the area at ratio 1 is an 8x8 box, upsampled to 16x16.
    out = RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1, 1))(x, gen())
    for i in range(len(x)):
        errors = [(out[i] - F.interpolate(x[i:i + 1, :, t:t + 8, l:l + 8], size=16, mode="bilinear",
                                          align_corners=False)[0]).abs().max().item()
                  for t in range(9) for l in range(9)]
        assert min(errors) < 1e-5, f"image {i} is not a resized 8x8 crop"


def test_colour_space_round_trip_and_reference():
    x = images(4, 5, 5)
    hsv = rgb_to_hsv(x)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-6)
    r, g, b = x[1, :, 2, 3].tolist()
    assert np.allclose(colorsys.rgb_to_hsv(r, g, b), hsv[1, :, 2, 3].tolist(), atol=1e-6)


def test_brightness_scales_each_image_by_its_own_factor():
    x = images() * 0.5  # stays below 1 after scaling by at most 1.5: no clamping
    out = ColorJitter(brightness=0.5, contrast=0, saturation=0, hue=0)(x, gen())
    ratio = out / x
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert ((per_image[:, 0] >= 0.5) & (per_image[:, 0] <= 1.5)).all()
    assert per_image[:, 0].std() > 0.05


def test_hue_jitter_rotates_hue_and_keeps_saturation_and_value():
    x = images()
    out = ColorJitter(brightness=0, contrast=0, saturation=0, hue=0.2)(x, gen())
    a, b = rgb_to_hsv(x), rgb_to_hsv(out)
    assert torch.allclose(a[:, 1:], b[:, 1:], atol=1e-5)
    shift = (b[:, 0] - a[:, 0]) % 1.0
    shift = torch.where(shift > 0.5, shift - 1, shift).flatten(1)  # to [-0.5, 0.5]
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)
    assert shift.abs().max() <= 0.2 + 1e-5


def test_jitter_probability_leaves_other_images_untouched():
    x = images(100, 4, 4)
    out = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.3)(x, gen())
    untouched = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert 50 < untouched.sum() < 90


def test_grayscale_uses_luma_weights():
    x = images()
    out = RandomGrayscale(p=1.0)(x, gen())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert all(torch.allclose(out[:, c], luma) for c in range(3))
    assert torch.equal(to_grayscale(x), out)


def test_gaussian_blur_matches_scipy_per_image():
    x = images(6, 10, 10)
    k, lo, hi = 5, 0.3, 2.0
    out = GaussianBlur(k, sigma=(lo, hi), p=1.0)(x, gen(4))
    # The sigmas are the generator's first draw; each image has its own.
    sigmas = torch.rand(6, generator=gen(4)) * (hi - lo) + lo
    t = np.arange(k) - k // 2
    for i, s in enumerate(sigmas.tolist()):
        w = np.exp(-t ** 2 / (2 * s ** 2))
        w /= w.sum()
        ref = ndimage.correlate1d(ndimage.correlate1d(x[i].double().numpy(), w, axis=1, mode="mirror"),
                                  w, axis=2, mode="mirror")
        assert np.allclose(out[i].numpy(), ref, atol=1e-5), f"image {i}"


def test_cutout_fills_one_clipped_square_per_image():
    x = images(50, 10, 10) * 0.9 + 0.05  # no pixel equals the fill value by chance
    out = Cutout(4, fill=1.0)(x, gen())
    for i in range(len(x)):
        changed = (out[i] != x[i]).any(0)
        assert (out[i][:, changed] == 1.0).all()
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert changed.sum() == len(rows) * len(cols)  # a rectangle
        assert rows.max() - rows.min() + 1 == len(rows)  # contiguous
    sizes = [(out[i] != x[i]).any(0).sum().item() for i in range(len(x))]
    assert sizes.count(16) > 10 and min(sizes) < 16  # whole squares, and some clipped at a border


OPS_THAT_KEEP_AT_ZERO = ["identity", "brightness", "contrast", "color", "sharpness", "rotate",
                         "shear_x", "shear_y", "translate_x", "translate_y", "solarize"]


@pytest.mark.parametrize("name", OPS_THAT_KEEP_AT_ZERO)
def test_randaugment_ops_are_identity_at_zero_magnitude(name):
    x = images(4)
    out = RANDAUGMENT_OPS[name](x, torch.zeros(4), torch.ones(4))
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("name", sorted(RANDAUGMENT_OPS))
def test_randaugment_ops_stay_in_range_at_full_magnitude(name):
    x = images(4)
    out = RANDAUGMENT_OPS[name](x, torch.ones(4), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    if name != "identity":
        assert not torch.allclose(out, x, atol=1e-3), f"{name} did nothing at full magnitude"


def test_translate_moves_whole_pixels_and_fills_with_grey():
    x = images(2, 10, 10)
    out = RANDAUGMENT_OPS["translate_x"](x, torch.ones(2), torch.tensor([1.0, -1.0]))  # 0.3 * 10 = 3 px
    moved = [torch.allclose(out[i, :, :, 3:], x[i, :, :, :-3], atol=1e-5) for i in range(2)] + \
            [torch.allclose(out[i, :, :, :-3], x[i, :, :, 3:], atol=1e-5) for i in range(2)]
    assert moved == [True, False, False, True] or moved == [False, True, True, False]
    assert torch.allclose(out[0, :, :, :3], torch.full_like(out[0, :, :, :3], 0.5), atol=1e-5) or \
        torch.allclose(out[0, :, :, -3:], torch.full_like(out[0, :, :, -3:], 0.5), atol=1e-5)


def test_equalize_spreads_a_dark_image_over_the_full_range():
    x = images(3) * 0.2  # a dark image uses few levels
    out = RANDAUGMENT_OPS["equalize"](x, None, None)
    assert torch.allclose(out.amax((2, 3)), torch.ones(3, 3))
    order_in, order_out = x[0, 0].flatten().argsort(), out[0, 0].flatten()
    assert (order_out[order_in].diff() >= 0).all()  # monotone: brighter stays brighter
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert torch.equal(RANDAUGMENT_OPS["equalize"](flat, None, None), flat)


def test_randaugment_applies_num_ops_to_every_image():
    x = images(64)
    out = RandAugment(num_ops=2, magnitude=1.0, fixed_magnitude=True, ops=["posterize", "equalize"])(x, gen())
    assert not any(torch.equal(o, xi) for o, xi in zip(out, x))
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        RandAugment(ops=["rotate", "warp"])


def test_trivialaugment_moves_each_image_along_one_axis_by_a_magnitude_over_the_whole_range():
    """One operation per image (two translations would sometimes move a dot along both
    axes), at magnitudes spread over [0, 1] (up to 30 % of the side: 6 px of 20)."""
    x = torch.full((200, 3, 20, 20), 0.5)
    x[:, :, 10, 10] = 1.0  # a bright dot on the grey that translations fill with
    out = TrivialAugment(ops=["translate_x", "translate_y"])(x, gen()) - 0.5
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    mass = out[:, 0].sum((1, 2))
    dx, dy = (out[:, 0] * xs).sum((1, 2)) / mass - 10, (out[:, 0] * ys).sum((1, 2)) / mass - 10
    assert torch.allclose(mass, torch.full_like(mass, 0.5), atol=1e-4)  # the dot stays inside
    assert bool(((dx.abs() < 1e-3) | (dy.abs() < 1e-3)).all())
    shift = torch.maximum(dx.abs(), dy.abs())
    assert shift.max() > 5 and shift.min() < 1 and 2 < shift.mean() < 4  # uniform over 0-6 px: mean 3


def test_normalize():
    x = images()
    out = Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.1])(x)
    assert torch.allclose(out[:, 2], (x[:, 2] - 0.3) / 0.1)


@pytest.mark.gpu
def test_same_seed_gives_same_augmentation_on_the_gpu():
    x = images(32, 32, 32)
    smooth = ["identity", "brightness", "contrast", "color", "sharpness", "rotate", "shear_x", "translate_y"]
    aug = Compose([RandomResizedCrop(32), RandomHorizontalFlip(), ColorJitter(p=0.8), RandomGrayscale(0.2),
                   GaussianBlur(3), RandAugment(2, ops=smooth), Cutout(0.5)])
    cpu, gpu = aug(x, gen(9)), aug(x.cuda(), gen(9))
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)
    # Ops that quantise to 256 levels (posterize, equalize, solarize's threshold) can turn a
    # last-bit difference between devices into a visible one, so compare them by counting.
    full = RandAugment(2)
    far = (full(x, gen(3)) - full(x.cuda(), gen(3)).cpu()).abs() > 1e-3
    assert far.float().mean() < 0.01
