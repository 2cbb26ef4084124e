"""Pictures of explanations: images, relevance maps, perturbations, curves.

    from reference_torch.explain import plots
    plots.show_image(ax, x[0])                       # (C, H, W) in [0, 1]
    im = plots.show_relevance(ax, result.relevance[0])
    fig.colorbar(im, ax=ax)
    fig = plots.attribution_grid(x, {"saliency": r1, "Grad-CAM": r2}, row_labels=[...])

Relevance maps are shown per image scaled to its largest |value|, so that every map
uses its full colour range: the colours compare pixels within one map, never across
maps. Signed maps (integrated gradients, gradient x input, occlusion) use a diverging
map with white at zero (red for the class, blue against it); maps that are never
negative (saliency, Grad-CAM after its ReLU) use a sequential map from white.
The module only draws; it needs matplotlib, nothing else of the kit.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

SIGNED_CMAP = "RdBu_r"
UNSIGNED_CMAP = "Reds"


def to_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().float().numpy()
    return np.asarray(t)


def image_for_display(image) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) or (H, W) that ``imshow`` draws as it is."""
    image = to_numpy(image)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return np.clip(image, 0, 1)


def show_image(ax, image, title: str | None = None, **title_kw):
    """Draw an image without ticks (pixels as squares: no smoothing of 32-pixel images)."""
    shown = image_for_display(image)
    im = ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, **title_kw)
    return im


def scaled(relevance) -> tuple[np.ndarray, bool]:
    """A relevance map divided by its largest |value|, and whether it has negative values."""
    r = to_numpy(relevance).astype(np.float64)
    top = np.abs(r).max()
    signed = bool((r < -1e-12 * max(top, 1e-300)).any())
    return (r / top if top > 0 else r), signed


def show_relevance(ax, relevance, signed: bool | None = None, outline=None, title: str | None = None,
                   outline_color: str = "lime", **title_kw):
    """Draw one (H, W) map scaled to [-1, 1] (signed) or [0, 1]; returns the image for a colourbar.

    ``signed``: None decides from the values; ``outline``: an optional (H, W) bool mask drawn
    as a contour in ``outline_color`` (the true object, or a bias patch)."""
    r, has_negative = scaled(relevance)
    signed = has_negative if signed is None else signed
    if signed:
        im = ax.imshow(r, cmap=SIGNED_CMAP, vmin=-1, vmax=1, interpolation="nearest")
    else:
        im = ax.imshow(np.clip(r, 0, 1), cmap=UNSIGNED_CMAP, vmin=0, vmax=1, interpolation="nearest")
    if outline is not None:
        draw_outline(ax, outline, color=outline_color)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, **title_kw)
    return im


def draw_outline(ax, mask, color: str = "lime", linewidth: float = 1.0):
    """Contour of a boolean (H, W) mask at the pixel edges."""
    mask = to_numpy(mask).astype(float)
    if mask.any() and not mask.all():
        ax.contour(mask, levels=[0.5], colors=[color], linewidths=linewidth)


def perturbation_image(delta, eps: float) -> np.ndarray:
    """A perturbation (C, H, W) with values in [-eps, eps] as an image: 0.5 + delta / (2 eps),
    so grey is no change and the budget's edges are black and white (magnified 1 / (2 eps))."""
    delta = to_numpy(delta)
    if eps <= 0:
        return np.full_like(delta, 0.5)
    return np.clip(0.5 + delta / (2 * eps), 0, 1)


def attribution_grid(images, maps: Mapping[str, object], row_labels: Sequence[str] | None = None,
                     outlines=None, signed: Mapping[str, bool] | None = None, title: str | None = None,
                     cell: float = 1.7, outline_color: str = "lime", outline_image: bool = False):
    """A figure: one row per image, the image then one column per method.

    ``maps``: method name -> (B, H, W) relevance; ``outlines``: optional (B, H, W) masks
    drawn in ``outline_color`` on every map (and on the image too with ``outline_image``);
    ``signed``: method name -> whether to use the diverging map (default: decided per map
    from its values). Each column gets a colourbar."""
    images = to_numpy(images)
    names = list(maps)
    rows, cols = len(images), len(names) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.6, cell * rows + 1.2), squeeze=False,
                             layout="constrained")
    for r in range(rows):
        show_image(axes[r, 0], images[r])
        if outlines is not None and outline_image:
            draw_outline(axes[r, 0], to_numpy(outlines)[r], color=outline_color)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("input", fontsize=10)
    for c, name in enumerate(names, start=1):
        stack = to_numpy(maps[name])
        is_signed = (signed or {}).get(name)
        if is_signed is None:
            is_signed = bool((stack < 0).any())
        for r in range(rows):
            im = show_relevance(axes[r, c], stack[r], signed=is_signed, outline_color=outline_color,
                                outline=None if outlines is None else to_numpy(outlines)[r])
        axes[0, c].set_title(name, fontsize=10)
        cbar = fig.colorbar(im, ax=axes[:, c], location="bottom", shrink=0.9, aspect=12)
        cbar.set_label("relevance / max |relevance|" if is_signed else "relevance / max", fontsize=7)
        cbar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def curve_panel(ax, fractions, curves: Mapping[str, object], title: str, ylabel: str,
                styles: Mapping[str, dict] | None = None):
    """Mean curve (over images) per method, with the AUC in the legend: for curves of
    several images (B, S) its mean over the images and that mean's standard error."""
    x = to_numpy(fractions)
    for name, scores in curves.items():
        scores = to_numpy(scores)
        areas = np.trapezoid(scores, x, axis=-1)
        mean = scores.mean(0) if scores.ndim == 2 else scores
        error = f" ± {areas.std(ddof=1) / len(areas) ** 0.5:.3f}" if scores.ndim == 2 and len(scores) > 1 else ""
        ax.plot(100 * x, mean, label=f"{name} (AUC {float(np.mean(areas)):.3f}{error})",
                **(styles or {}).get(name, {}))
    ax.set(title=title, xlabel="pixels changed (%)", ylabel=ylabel, xlim=(0, 100), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
