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

What a visualisation is compared with: ``dataset_examples`` (the test image that excites
each unit most), ``class_examples`` (each class's clearest own image). The building blocks
of Olah et al. (2018, "The Building Blocks of Interpretability") for one image at one
layer: ``gradient_x_activation`` (what each position adds to a logit),
``strongest_channels`` (a semantic dictionary), ``nmf`` and ``neuron_groups`` (the
activations factorised into a few groups of channels, each attributed to the classes);
``direction(layer, vectors)`` visualises a group's mix of channels.

The model takes pixel-space input in [0, 1]: wrap a model trained on normalised data as
``nn.Sequential(Normalize(mean, std), model)`` (``explain.adversarial.Normalize``).

Small images. lucent's defaults are tuned for 224-pixel ImageNet models: transforms of
a fixed number of pixels (8-pixel jitter, 12-pixel padding) wipe out a 32-pixel image.
Here every transform is a fixed *share* of the image size, and the Fourier spectrum's
scale is normalised so that pixels move about as much per step at any size. Colours are
best mixed by the model's own training images (``color_correlation``): ImageNet's
correlation keeps a detector of saturated colours from reaching its colour.
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
from .attribution import _layer_gradients

# Square root of ImageNet's colour covariance (from lucid), scaled so that its largest
# column has length 1. Optimising in these decorrelated colour axes and mixing them back
# gives colours with natural statistics instead of saturated primaries.
_COLOR_SQRT_COV = torch.tensor([[0.26, 0.09, 0.02],
                                [0.27, 0.00, -0.05],
                                [0.27, -0.09, 0.03]])
_COLOR_SQRT_COV = _COLOR_SQRT_COV / _COLOR_SQRT_COV.norm(dim=0).max()


def color_correlation(images: Tensor) -> Tensor:
    """The square root of the colour covariance of ``images`` (N, 3, H, W), scaled like
    ImageNet's (largest column of length 1): the colour mixing that matches a dataset.
    ImageNet's mixes colours towards greys and browns; for a dataset of saturated colours
    it keeps visualisations washed out, even where a saturated colour is the answer."""
    pixels = torch.as_tensor(images, dtype=torch.float64).transpose(0, 1).flatten(1)  # (3, pixels)
    values, vectors = torch.linalg.eigh(torch.cov(pixels))
    root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    return (root / root.norm(dim=0).max()).float()


def _to_rgb(t: Tensor, decorrelate: bool | Tensor) -> Tensor:
    """Unbounded (N, C, H, W) -> image in [0, 1]: mix colours (3 channels), then sigmoid.
    ``decorrelate``: True mixes with ImageNet's colour correlation, a (3, 3) tensor with
    that one (``color_correlation``), False not at all."""
    mixing = _COLOR_SQRT_COV if decorrelate is True else decorrelate
    if isinstance(mixing, Tensor) and t.shape[1] == 3:
        t = torch.einsum("dc,nchw->ndhw", mixing.to(t), t)
    return torch.sigmoid(t)


# --------------------------------------------------------------------------- parameterisations
class PixelImage(nn.Module):
    """One free number per pixel and channel: the simplest and noisiest parameterisation.
    Pair it with a total-variation penalty (``visualize(..., tv_weight=...)``)."""

    def __init__(self, n: int, channels: int, size: tuple[int, int], decorrelate: bool | Tensor = True,
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

    def __init__(self, n: int, channels: int, size: tuple[int, int], decorrelate: bool | Tensor = True,
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
    position only (one neuron, whose receptive field is centred on the image).
    ``directions`` (U, C), if given, makes unit i the activation projected on
    ``directions[i]`` (a mix of channels, like a neuron group's) instead of channel
    ``indices[i]``; ``indices`` then only number the units."""
    layer: str | None
    indices: list[int]
    where: str = "mean"
    directions: Tensor | None = None

    def __call__(self, activation: Tensor) -> Tensor:
        if activation.shape[0] != len(self.indices):
            raise ValueError(f"objective has {len(self.indices)} indices for {activation.shape[0]} images")
        self._check(activation)
        if self.directions is None:  # image i's unit indices[i]: (N,) or (N, h, w)
            own = activation[torch.arange(len(self.indices)), self.indices]
        else:
            own = torch.einsum("nc...,nc->n...", activation, self.directions.to(activation))
        return self._reduce(own.unsqueeze(1))[:, 0]

    def per_unit(self, activation: Tensor) -> Tensor:
        """(N, units): every image's score on every unit of ``indices``."""
        self._check(activation)
        if self.directions is None:
            return self._reduce(activation[:, self.indices])
        return self._reduce(torch.einsum("nc...,uc->nu...", activation, self.directions.to(activation)))

    def _check(self, activation: Tensor) -> None:
        where = self.layer or "the output"
        if self.directions is not None and self.directions.shape[1] != activation.shape[1]:
            raise ValueError(f"directions have {self.directions.shape[1]} channels, {where} has "
                             f"{activation.shape[1]}")
        if self.directions is None and max(self.indices) >= activation.shape[1]:
            raise ValueError(f"index {max(self.indices)} is out of range: {where} has "
                             f"{activation.shape[1]} channels")

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


def direction(layer: str, vectors: Tensor) -> Objective:
    """Mean over positions of ``layer``'s activation projected on each row of ``vectors``
    (U, C), one image each: what a mix of channels (a neuron group) responds to."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    if vectors.dim() != 2 or len(vectors) == 0:
        raise ValueError(f"directions must be a (units, channels) matrix, got shape {tuple(vectors.shape)}")
    return Objective(layer, list(range(len(vectors))), "mean", vectors)


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
              steps: int = 256, lr: float = 0.05, param: str = "fourier", decorrelate: bool | Tensor = True,
              transforms: RandomTransforms | None = RandomTransforms(), tv_weight: float = 0.0,
              sd: float = 0.01, seed: int = 0) -> Visualization:
    """Images that maximise ``objective`` by gradient ascent (Adam, ``lr``) for ``steps``.

    ``param``: "fourier" (default) or "pixel"; ``transforms``: a ``RandomTransforms``,
    or None for none; ``tv_weight`` adds a total-variation penalty (useful with "pixel").
    ``decorrelate``: True (ImageNet's colour correlation), a (3, 3) matrix
    (``color_correlation`` of the model's training images) or False. ``sd``: the spread
    of the random start around grey; ``seed`` fixes it and the random transforms.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if param not in PARAMETERISATIONS:
        raise ValueError(f"param must be one of {sorted(PARAMETERISATIONS)}, got {param!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    image = PARAMETERISATIONS[param](len(objective.indices), channels, size, decorrelate, sd=sd,
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


def class_examples(model: nn.Module, images: Tensor, labels: Sequence[int], classes: Sequence[int],
                   batch_size: int = 250) -> tuple[Tensor, Tensor]:
    """For each class k of ``classes``, the image of class k (``labels == k``) that the model
    holds most clearly to be a k: the largest margin, logit k minus the largest other
    logit. Returns the indices into ``images`` and the margins. (The largest raw logit is
    no choice: an image with large activations everywhere has large logits for several
    classes, and one such image can top the list of classes it does not belong to.)"""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    labels = torch.as_tensor(labels).reshape(-1)
    with inspecting(model), torch.no_grad():
        logits = torch.cat([model(torch.as_tensor(images[i:i + batch_size], device=device)).cpu()
                            for i in range(0, len(images), batch_size)])
    indices, margins = [], []
    for k in classes:
        own = torch.nonzero(labels == k).flatten()
        if len(own) == 0:
            raise ValueError(f"no image of class {k} among the {len(images)} images")
        others = logits[own].clone()
        others[:, k] = -torch.inf
        margin = logits[own, k] - others.max(1).values
        indices.append(int(own[margin.argmax()]))
        margins.append(float(margin.max()))
    return torch.tensor(indices), torch.tensor(margins)


# --------------------------------------------------------------------------- one image, one layer: the building blocks
def layer_gradients(model: nn.Module, layer: str, image: Tensor) -> tuple[Tensor, Tensor]:
    """For one image (C, H, W): ``layer``'s activation (C', h, w) and the gradient of every
    class logit with respect to it (classes, C', h, w)."""
    with inspecting(model), capture(model, [layer], as_leaf=True) as (record,):
        logits = model(image[None])[0]
        grads = torch.stack([torch.autograd.grad(logit, record.value, retain_graph=True)[0][0]
                             for logit in logits])
    return record.value.detach()[0], grads


def gradient_x_activation(model: nn.Module, layer: str, x: Tensor, target: Sequence[int],
                          batch_size: int = 64) -> Tensor:
    """(B, h, w): per position, the activation of ``layer`` times the gradient of the class
    ``target[i]``'s logit, summed over channels: how much each position adds to the logit
    (a first-order estimate; exact, up to the bias, where only ReLUs, max-pooling and
    linear layers follow). The gradient alone, at a layer that a linear head follows, is
    that head's weights routed through the pooling: it depends on the image only through
    which position of each pooling window wins."""
    target = torch.as_tensor(target, device=x.device).long().reshape(-1)
    with inspecting(model):
        activation, grads = _layer_gradients(model, layer, x.detach(), target, batch_size)
    return (activation * grads).sum(1)


def strongest_channels(activation: Tensor, count: int, position: tuple[int, int] | None = None
                       ) -> tuple[tuple[int, int], Tensor, Tensor]:
    """The semantic dictionary of Olah et al. (2018, "The Building Blocks of
    Interpretability") at one position of one image's activation (C, h, w): the ``count``
    channels that are largest there. ``position`` (row, column) defaults to where the
    activations' sum is largest. Returns the position, the channels and their values."""
    if position is None:
        flat = int(activation.sum(0).argmax())
        position = (flat // activation.shape[2], flat % activation.shape[2])
    values, channels = activation[:, position[0], position[1]].topk(min(count, activation.shape[0]))
    return position, channels, values


def nmf(matrix: Tensor, groups: int, steps: int = 500, seed: int = 0, eps: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Non-negative matrix factorisation: ``matrix`` (n, m) >= 0 ~ W (n, groups) @ H (groups, m)
    with W, H >= 0, by Lee and Seung's (2001) multiplicative updates for the squared error.

    Each update multiplies a factor by (what the data asks for) / (what the factors give),
    a ratio of non-negative numbers: the factors stay non-negative, and the error never
    grows. The rows of H are scaled to length one (W takes the scale), and the groups are
    sorted by their share of the matrix (the sum of their column of W), largest first."""
    if (matrix < 0).any():
        raise ValueError("nmf needs a non-negative matrix (activations after a ReLU)")
    matrix = matrix.double()
    generator = torch.Generator().manual_seed(seed)
    scale = (matrix.mean() / groups).sqrt()
    w = torch.rand(matrix.shape[0], groups, generator=generator, dtype=matrix.dtype).to(matrix) * scale
    h = torch.rand(groups, matrix.shape[1], generator=generator, dtype=matrix.dtype).to(matrix) * scale
    for _ in range(steps):
        h = h * (w.T @ matrix) / (w.T @ w @ h + eps)
        w = w * (matrix @ h.T) / (w @ h @ h.T + eps)
    norms = h.norm(dim=1).clamp(min=eps)
    w, h = w * norms, h / norms[:, None]
    order = w.sum(0).argsort(descending=True)
    return w[:, order].float(), h[order].float()


@dataclass
class NeuronGroups:
    """One image's activation (C, h, w) at one layer as a few groups of channels.

    maps (G, h, w): how strongly each position holds each group; directions (G, C): each
    group's mix of channels (non-negative, length one), so activation ~ sum over g of
    maps[g] x directions[g]; attribution (G, classes): what each group adds to each class
    logit; error: the factorisation's relative error ||A - W H|| / ||A||; best_error: the
    smallest error of any factorisation into as many groups, signs allowed (the SVD's): how
    far from ``groups`` patterns the activation is, whatever the method."""
    maps: Tensor
    directions: Tensor
    attribution: Tensor
    error: float
    best_error: float


def neuron_groups(model: nn.Module, layer: str, image: Tensor, groups: int = 4, steps: int = 500,
                  seed: int = 0) -> NeuronGroups:
    """Neuron groups (Olah et al. 2018): NMF of ``layer``'s activations of one image (C, H, W)
    over its positions (positions x channels ~ maps x directions), and each group's
    attribution to every class logit: gradient x activation with the activation replaced
    by the group's part of it, summed over positions,
    sum over p of maps[g, p] (directions[g] . d logit / d activation[p]).
    Summed over the groups it is the layer's whole gradient x activation, up to the
    factorisation's error."""
    activation, grads = layer_gradients(model, layer, image)
    channels, h, w = activation.shape
    positions = activation.flatten(1).T.cpu()  # (h w, C), one row per position
    maps, directions = nmf(positions, groups, steps, seed)
    error = float((positions - maps @ directions).norm() / positions.norm().clamp(min=1e-12))
    singular = torch.linalg.svdvals(positions.double())
    best_error = float(singular[groups:].pow(2).sum().sqrt() / singular.pow(2).sum().sqrt().clamp(min=1e-12))
    along = torch.einsum("gc,kcp->gkp", directions, grads.flatten(2).cpu())  # gradient along each direction
    attribution = torch.einsum("pg,gkp->gk", maps, along)
    return NeuronGroups(maps.T.reshape(groups, h, w), directions, attribution, error, best_error)
