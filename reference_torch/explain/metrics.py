"""How good is a relevance map? Faithfulness curves and agreement with a true object mask.

Deletion and insertion (Petsiuk et al. 2018, RISE): order the pixels by relevance,
most relevant first, and change them ``step`` at a time, recording the probability of
the explained class after every step.

    deletion   starts from the image and moves pixels to a substrate: a faithful map
               makes the probability fall fast (low AUC)
    insertion  starts from a blurred image (gaussian, sigma 5) and puts the image's
               pixels back: a faithful map makes the probability rise fast (high AUC)

The substrate of deletion: 0 (black, RISE's choice and the default), a number or tensor,
``"blur"`` (the blurred image insertion starts from) or ``"mean"`` (each image's mean
colour). On a small CNN black pixels are far from anything it was trained on: a few
scattered ones change its prediction whatever their order, so every curve, a random
order's too, collapses at the first step and nothing is told apart. A blurred or mean
substrate removes the information of a pixel without adding a strong new signal.

The x axis is the share of pixels changed, 0 to 1, and the area under the curve is
taken with the trapezoid rule. An AUC means little alone, so always put the same curve
for a random pixel order beside it (``relevance="random"``, or ``deletion_insertion``,
which computes all four). All steps of all images run through the model in pieces of
``batch_size`` images, not one forward pass per step.

Ties (Grad-CAM is exactly 0 on much of the image) are broken in a random order drawn
from ``seed``, never by position, which would favour the top rows.

With a ground-truth mask of the object (the ``shapes`` dataset has one per image):
    mask_share     the share of the (positive) relevance mass that falls on the object
    pointing_game  whether the most relevant pixel lies on the object (Zhang et al. 2016)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import Target, check_images, chunks, forward_in_chunks, inspecting, resolve_target


@dataclass
class Curve:
    """fractions (S,) share of pixels changed, 0 ... 1; scores (B, S) probability of the
    target class at each step; auc (B,) area under each image's curve; target (B,)."""
    fractions: Tensor
    scores: Tensor
    auc: Tensor
    target: Tensor

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())

    @property
    def auc_se(self) -> float:
        """Standard error of ``mean_auc`` over the images (0 for a single image)."""
        n = len(self.auc)
        return float(self.auc.double().std() / n ** 0.5) if n > 1 else 0.0


def auc_difference(curve: Curve, baseline: Curve) -> tuple[float, float]:
    """Mean over images of ``curve.auc - baseline.auc`` and its standard error, for two
    curves of the same images (paired: each image is compared with itself, which cancels
    the large spread between easy and hard images)."""
    if curve.auc.shape != baseline.auc.shape:
        raise ValueError(f"the curves must be of the same images, got {len(curve.auc)} and {len(baseline.auc)}")
    difference = (curve.auc - baseline.auc).double()
    n = len(difference)
    return float(difference.mean()), float(difference.std() / n ** 0.5) if n > 1 else 0.0


def auc(fractions: Tensor, scores: Tensor) -> Tensor:
    """Trapezoid area under ``scores`` (..., S) over ``fractions`` (S,) on [0, 1]."""
    fractions = torch.as_tensor(fractions, dtype=torch.float64)
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if fractions[0] != 0 or fractions[-1] != 1:
        raise ValueError(f"fractions must run from 0 to 1, got {float(fractions[0])} ... {float(fractions[-1])}")
    return torch.trapezoid(scores, fractions.to(scores.device), dim=-1)


