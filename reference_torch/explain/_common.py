"""Small helpers every explanation module shares: model state, targets, layers, batching.

What is not torch-specific (the eval-mode guard, finding a layer, the batch-size check)
is minidl's code in ``minidl._explain_common``, so both engines behave alike.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from minidl import _explain_common as common
from minidl._explain_common import check_batch_size  # noqa: F401  (re-exported for the methods)

Target = int | Sequence[int] | Tensor | np.ndarray | None
Layer = str | nn.Module | None


def inspecting(model: nn.Module):
    """Eval mode and frozen parameters while ``model`` is explained; both restored after."""
    return common.inspecting(model, torch.enable_grad)


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
    return common.resolve_layer(model, layer, nn.Conv2d)


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
