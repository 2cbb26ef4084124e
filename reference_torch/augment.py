"""Batched image augmentation on the device, written with plain tensor ops.

Every transform takes a batch ``x`` of shape (B, C, H, W), floats in [0, 1], and
draws *different* random parameters for every image, all at once (no Python loop
over images), so a GPU augments a whole batch in a few kernel launches.

Randomness: each call takes an optional ``generator``. The per-image parameters
(offsets, factors, angles: a few numbers per image) are drawn on the CPU from that
generator and then moved to ``x``'s device, so the same seed gives the same
augmentation on any device. Without a generator, torch's global RNG is used, which
the Trainer saves in its checkpoints. ``Compose(..., seed=0)`` owns a seeded generator.

    weak = Compose([RandomCrop(padding=4), RandomHorizontalFlip()])               # FixMatch weak
    strong = Compose([RandomCrop(padding=4), RandomHorizontalFlip(), RandAugment(2), Cutout(0.5)])
    simclr = Compose([RandomResizedCrop(32), RandomHorizontalFlip(),
                      ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), RandomGrayscale(0.2)])
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Generator = torch.Generator | None


# --------------------------------------------------------------------------- random parameters
def _uniform(n: int, low: float, high: float, generator: Generator, device: torch.device) -> Tensor:
    return (torch.rand(n, generator=generator) * (high - low) + low).to(device)


def _coin(n: int, p: float, generator: Generator, device: torch.device) -> Tensor:
    """Boolean (n,): True with probability p (whether to apply a transform to each image)."""
    return (torch.rand(n, generator=generator) < p).to(device)


def _sign(n: int, generator: Generator, device: torch.device) -> Tensor:
    return (torch.randint(0, 2, (n,), generator=generator) * 2 - 1).float().to(device)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-image choice: a[i] where mask[i], else b[i]."""
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _check(x: Tensor, rgb: bool = False) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augmentations expect a float batch (B, C, H, W) in [0, 1], got "
                         f"{x.dtype} of shape {tuple(x.shape)}; convert with x.float() / 255")
    if rgb and x.shape[1] != 3:
        raise ValueError(f"this colour transform needs 3 (RGB) channels, got {x.shape[1]}")


# --------------------------------------------------------------------------- pixel helpers
def _blend(img: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: factor 0 gives ``degenerate``, 1 the image, >1 extrapolates."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (img - degenerate)).clamp(0, 1)


def to_grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma (as PIL's "L" mode), repeated over the 3 channels."""
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return luma.unsqueeze(1).expand_as(x)


def rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # The six sectors of the hue circle, each a different arrangement of (v, p, q, t).
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i.unsqueeze(1))
    g = torch.stack([t, v, v, q, p, p], 1).gather(1, i.unsqueeze(1))
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i.unsqueeze(1))
    return torch.cat([r, g, b], 1)


def _affine(x: Tensor, matrix: Tensor, shift: Tensor, fill: float) -> Tensor:
    """Resample each image at ``matrix @ p + shift`` (pixel units, origin at the image centre).

    The matrices map *output* pixels to *input* pixels. Points that fall outside the
    input get ``fill``: an extra all-ones channel is resampled alongside and tells how
    much of each output pixel came from inside the image.
    """
    B, C, H, W = x.shape
    scale = torch.tensor([W / 2, H / 2], device=x.device, dtype=x.dtype)
    # grid_sample works in [-1, 1] coordinates: conjugate the pixel map by that scaling.
    theta = torch.cat([matrix * scale.view(1, 1, 2) / scale.view(1, 2, 1),
                       (shift / scale).unsqueeze(2)], dim=2)
    grid = F.affine_grid(theta, [B, C + 1, H, W], align_corners=False)
    with_ones = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    out = F.grid_sample(with_ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = out[:, C:]
    return out[:, :C] + (1 - inside) * fill


# --------------------------------------------------------------------------- transforms
class Compose:
    """Apply transforms in order. With ``seed``, it owns a generator (same seed, same output)."""

    def __init__(self, transforms: Sequence[Callable[..., Tensor]], seed: int | None = None) -> None:
        self.transforms = list(transforms)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x)
        generator = generator if generator is not None else self.generator
        for t in self.transforms:
            x = t(x, generator)
        return x


