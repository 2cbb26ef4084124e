"""What a network computes inside: activations of chosen layers, caught with forward hooks.

    maps = activation_maps(model, x, ["conv1", "layer1"])   # {"conv1": (B, C, h, w), ...}

A forward hook is a function torch calls with a module's output every time the
module runs; ``capture`` registers one for the duration of a ``with`` block and
removes it afterwards, so a model is never left with stray hooks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from ._common import Layer, check_images, inspecting, resolve_layer


class Captured:
    """The output of one layer from the last forward pass (``.value``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: Tensor | None = None


@contextmanager
def capture(model: nn.Module, layers: Sequence[Layer], as_leaf: bool = False) -> Iterator[list[Captured]]:
    """Record the outputs of ``layers`` during the forward passes run inside the block.

    ``as_leaf=True`` is for gradients with respect to an activation (Grad-CAM, layer
    saliency): the recorded tensor is made a fresh leaf that requires grad, and the rest
    of the network is fed a copy. Autograd then stops at the layer (nothing below it is
    differentiated), and an in-place operation after the layer (``ReLU(inplace=True)``)
    changes the copy, not the recorded activation.
    """
    records, handles = [], []

    def hook_for(record: Captured):
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, Tensor):
                raise TypeError(f"layer {record.name!r} returns a {type(output).__name__}, not a tensor; "
                                "pick a layer with a single tensor output")
            if record.value is not None:
                raise RuntimeError(f"layer {record.name!r} ran twice in one forward pass (a module used twice, "
                                   "like torchvision's shared ReLU in a BasicBlock); pick its parent block instead")
            if as_leaf:
                record.value = output.detach().requires_grad_(True)
                return record.value.clone()
            record.value = output
            return None
        return hook

    try:
        for layer in layers:
            name, module = resolve_layer(model, layer)
            record = Captured(name)
            records.append(record)
            handles.append(module.register_forward_hook(hook_for(record)))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def activation_maps(model: nn.Module, x: Tensor, layers: Sequence[Layer]) -> dict[str, Tensor]:
    """Activations of ``layers`` for the images ``x``, as ``{layer name: tensor}``.

    One forward pass in eval mode without gradients; layers are given by dotted name
    (``"layer2.0.conv1"``, see ``model.named_modules()``) or as modules.
    """
    x = check_images(x, "activation_maps")
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    with inspecting(model), torch.no_grad(), capture(model, layers) as records:
        model(x)
    return {r.name: r.value for r in records}
