"""Adversarial examples under an L-infinity budget, in pixel space.

Every image here is a float batch in [0, 1] and ``eps`` is measured in those units
(eps = 8/255 is the usual CIFAR budget). A model trained on normalised inputs gets the
normalisation as its first layer, so that attacks, clamping and budgets stay in pixels:

    model = nn.Sequential(Normalize(mean, std), trained_model)
    x_adv = pgd(model, x, y, eps=8 / 255)                         # untargeted
    x_adv = pgd(model, x, wanted, eps=8 / 255, targeted=True)     # towards class ``wanted``
    accuracy_under_attack(model, (x, y), "pgd", [0, 2 / 255, 8 / 255])

An attack is any function ``attack(model, x, y, eps) -> x_adv``; ``functools.partial``
sets its options (``partial(pgd, steps=40)``).

A budget below one grey level (eps < 1/255, ``GREY_LEVEL``) lives only in floating
point: an adversarial image saved as an 8-bit file is rounded to whole grey levels
(``quantize``), which erases a change of under half a level and turns a larger one
into a whole level. ``saved_as_8bit(attack)`` measures what survives.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._common import check_images, inspecting

Attack = Callable[[nn.Module, Tensor, Tensor, float], Tensor]


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a layer to put in front of a model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != std.shape or mean.dim() != 1 or (std <= 0).any():
            raise ValueError(f"need one mean and one positive std per channel, got mean={mean.tolist()}, "
                             f"std={std.tolist()}")
        # buffers move with .to(device) and are saved in the state_dict, but are not trained
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _check(x: Tensor, y: Tensor, eps: float, who: str) -> tuple[Tensor, Tensor]:
    x = check_images(x, who)
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{who} works in pixel space: x must lie in [0, 1], got values in "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; put Normalize(mean, std) in front "
                         "of the model instead of normalising the data")
    if not 0 <= eps <= 1:
        raise ValueError(f"{who}: eps is an L-infinity budget in pixel units and must lie in [0, 1], got {eps}; "
                         "for a budget of 8 grey levels write 8 / 255")
    y = torch.as_tensor(y, device=x.device).long()
    if y.shape != (len(x),):
        raise ValueError(f"{who}: need one label per image, {len(x)}, got shape {tuple(y.shape)}")
    return x, y


def _loss_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy w.r.t. x. Summed, not averaged: each image's
    gradient is then its own, whatever the batch size."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, targeted: bool = False) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps along the
    sign of the loss gradient, up the loss of the true label ``y``, or with
    ``targeted=True`` down the loss of the wanted label ``y``. Clamped to [0, 1]."""
    x, y = _check(x, y, eps, "fgsm")
    with inspecting(model):
        direction = _loss_gradient(model, x, y).sign()
    step = -eps if targeted else eps
    return (x + step * direction).clamp(0, 1).detach()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, targeted: bool = False,
        seed: int = 0) -> Tensor:
    """Projected gradient descent (Madry et al. 2018) in the L-infinity ball of radius eps.

    ``steps`` signed-gradient steps of ``step_size`` (default 2.5 eps / steps, the paper's
    choice, so the walk can reach the ball's edge from anywhere), each followed by a
    projection back into the ball around x and into [0, 1]. ``random_start`` begins at a
    uniform random point of the ball (drawn from ``seed``). Targeted as in ``fgsm``.
    """
    x, y = _check(x, y, eps, "pgd")
    if steps < 1:
        raise ValueError(f"pgd needs steps >= 1, got {steps}")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    sign = -1.0 if targeted else 1.0
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        adv = (x + eps * (2 * noise.to(x.device) - 1)).clamp(0, 1)
    with inspecting(model):
        for _ in range(steps):
            adv = adv + sign * step_size * _loss_gradient(model, adv, y).sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)  # project: ball, then pixel range
    return adv.detach()


def random_sign_noise(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0) -> Tensor:
    """Not an attack: every pixel moved by +eps or -eps at random (drawn from ``seed``),
    clamped to [0, 1]. Noise of the attacks' L-infinity norm, the baseline they must beat
    to show that their direction, not their size, fools the model. ``model`` and ``y``
    are unused; they are there so that it runs wherever an attack does."""
    x, y = _check(x, y, eps, "random_sign_noise")
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    return (x + eps * (2 * signs - 1).to(x.dtype)).clamp(0, 1)


GREY_LEVEL = 1 / 255  # one step of an 8-bit image, in [0, 1] pixel units


def quantize(x: Tensor, levels: int = 255) -> Tensor:
    """``x`` as an 8-bit image file stores it: every pixel rounded to the nearest of
    ``levels + 1`` grey levels. A perturbation of a (quantised) image smaller than half
    a level vanishes; one between half a level and a level becomes a whole level."""
    return (x * levels).round() / levels


def saved_as_8bit(attack: Attack) -> Attack:
    """``attack`` whose adversarial images are then quantised, as saving them as a PNG
    would: ``accuracy_under_attack(model, data, saved_as_8bit(pgd), eps_list)``."""
    def quantized_attack(model, x, y, eps, **options):
        return quantize(attack(model, x, y, eps, **options))
    return quantized_attack


ATTACKS: dict[str, Attack] = {"fgsm": fgsm, "pgd": pgd}


def _batches(data, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    """(x, y) pairs from a loader, or from a pair of whole arrays cut into batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(data[0], "shape") and len(data[0].shape) == 4:
        x, y = (torch.as_tensor(a) for a in data)
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        for batch in data:
            yield batch[0], batch[1]


def accuracy_under_attack(model: nn.Module, data, attack: str | Attack = "pgd",
                          eps_list: Sequence[float] = (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255), *,
                          batch_size: int = 256) -> dict[float, float]:
    """Accuracy on adversarial examples for each budget: ``{eps: accuracy}``.

    ``data``: a loader of (x, y) batches or a pair of arrays (x (N, C, H, W) floats in
    [0, 1], y (N,)). ``attack``: "fgsm", "pgd" or a function ``attack(model, x, y, eps)``.
    eps = 0 gives the clean accuracy. Batches move to the model's device.
    """
    if isinstance(attack, str):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)} or pass a function")
        attack = ATTACKS[attack]
    device = next(model.parameters()).device
    correct = {float(eps): 0 for eps in eps_list}
    seen = 0
    for x, y in tqdm(_batches(data, batch_size), desc="attacks", leave=False, disable=None):
        x = check_images(torch.as_tensor(x), "accuracy_under_attack").to(device)
        y = torch.as_tensor(y).to(device)
        for eps in correct:
            x_adv = x if eps == 0 else attack(model, x, y, eps)
            with inspecting(model), torch.no_grad():
                correct[eps] += int((model(x_adv).argmax(1) == y).sum())
        seen += len(y)
    if seen == 0:
        raise ValueError("accuracy_under_attack got no data")
    return {eps: hits / seen for eps, hits in correct.items()}
