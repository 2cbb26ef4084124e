"""Small helpers every explanation module shares: model state, targets, layers, batching."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

Target = int | Sequence[int] | Tensor | np.ndarray | None
Layer = str | nn.Module | None


@contextmanager
def inspecting(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an explanation; both restored.

    Eval mode because an explanation must not depend on dropout or update batch-norm
    statistics. Frozen parameters because we only ever want gradients with respect to
    inputs or activations: with ``requires_grad=False`` autograd neither computes nor
    stores anything for the weights, and no ``.grad`` is left on them afterwards.
    """
    modes = {m: m.training for m in model.modules()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():  # callers may sit inside torch.no_grad()
            yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for m, training in modes.items():
            m.training = training  # per module: a model may mix train and eval parts


def check_images(x: Tensor, who: str) -> Tensor:
    """A detached float batch (B, C, H, W); numpy arrays are converted."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        what = f"{x.dtype} of shape {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{who} expects a float image batch (B, C, H, W), got {what}; "
                         "add a batch dimension with x[None] and convert integers with x.float() / 255")
    return x.detach()


def resolve_target(target: Target, logits: Tensor) -> Tensor:
    """Class index per image, (B,) long: the predicted class where ``target`` is None."""
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"target must be one class index or one per image ({batch}), got {t.numel()} values")
    if t.min() < 0 or t.max() >= classes:
        raise ValueError(f"target {t.tolist()} is out of range for a model with {classes} outputs")
    return t


def resolve_layer(model: nn.Module, layer: Layer) -> tuple[str, nn.Module]:
    """(name, module) for a dotted name like ``"layer4"``, a module, or None: the last Conv2d."""
    named = dict(model.named_modules())
    if layer is None:
        convs = [name for name, m in named.items() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass layer= explicitly")
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


def forward_in_chunks(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Logits of a large batch, ``batch_size`` images per forward pass, without a graph."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def chunks(total: int, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """Index tensors 0..total-1 in pieces of ``batch_size``: the only loop the methods need.

    Methods that evaluate many variants of every image (steps of a path, occluded
    copies, noisy copies) number the (image, variant) pairs 0..total-1 and walk through
    them in pieces, so memory is bounded by ``batch_size`` and not by the batch.
    """
    for start in range(0, total, batch_size):
        yield torch.arange(start, min(start + batch_size, total), device=device)


def check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of images per pass, got {batch_size}")
    return int(batch_size)