class Normalize:
    """(x - mean) / std per channel; deterministic, usually last."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)


class RandomCrop:
    """Pad by ``padding`` on each side, then crop ``size`` at a random place (CIFAR's standard)."""

    def __init__(self, size: int | tuple[int, int] | None = None, padding: int = 4,
                 padding_mode: str = "reflect", fill: float = 0.0) -> None:
        if padding_mode not in ("reflect", "constant", "replicate"):
            raise ValueError(f"padding_mode must be reflect, constant or replicate, got {padding_mode!r}")
        self.size = (size, size) if isinstance(size, int) else size
        self.padding, self.padding_mode, self.fill = padding, padding_mode, fill

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x)
        B, C, H, W = x.shape
        h, w = self.size or (H, W)
        p = self.padding
        padded = F.pad(x, (p, p, p, p), mode=self.padding_mode,
                       **({"value": self.fill} if self.padding_mode == "constant" else {}))
        if h > H + 2 * p or w > W + 2 * p:
            raise ValueError(f"crop {h}x{w} is larger than the padded image {H + 2 * p}x{W + 2 * p}")
        top = torch.randint(0, H + 2 * p - h + 1, (B,), generator=generator).to(x.device)
        left = torch.randint(0, W + 2 * p - w + 1, (B,), generator=generator).to(x.device)
        rows = top[:, None] + torch.arange(h, device=x.device)   # (B, h)
        cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
        batch = torch.arange(B, device=x.device)[:, None, None]
        # Advanced indexing picks each image's own window: result (B, h, w, C).
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        return _where(_coin(x.shape[0], self.p, generator, x.device), x.flip(3), x)


