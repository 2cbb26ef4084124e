"""The PyTorch MLP of the UvA DL1 assignment 1, twin of minidl's MLPs.

    model = MLP(n_inputs=3 * 32 * 32, n_hidden=[128], n_classes=10, use_batch_norm=False)

Layout: Flatten, then (Linear [BatchNorm1d] ELU) per hidden layer, then a Linear to
the logits: ``reference_torch.twins.MLP`` with ``activation="elu"``, so its module
names are those of ``minidl.models.MLP(n_inputs, n_hidden, n_classes, activation="elu",
batch_norm=use_batch_norm)`` and a state dict moves between the two engines unchanged
(``reference_torch.interop.to_minidl``); ``load_linear_weights`` takes the weights of the
explicit-backprop ``minidl.manual.MLP`` (or any list of ``(W, b)`` pairs).

Initialisation follows the course's numpy template: Kaiming-normal weights with
``std = sqrt(2 / fan_in)`` after an ELU (the ReLU gain), ``std = sqrt(1 / fan_in)`` on
the first layer, which sees the normalised input rather than an activation; zero biases.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import twins


class MLP(twins.MLP):
    """The course's ``MLP(n_inputs, n_hidden, n_classes, use_batch_norm=False)``:
    ``twins.MLP`` with ELU activations, batch norm on request, and the course's init."""

    def __init__(self, n_inputs: int, n_hidden: Sequence[int], n_classes: int,
                 use_batch_norm: bool = False) -> None:
        if isinstance(n_hidden, int):
            n_hidden = [n_hidden]
        n_hidden = list(n_hidden)
        if n_inputs < 1 or n_classes < 1 or any(h < 1 for h in n_hidden):
            raise ValueError(f"sizes must be positive: n_inputs={n_inputs}, "
                             f"n_hidden={n_hidden}, n_classes={n_classes}")
        super().__init__(n_inputs, hidden=n_hidden, num_classes=n_classes, activation="elu",
                         batch_norm=use_batch_norm)
        self.n_inputs, self.n_hidden, self.n_classes = n_inputs, n_hidden, n_classes
        self.use_batch_norm = use_batch_norm
        self.reset_parameters()

    def linear_layers(self) -> list[nn.Linear]:
        """The Linear layers from input to output."""
        return [m for m in self.body if isinstance(m, nn.Linear)] + [self.head]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for i, layer in enumerate(self.linear_layers()):
            gain = 1.0 if i == 0 else math.sqrt(2.0)  # the input is no ELU output
            layer.weight.normal_(0.0, gain / math.sqrt(layer.in_features))
            layer.bias.zero_()

    @torch.no_grad()
    def load_linear_weights(self, weights: Iterable[tuple[np.ndarray, np.ndarray]]) -> "MLP":
        """Copy ``(weight (out, in), bias (out,) or (1, out))`` pairs into the Linear layers,
        e.g. ``[(m.params["weight"], m.params["bias"]) for m in manual_mlp.linear_modules]``."""
        weights = list(weights)
        layers = self.linear_layers()
        if len(weights) != len(layers):
            raise ValueError(f"this MLP has {len(layers)} linear layers, got {len(weights)} weight pairs")
        for i, (layer, (w, b)) in enumerate(zip(layers, weights)):
            w = torch.as_tensor(np.asarray(w), dtype=layer.weight.dtype)
            b = torch.as_tensor(np.asarray(b), dtype=layer.bias.dtype).reshape(-1)
            if w.shape != layer.weight.shape:
                if w.T.shape == layer.weight.shape:
                    raise ValueError(f"layer {i}: weight has shape {tuple(w.shape)}, expected "
                                     f"{tuple(layer.weight.shape)} (out, in); pass its transpose")
                raise ValueError(f"layer {i}: weight has shape {tuple(w.shape)}, expected "
                                 f"{tuple(layer.weight.shape)} (out, in)")
            if b.shape != layer.bias.shape:
                raise ValueError(f"layer {i}: bias has {b.numel()} values, expected {layer.bias.numel()}")
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        return self