def gaussian_blur(x: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Separable gaussian blur per channel. RISE's insertion start: sigma 5, 11 taps.
    Borders repeat the edge pixel (RISE pads with zeros, which darkens the border)."""
    if sigma <= 0 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"need sigma > 0 and an odd kernel_size, got sigma={sigma}, kernel_size={kernel_size}")
    B, C, H, W = x.shape
    t = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - kernel_size // 2
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    r = kernel_size // 2
    flat = F.pad(x.reshape(B * C, 1, H, W), (r, r, r, r), mode="replicate")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.view(B, C, H, W)


def _as_maps(relevance, x: Tensor, who: str) -> Tensor:
    relevance = getattr(relevance, "relevance", relevance)  # an Attribution is fine too
    relevance = torch.as_tensor(relevance, device=x.device)
    if relevance.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"{who}: relevance must be (B, H, W) = {(x.shape[0], *x.shape[2:])} to match the "
                         f"images, got {tuple(relevance.shape)}; use Attribution.relevance, not .raw")
    return relevance.float()


def pixel_ranks(relevance, seed: int = 0) -> Tensor:
    """Rank of every pixel, (B, H, W) long: 0 for the most relevant, ties in random order."""
    B, H, W = relevance.shape
    generator = torch.Generator().manual_seed(seed)
    shuffle = torch.argsort(torch.rand(B, H * W, generator=generator), dim=1).to(relevance.device)
    # sort a shuffled copy (stably) so that equal values come out in random order
    order = shuffle.gather(1, torch.argsort(relevance.flatten(1).gather(1, shuffle), dim=1,
                                            descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(H * W, device=order.device).expand(B, -1))
    return ranks.view(B, H, W)


def _curve(model: nn.Module, start: Tensor, end: Tensor, ranks: Tensor, target: Tensor,
           step: int, batch_size: int) -> Curve:
    """Probability of ``target`` while pixels go from ``start`` to ``end`` in rank order."""
    B, _, H, W = start.shape
    n_pixels = H * W
    changed = torch.cat([torch.arange(0, n_pixels, step), torch.tensor([n_pixels])]).to(start.device)
    n_points = len(changed)
    scores = torch.empty(B * n_points, device=start.device)
    with torch.no_grad():
        # number the (image, step) pairs and run them through the model in pieces
        for idx in chunks(B * n_points, batch_size, start.device):
            image, point = idx // n_points, idx % n_points
            moved = ranks[image] < changed[point].view(-1, 1, 1)
            images = torch.where(moved[:, None], end[image], start[image])
            scores[idx] = model(images).softmax(1).gather(1, target[image][:, None])[:, 0].float()
    fractions = changed.double().cpu() / n_pixels
    scores = scores.view(B, n_points).cpu()
    return Curve(fractions, scores, auc(fractions, scores).float(), target.cpu())


def _prepare(model, x, relevance, target, step, seed, batch_size, who):
    x = check_images(x, who)
    if isinstance(relevance, str):
        if relevance != "random":
            raise ValueError(f"{who}: relevance must be a (B, H, W) tensor or 'random', got {relevance!r}")
        relevance = torch.zeros(x.shape[0], *x.shape[2:], device=x.device)  # all ties: a random order
    ranks = pixel_ranks(_as_maps(relevance, x, who), seed)
    step = x.shape[-1] if step is None else int(step)  # one image row per step by default
    if step < 1:
        raise ValueError(f"{who}: step must be a positive number of pixels, got {step}")
    target = resolve_target(target, forward_in_chunks(model, x, batch_size))
    return x, ranks, target, step


SUBSTRATES = ("blur", "mean")  # the named substrates; a number or a tensor is a colour


def substrate_images(x: Tensor, substrate: float | Tensor | str, blur_sigma: float = 5.0) -> Tensor:
    """What deleted pixels become, (B, C, H, W): ``"blur"`` a gaussian blur of ``x``,
    ``"mean"`` each image's mean colour, a number or tensor that colour everywhere."""
    if isinstance(substrate, str):
        if substrate not in SUBSTRATES:
            raise ValueError(f"substrate must be a number, a tensor, 'blur' or 'mean', got {substrate!r}")
        if substrate == "blur":
            return gaussian_blur(x, blur_sigma)
        return x.mean((2, 3), keepdim=True).expand_as(x)
    return torch.as_tensor(substrate, dtype=x.dtype, device=x.device).expand_as(x)


def deletion_curve(model: nn.Module, x: Tensor, relevance: Tensor | str, target: Target = None, *,
                   step: int | None = None, substrate: float | Tensor | str = 0.0, blur_sigma: float = 5.0,
                   seed: int = 0, batch_size: int = 256) -> Curve:
    """Probability of ``target`` (default: the predicted class) as the most relevant
    pixels are set to ``substrate`` (0 = black, ``"blur"``, ``"mean"``: see the module),
    ``step`` pixels (default: one image row) at a time.
    ``relevance``: (B, H, W), an Attribution, or ``"random"`` for the random-order baseline."""
    with inspecting(model):
        x, ranks, target, step = _prepare(model, x, relevance, target, step, seed, batch_size, "deletion_curve")
        return _curve(model, x, substrate_images(x, substrate, blur_sigma), ranks, target, step, batch_size)


def insertion_curve(model: nn.Module, x: Tensor, relevance: Tensor | str, target: Target = None, *,
                    step: int | None = None, blur_sigma: float = 5.0, substrate: Tensor | None = None,
                    seed: int = 0, batch_size: int = 256) -> Curve:
    """Probability of ``target`` (default: the class predicted for the clean image) as the
    most relevant pixels of ``x`` are put into a blurred copy (gaussian ``blur_sigma``),
    or into ``substrate`` when given. ``relevance`` as for ``deletion_curve``."""
    with inspecting(model):
        x, ranks, target, step = _prepare(model, x, relevance, target, step, seed, batch_size, "insertion_curve")
        start = substrate_images(x, "blur" if substrate is None else substrate, blur_sigma)
        return _curve(model, start, x, ranks, target, step, batch_size)


def deletion_insertion(model: nn.Module, x: Tensor, relevance: Tensor, target: Target = None, *,
                       step: int | None = None, substrate: float | Tensor | str = 0.0, seed: int = 0,
                       batch_size: int = 256) -> dict[str, Curve]:
    """All four curves: ``deletion``, ``deletion_random``, ``insertion``, ``insertion_random``
    (``substrate``: that of deletion)."""
    options = dict(target=target, step=step, seed=seed, batch_size=batch_size)
    deletion = dict(options, substrate=substrate)
    return {"deletion": deletion_curve(model, x, relevance, **deletion),
            "deletion_random": deletion_curve(model, x, "random", **deletion),
            "insertion": insertion_curve(model, x, relevance, **options),
            "insertion_random": insertion_curve(model, x, "random", **options)}


# --------------------------------------------------------------------------- ground-truth masks
def _maps_and_masks(relevance, mask, who: str) -> tuple[Tensor, Tensor]:
    relevance = getattr(relevance, "relevance", relevance)
    relevance = torch.as_tensor(relevance)  # numpy arrays (the shapes dataset's masks) are fine
    mask = torch.as_tensor(mask, device=relevance.device)
    if relevance.dim() != 3 or relevance.shape != mask.shape:
        raise ValueError(f"{who}: relevance and mask must both be (B, H, W), got {tuple(relevance.shape)} "
                         f"and {tuple(mask.shape)}; a single image needs [None], a layer map upsampling")
    return relevance.detach().double(), mask.bool()


def mask_share(relevance: Tensor, mask: Tensor, mass: str = "positive") -> Tensor:
    """Share of each map's relevance mass inside the object mask, (B,) in [0, 1].

    ``mass="positive"`` counts only relevance above 0 (evidence *for* the class; signed
    methods such as integrated gradients also mark evidence against it); ``"abs"`` counts
    |relevance|. A map with no mass at all gives NaN, not a misleading 0.
    """
    relevance, mask = _maps_and_masks(relevance, mask, "mask_share")
    if mass == "positive":
        weights = relevance.clamp(min=0)
    elif mass == "abs":
        weights = relevance.abs()
    else:
        raise ValueError(f"mass must be 'positive' or 'abs', got {mass!r}")
    total = weights.sum((1, 2))
    inside = (weights * mask).sum((1, 2))
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.full_like(total, float("nan")))


def pointing_game(relevance: Tensor, mask: Tensor, tolerance: int = 0) -> Tensor:
    """Whether each map's maximum lies on the object, (B,) bool (Zhang et al. 2016).

    ``tolerance``: a hit may miss the mask by up to this many pixels (the paper used 15
    on 224-pixel images); the mask is grown by a (2 tolerance + 1)-wide square. Where
    several pixels share the maximum, the first in raster order counts.
    """
    relevance, mask = _maps_and_masks(relevance, mask, "pointing_game")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance:
        grown = F.max_pool2d(mask[:, None].float(), 2 * tolerance + 1, stride=1, padding=tolerance)
        mask = grown[:, 0].bool()
    best = relevance.flatten(1).argmax(1)
    return mask.flatten(1).gather(1, best[:, None])[:, 0]
