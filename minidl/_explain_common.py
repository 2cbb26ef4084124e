"""What ``minidl.explain`` and ``reference_torch.explain`` share, written once.

Nothing here knows which engine it serves: the integration rules are plain NumPy,
the channel reductions take the array module (``numpy`` or ``torch``) as an argument,
and the model helpers use only what both engines' modules have (``named_modules``,
``parameters``, ``training``, ``eval()``). So minidl never imports torch, and
reference_torch gets the same numbers by calling the same code.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, ContextManager, Iterator

import numpy as np

__all__ = ["RULES", "integration_points", "CHANNEL_REDUCTIONS", "channel_reduction", "resolve_layer",
           "inspecting", "check_batch_size"]


# --------------------------------------------------------------------------- integrated gradients
RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def integration_points(n_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alphas`` on [0, 1] and weights that sum to 1, for a rule with n_steps points
    (float64 ndarrays).

    The trapezoid rule puts its points at 0, 1/(n-1), ..., 1, so each interval is
    1/(n-1) wide: weights 1/(n-1), halved at both ends. (captum 0.9 uses 1/n here, so
    its weights sum to (n-1)/n and its trapezoid integrals are that much too small.)
    """
    n = int(n_steps)
    if n < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    if rule == "riemann_trapezoid":
        alphas = np.linspace(0, 1, n)
        weights = np.full(n, 1 / (n - 1))
        weights[[0, -1]] /= 2
    elif rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1], weights sum to 2
        alphas, weights = (nodes + 1) / 2, weights / 2
    elif rule in ("riemann_left", "riemann_right", "riemann_middle"):
        shift = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
        alphas = (np.arange(n) + shift) / n
        weights = np.full(n, 1 / n)
    else:
        raise ValueError(f"unknown integration rule {rule!r}; choose one of {RULES}")
    return alphas, weights


# --------------------------------------------------------------------------- channels -> pixels
# (B, C, H, W) -> (B, H, W). ``xp`` is numpy or torch; abs(), * and .sum(1) mean the same
# for both arrays, and xp.amax / xp.sqrt exist in both modules.
CHANNEL_REDUCTIONS: dict[str, Callable] = {
    "max": lambda xp, t: xp.amax(abs(t), 1),      # Simonyan et al.: the largest |value| over channels
    "l2": lambda xp, t: xp.sqrt((t * t).sum(1)),  # the length of the pixel's vector of values
    "sum": lambda xp, t: t.sum(1),                # signed: for contributions that add up
}


def channel_reduction(name: str, xp) -> Callable:
    """The reduction called ``name`` in CHANNEL_REDUCTIONS, for arrays of the module ``xp``."""
    if name not in CHANNEL_REDUCTIONS:
        raise ValueError(f"channel_reduce must be one of {sorted(CHANNEL_REDUCTIONS)}, got {name!r}")
    return partial(CHANNEL_REDUCTIONS[name], xp)


# --------------------------------------------------------------------------- models
def resolve_layer(model, layer, conv_type: type) -> tuple[str, object]:
    """(name, module) for a dotted name like ``"layer4"``, a module of ``model``, or None:
    the last module of type ``conv_type`` (the engine's Conv2d) the model defines."""
    named = dict(model.named_modules())
    if layer is None:
        convs = [name for name, m in named.items() if isinstance(m, conv_type)]
        if not convs:
            raise ValueError(f"{type(model).__name__} has no {conv_type.__name__} layer; pass layer= explicitly")
        return convs[-1], named[convs[-1]]
    if isinstance(layer, str):
        if layer not in named:
            raise ValueError(f"no layer named {layer!r} in {type(model).__name__}; "
                             f"some names it has: {[n for n in named if n][:12]}")
        return layer, named[layer]
    for name, module in named.items():
        if module is layer:
            return name, module
    raise ValueError(f"the module {type(layer).__name__} given as layer is not part of the model")


@contextmanager
def inspecting(model, enable_grad: Callable[[], ContextManager]) -> Iterator:
    """Eval mode and frozen parameters for the duration of an explanation; both restored.

    Eval mode because an explanation must not depend on dropout or update batch-norm
    statistics. Frozen parameters because we only ever want gradients with respect to
    inputs or activations: with ``requires_grad=False`` autograd neither computes nor
    stores anything for the weights, and no ``.grad`` is left on them afterwards.
    ``enable_grad`` is the engine's context manager: the caller may sit inside no_grad().
    """
    modes = {m: m.training for m in model.modules()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in trainable:
        p.requires_grad = False
    try:
        with enable_grad():
            yield model
    finally:
        for p in trainable:
            p.requires_grad = True
        for m, training in modes.items():
            m.training = training  # per module: a model may mix train and eval parts


def check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of images per pass, got {batch_size}")
    return int(batch_size)