class RandomResizedCrop:
    """Crop a random area fraction (``scale``) and aspect ratio, resize to ``size`` (bilinear).

    As torchvision: up to 10 tries per image for a box that fits, else the whole image.
    """

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size = (size, size) if isinstance(size, int) else size
        self.scale, self.ratio = scale, ratio

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x)
        B, C, H, W = x.shape
        tries = 10
        area = H * W * (torch.rand(B, tries, generator=generator) * (self.scale[1] - self.scale[0]) + self.scale[0])
        log_r = torch.rand(B, tries, generator=generator) * math.log(self.ratio[1] / self.ratio[0]) \
            + math.log(self.ratio[0])
        w = torch.sqrt(area * torch.exp(log_r)).round()
        h = torch.sqrt(area / torch.exp(log_r)).round()
        fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
        first = fits.float().argmax(1)  # index of the first fitting try (0 if none fits)
        w = torch.where(fits.any(1), w.gather(1, first[:, None])[:, 0], torch.full((B,), float(W)))
        h = torch.where(fits.any(1), h.gather(1, first[:, None])[:, 0], torch.full((B,), float(H)))
        top = torch.floor(torch.rand(B, generator=generator) * (H - h + 1))
        left = torch.floor(torch.rand(B, generator=generator) * (W - w + 1))
        # The crop box as an affine map of [-1, 1] output coordinates into the input.
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w / W, (2 * left + w) / W - 1
        theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * top + h) / H - 1
        grid = F.affine_grid(theta.to(x), [B, C, *self.size], align_corners=False)
        # Sample no further out than the box's outer pixel centres, so pixels outside the
        # box never bleed in: the same as cropping first and then resizing.
        lo = torch.stack([(2 * left + 1) / W - 1, (2 * top + 1) / H - 1], 1).to(x).view(B, 1, 1, 2)
        hi = torch.stack([(2 * (left + w) - 1) / W - 1, (2 * (top + h) - 1) / H - 1], 1).to(x).view(B, 1, 1, 2)
        grid = torch.minimum(torch.maximum(grid, lo), hi)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ColorJitter:
    """Random brightness, contrast, saturation (factors in [1-a, 1+a]) and hue shift in [-hue, hue].

    Applied with probability ``p`` per image, in this fixed order (torchvision shuffles the order).
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 1.0) -> None:
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of the colour circle), got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x, rgb=True)
        B, dev = x.shape[0], x.device
        b = _uniform(B, max(0.0, 1 - self.brightness), 1 + self.brightness, generator, dev)
        c = _uniform(B, max(0.0, 1 - self.contrast), 1 + self.contrast, generator, dev)
        s = _uniform(B, max(0.0, 1 - self.saturation), 1 + self.saturation, generator, dev)
        hshift = _uniform(B, -self.hue, self.hue, generator, dev)
        apply = _coin(B, self.p, generator, dev)
        out = x
        if self.brightness > 0:
            out = _blend(out, torch.zeros_like(out), b)
        if self.contrast > 0:
            out = _blend(out, to_grayscale(out).mean((1, 2, 3), keepdim=True).expand_as(out), c)
        if self.saturation > 0:
            out = _blend(out, to_grayscale(out), s)
        if self.hue > 0:
            hsv = rgb_to_hsv(out)
            hsv = torch.stack([(hsv[:, 0] + hshift.view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
            out = hsv_to_rgb(hsv)
        return _where(apply, out, x)


class RandomGrayscale:
    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x, rgb=True)
        return _where(_coin(x.shape[0], self.p, generator, x.device), to_grayscale(x), x)


class GaussianBlur:
    """Blur with a per-image sigma drawn from ``sigma``; separable kernel, reflect padding."""

    def __init__(self, kernel_size: int, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size, self.sigma, self.p = kernel_size, sigma, p

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x)
        B, C, H, W = x.shape
        sigma = _uniform(B, *self.sigma, generator, x.device)
        apply = _coin(B, self.p, generator, x.device)
        k = self.kernel_size
        t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        kernel = torch.exp(-t[None] ** 2 / (2 * sigma[:, None].to(x.dtype) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, k)
        # One grouped convolution blurs every channel of every image with its own kernel.
        flat = F.pad(x.reshape(1, B * C, H, W), (k // 2,) * 4, mode="reflect")
        flat = F.conv2d(flat, kernel.view(B * C, 1, 1, k), groups=B * C)
        flat = F.conv2d(flat, kernel.view(B * C, 1, k, 1), groups=B * C)
        return _where(apply, flat.view(B, C, H, W), x)


class Cutout:
    """Fill one square per image (side ``size`` pixels, or that fraction of the image side).

    The centre is uniform over the image, so the square may be clipped at a border
    (DeVries & Taylor, 2017). FixMatch fills with grey (0.5).
    """

    def __init__(self, size: int | float = 0.5, fill: float = 0.5, p: float = 1.0) -> None:
        self.size, self.fill, self.p = size, fill, p

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x)
        B, C, H, W = x.shape
        side = self.size if isinstance(self.size, int) else max(1, round(self.size * min(H, W)))
        cy = torch.randint(0, H, (B,), generator=generator).to(x.device)
        cx = torch.randint(0, W, (B,), generator=generator).to(x.device)
        apply = _coin(B, self.p, generator, x.device)
        ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
        in_rows = (ys[None] >= (cy - side // 2)[:, None]) & (ys[None] < (cy - side // 2 + side)[:, None])
        in_cols = (xs[None] >= (cx - side // 2)[:, None]) & (xs[None] < (cx - side // 2 + side)[:, None])
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]).unsqueeze(1)
        return x.masked_fill(mask, self.fill)


# --------------------------------------------------------------------------- RandAugment
def _autocontrast(x: Tensor, m: Tensor, s: Tensor) -> Tensor:
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)


def _equalize(x: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """Histogram equalisation per image and channel on 256 levels, as PIL's ImageOps."""
    B, C, H, W = x.shape
    levels = (x * 255).round().long().clamp(0, 255).flatten(2)  # (B, C, H*W)
    hist = torch.zeros(B, C, 256, device=x.device).scatter_add_(2, levels, torch.ones_like(levels, dtype=torch.float))
    cdf = hist.cumsum(2)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(2, keepdim=True)
    denom = H * W - cdf_min
    lut = ((cdf - cdf_min) / denom.clamp_min(1) * 255).round().clamp(0, 255) / 255
    out = lut.gather(2, levels).view(B, C, H, W).to(x.dtype)
    return torch.where((denom > 0).view(B, C, 1, 1), out, x)  # a one-colour channel stays as it is


def _posterize(x: Tensor, m: Tensor, s: Tensor) -> Tensor:
    shift = (m * 4).round().long().view(-1, 1, 1, 1)  # keep 8 down to 4 bits
    return (((x * 255).round().long() >> shift) << shift).to(x.dtype) / 255


