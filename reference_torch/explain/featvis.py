"""Feature visualisation: images that a channel or a class responds to most.

Gradient ascent on the input (Erhan et al. 2009; Olah et al. 2017, "Feature
Visualization"), split as in lucid/lucent into three parts:

    parameterisation  how the image is made from the numbers being optimised:
                      ``PixelImage`` (one number per pixel) or ``FourierImage``
                      (a spectrum scaled down at high frequencies, with decorrelated
                      colours: the optimiser then finds smooth, natural-looking images)
    transforms        random shift, scale and rotation of every image at every step
                      (``RandomTransforms``); a pattern must survive all of them, which
                      rules out pixel-exact adversarial noise
    objective         what to maximise: ``channel(layer, c)``, ``neuron(layer, c)``,
                      ``class_logit(k)``; a list of indices makes a batch of images,
                      one per index, optimised together

    result = visualize(model, channel("layer3", range(8)), size=64, steps=256)
    result.images   # (8, 3, 64, 64) in [0, 1]

The model takes pixel-space input in [0, 1]: wrap a model trained on normalised data as
``nn.Sequential(Normalize(mean, std), model)`` (``explain.adversarial.Normalize``).

Small images. lucent's defaults are tuned for 224-pixel ImageNet models: transforms of
a fixed number of pixels (8-pixel jitter, 12-pixel padding) wipe out a 32-pixel image.
Here every transform is a fixed *share* of the image size, and the Fourier spectrum's
scale is normalised so that pixels move about as much per step at any size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._common import inspecting
from .activations import capture

# Square root of ImageNet's colour covariance (from lucid), scaled so that its largest
# column has length 1. Optimising in these decorrelated colour axes and mixing them back
# gives colours with natural statistics instead of saturated primaries.
_COLOR_SQRT_COV = torch.tensor([[0.26, 0.09, 0.02],
                                [0.27, 0.00, -0.05],
                                [0.27, -0.09, 0.03]])
_COLOR_SQRT_COV = _COLOR_SQRT_COV / _COLOR_SQRT_COV.norm(dim=0).max()


def _to_rgb(t: Tensor, decorrelate: bool) -> Tensor:
    """Unbounded (N, C, H, W) -> image in [0, 1]: mix colours (3 channels), then sigmoid."""
    if decorrelate and t.shape[1] == 3:
        t = torch.einsum("dc,nchw->ndhw", _COLOR_SQRT_COV.to(t), t)
    return torch.sigmoid(t)


# --------------------------------------------------------------------------- parameterisations
class PixelImage(nn.Module):
    """One free number per pixel and channel: the simplest and noisiest parameterisation.
    Pair it with a total-variation penalty (``visualize(..., tv_weight=...)``)."""

    def __init__(self, n: int, channels: int, size: tuple[int, int], decorrelate: bool = True,
                 sd: float = 0.01, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.decorrelate = decorrelate
        self.pixels = nn.Parameter(torch.randn(n, channels, *size, generator=generator) * sd)

    def forward(self) -> Tensor:
        return _to_rgb(self.pixels, self.decorrelate)


class FourierImage(nn.Module):
    """The image's 2-D spectrum is optimised, each frequency f scaled by 1 / f.

    Natural images have about that spectrum, so equal steps on every coefficient give
    images with natural statistics; high-frequency noise needs large coefficients and
    stays small (a built-in frequency penalty). The scales are normalised to mean square
    one, so that the image's pixels have the same spread at any size (lucent's are not,
    one reason its defaults suit 224-pixel images better than 32-pixel ones).
    """

    def __init__(self, n: int, channels: int, size: tuple[int, int], decorrelate: bool = True,
                 sd: float = 0.01, decay_power: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        h, w = size
        self.size, self.decorrelate = (h, w), decorrelate
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freqs = torch.sqrt(fx ** 2 + fy ** 2)
        scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power  # the constant term gets the lowest f's scale
        self.register_buffer("scale", scale / scale.pow(2).mean().sqrt())
        self.spectrum = nn.Parameter(torch.randn(n, channels, *freqs.shape, 2, generator=generator) * sd)

    def forward(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return _to_rgb(image, self.decorrelate)


PARAMETERISATIONS = {"pixel": PixelImage, "fourier": FourierImage}


# --------------------------------------------------------------------------- transforms
class RandomTransforms:
    """A random shift, scale and rotation per image, done as one bilinear resampling.

    ``shift``: largest shift as a share of the image side (0.06: 2 pixels at 32, 13 at
    224); ``scale``: range of zoom factors; ``degrees``: largest rotation. What moves in
    from outside the image is ``fill`` grey, which is lucid's padding: the image's own
    border is then not special. ``pad`` (a share of the side) additionally enlarges the
    canvas the model sees, for models that accept any input size (ResNets); keep it 0
    for models with a fixed input size.
    """

    def __init__(self, shift: float = 0.06, scale: tuple[float, float] = (0.9, 1.1), degrees: float = 10.0,
                 pad: float = 0.0, fill: float = 0.5) -> None:
        if shift < 0 or pad < 0 or degrees < 0 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"need shift, pad, degrees >= 0 and 0 < scale[0] <= scale[1], got shift={shift}, "
                             f"pad={pad}, degrees={degrees}, scale={scale}")
        self.shift, self.scale, self.degrees, self.pad, self.fill = shift, scale, degrees, pad, fill

    def __repr__(self) -> str:
        return (f"RandomTransforms(shift={self.shift}, scale={self.scale}, degrees={self.degrees}, "
                f"pad={self.pad}, fill={self.fill})")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, c, h, w = x.shape
        out_h, out_w = h + 2 * round(self.pad * h), w + 2 * round(self.pad * w)

        def uniform(low: float, high: float) -> Tensor:
            return (torch.rand(n, generator=generator) * (high - low) + low).to(x)

        angle = uniform(-self.degrees, self.degrees) * math.pi / 180
        zoom = uniform(*self.scale)
        # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos * out_w / w, -sin * out_h / w, 2 * uniform(-self.shift, self.shift)], 1),
                             torch.stack([sin * out_w / h, cos * out_h / h, 2 * uniform(-self.shift, self.shift)], 1)],
                            1)
        grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
        # resample x - fill with zeros outside, so that outside becomes ``fill`` again
        return F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + self.fill


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels per image, (N,): a frequency penalty."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3)))


# --------------------------------------------------------------------------- objectives
@dataclass
class Objective:
    """Maximise, for image i, unit ``indices[i]`` of ``layer`` (None: the model's output).

    ``where``: "mean" averages a channel over all positions; "center" takes the middle
    position only (one neuron, whose receptive field is centred on the image)."""
    layer: str | None
    indices: list[int]
    where: str = "mean"

    def __call__(self, activation: Tensor) -> Tensor:
        if activation.shape[0] != len(self.indices):
            raise ValueError(f"objective has {len(self.indices)} indices for {activation.shape[0]} images")
        if max(self.indices) >= activation.shape[1]:
            raise ValueError(f"index {max(self.indices)} is out of range: {self.layer or 'the output'} has "
                             f"{activation.shape[1]} channels")
        # image i's unit indices[i], kept as a unit axis of size 1: (N, 1) or (N, 1, h, w)
        return self._reduce(activation[torch.arange(len(self.indices)), self.indices].unsqueeze(1))[:, 0]

    def per_unit(self, activation: Tensor) -> Tensor:
        """(N, units): every image's score on every unit of ``indices``."""
        return self._reduce(activation[:, self.indices])

    def _reduce(self, picked: Tensor) -> Tensor:  # (N, U) or (N, U, h, w) -> (N, U)
        if picked.dim() == 2:
            return picked
        if self.where == "center":
            return picked[:, :, picked.shape[2] // 2, picked.shape[3] // 2]
        return picked.flatten(2).mean(2)


def _indices(index: int | Sequence[int]) -> list[int]:
    indices = [int(index)] if isinstance(index, int) else [int(i) for i in index]
    if not indices or min(indices) < 0:
        raise ValueError(f"indices must be non-negative and at least one, got {index!r}")
    return indices


def channel(layer: str, index: int | Sequence[int]) -> Objective:
    """Mean activation of channel(s) ``index`` of ``layer`` (dotted name), one image each.

    Prefer a conv layer's own output to the ReLU after it: a ReLU channel that is zero
    everywhere on the grey starting image has zero gradient and never starts to grow."""
    return Objective(layer, _indices(index), "mean")


def neuron(layer: str, index: int | Sequence[int]) -> Objective:
    """Activation of channel(s) ``index`` of ``layer`` at the centre position only."""
    return Objective(layer, _indices(index), "center")


def class_logit(index: int | Sequence[int]) -> Objective:
    """The logit (not the probability: raising it cannot be done by lowering the other
    classes, Simonyan et al. 2014) of class(es) ``index``."""
    return Objective(None, _indices(index), "mean")


# --------------------------------------------------------------------------- the loop
@dataclass
class Visualization:
    """images (N, C, H, W) in [0, 1]; scores (N,) objective on the final images without
    transforms; history (steps,) the mean objective during the optimisation."""
    images: Tensor
    scores: Tensor
    history: Tensor


def objective_value(model: nn.Module, objective: Objective, images: Tensor) -> Tensor:
    """The objective's score (one per image) on ``images`` as they are: no transforms.
    Compare like with like: with ``RandomTransforms(pad>0)`` the images were optimised
    inside a larger padded frame, so this unpadded score is a different objective."""
    return objective(_activation(model, objective.layer, images))


def _activation(model: nn.Module, layer: str | None, images: Tensor) -> Tensor:
    """The output of ``layer`` (None: of the model) for ``images``."""
    if layer is None:
        return model(images)
    with capture(model, [layer]) as (record,):
        model(images)
    return record.value


def visualize(model: nn.Module, objective: Objective, size: int | tuple[int, int] = 32, *, channels: int = 3,
              steps: int = 256, lr: float = 0.05, param: str = "fourier", decorrelate: bool = True,
              transforms: RandomTransforms | None = RandomTransforms(), tv_weight: float = 0.0,
              seed: int = 0) -> Visualization:
    """Images that maximise ``objective`` by gradient ascent (Adam, ``lr``) for ``steps``.

    ``param``: "fourier" (default) or "pixel"; ``transforms``: a ``RandomTransforms``,
    or None for none; ``tv_weight`` adds a total-variation penalty (useful with "pixel").
    ``seed`` fixes the starting image and the random transforms.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if param not in PARAMETERISATIONS:
        raise ValueError(f"param must be one of {sorted(PARAMETERISATIONS)}, got {param!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    image = PARAMETERISATIONS[param](len(objective.indices), channels, size, decorrelate,
                                     generator=generator).to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)
    history = torch.empty(steps)
    with inspecting(model):
        for i in tqdm(range(steps), desc="feature visualisation", leave=False, disable=None):
            x = image()
            seen = transforms(x, generator) if transforms is not None else x
            score = objective_value(model, objective, seen)
            loss = -score.sum() + tv_weight * total_variation(x).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history[i] = score.detach().mean()
        with torch.no_grad():
            images = image()
            scores = objective_value(model, objective, images)
    return Visualization(images.detach(), scores.detach(), history)


# --------------------------------------------------------------------------- what to compare with
def transform_robustness(model: nn.Module, objective: Objective, images: Tensor, seed: int = 0,
                         repeats: int = 8) -> Tensor:
    """The mean objective of ``images`` under ``repeats`` random shifts, zooms and rotations
    (``RandomTransforms()``, seeded): how much of a visualisation's score is a robust
    pattern rather than pixel-exact noise that a one-pixel shift destroys."""
    generator, jitter = torch.Generator().manual_seed(seed), RandomTransforms()
    with inspecting(model), torch.no_grad():
        return torch.stack([objective_value(model, objective, jitter(images, generator))
                            for _ in range(repeats)]).mean(0)


def dataset_examples(model: nn.Module, objective: Objective, images: Tensor,
                     batch_size: int = 250) -> tuple[Tensor, Tensor, Tensor]:
    """The 'dataset examples' of Olah et al.: for each unit of ``objective``, the best score
    that one of ``images`` reaches, that image's index, and the scores' standard deviation
    over the images (the scale a visualisation's gain is worth measuring in)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with inspecting(model), torch.no_grad():
        scores = torch.cat([objective.per_unit(_activation(model, objective.layer, torch.as_tensor(
            images[i:i + batch_size], device=device))) for i in range(0, len(images), batch_size)])
    best, index = scores.max(0)
    return best, index, scores.std(0)