def _solarize(x: Tensor, m: Tensor, s: Tensor) -> Tensor:
    threshold = (1 - m).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 1 - x, x)


def _enhance(degenerate: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda x, m, s: _blend(x, degenerate(x), 1 + 0.9 * m * s)  # factor in [0.1, 1.9]


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH filter (the 'degenerate' image of Sharpness)."""
    kernel = torch.tensor([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], device=x.device, dtype=x.dtype) / 13
    C = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(C, 1, 3, 3), groups=C)


def _geometric(kind: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def op(x: Tensor, m: Tensor, s: Tensor, fill: float = 0.5) -> Tensor:
        B, _, H, W = x.shape
        eye = torch.eye(2, device=x.device, dtype=x.dtype).repeat(B, 1, 1)
        shift = torch.zeros(B, 2, device=x.device, dtype=x.dtype)
        v = (m * s).to(x.dtype)
        if kind == "rotate":  # up to 30 degrees
            a = v * math.radians(30)
            eye = torch.stack([torch.stack([a.cos(), -a.sin()], 1), torch.stack([a.sin(), a.cos()], 1)], 1)
        elif kind == "shear_x":
            eye[:, 0, 1] = 0.3 * v
        elif kind == "shear_y":
            eye[:, 1, 0] = 0.3 * v
        elif kind == "translate_x":  # up to 30% of the width
            shift[:, 0] = 0.3 * W * v
        elif kind == "translate_y":
            shift[:, 1] = 0.3 * H * v
        return _affine(x, eye, shift, fill)
    return op


RANDAUGMENT_OPS: dict[str, Callable[..., Tensor]] = {
    "identity": lambda x, m, s: x,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "solarize": _solarize,
    "brightness": _enhance(torch.zeros_like),
    "contrast": _enhance(lambda x: to_grayscale(x).mean((1, 2, 3), keepdim=True).expand_as(x)),
    "color": _enhance(to_grayscale),
    "sharpness": _enhance(_smooth),
    "rotate": _geometric("rotate"),
    "shear_x": _geometric("shear_x"),
    "shear_y": _geometric("shear_y"),
    "translate_x": _geometric("translate_x"),
    "translate_y": _geometric("translate_y"),
}


class RandAugment:
    """RandAugment as in FixMatch: each image gets ``num_ops`` operations picked at random,
    each with its own magnitude drawn from [0, ``magnitude``] (``fixed_magnitude`` to
    use exactly that). Operations are in ``RANDAUGMENT_OPS``; magnitude 1 is the
    strongest (30 degree rotation, 0.3 shear, 30% translation, factors 0.1 or 1.9).
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 1.0, fixed_magnitude: bool = False,
                 ops: Sequence[str] | None = None) -> None:
        self.ops = list(ops or RANDAUGMENT_OPS)
        unknown = [o for o in self.ops if o not in RANDAUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; choose from {sorted(RANDAUGMENT_OPS)}")
        if not 0 <= magnitude <= 1:
            raise ValueError(f"magnitude must be in [0, 1], got {magnitude}")
        self.num_ops, self.magnitude, self.fixed_magnitude = num_ops, magnitude, fixed_magnitude

    def __call__(self, x: Tensor, generator: Generator = None) -> Tensor:
        _check(x, rgb=True)
        B = x.shape[0]
        for _ in range(self.num_ops):
            # Draw everything first, so the random stream does not depend on which ops ran.
            choice = torch.randint(0, len(self.ops), (B,), generator=generator).to(x.device)
            m = torch.full((B,), self.magnitude) if self.fixed_magnitude else \
                _uniform(B, 0.0, self.magnitude, generator, torch.device("cpu"))
            m, s = m.to(x.device), _sign(B, generator, x.device)
            out = x.clone()
            for j, name in enumerate(self.ops):
                idx = (choice == j).nonzero().flatten()
                if idx.numel():
                    out[idx] = RANDAUGMENT_OPS[name](x[idx], m[idx], s[idx]).to(x.dtype)
            x = out
        return x


class TrivialAugment(RandAugment):
    """TrivialAugment (Mueller & Hutter, 2021) from the same operations as RandAugment:
    one operation per image, at a magnitude drawn uniformly from the whole range."""

    def __init__(self, ops: Sequence[str] | None = None) -> None:
        super().__init__(num_ops=1, magnitude=1.0, ops=ops)
