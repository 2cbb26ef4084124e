"""Transfer learning's pieces: a pretrained network split into a body and a new last layer
(``head``) behind the course's preprocessing, the course's initialisation of that layer,
and the optimiser's parameter groups of each strategy (``head``: the last layer only, on
a frozen body whose batch norm keeps its statistics; ``finetune``: everything at one rate;
``finetune_head10``: the last layer 10 times faster; ``scratch``: random weights at ``lr``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .train import evaluate


class Prepared(nn.Module):
    """``head(body(x))`` after the course's preprocessing, on the device: resize (e.g. 32 -> 224
    for ImageNet weights), normalise, grey -> RGB for an RGB network, and while ``noise`` is a
    (std, generator) pair, gaussian test noise (the course's ``AddGaussianNoise``)."""

    def __init__(self, net, mean, std, size=None, channels=None):
        super().__init__()
        if isinstance(getattr(net, "fc", None), nn.Linear):  # a ResNet: its last layer is fc
            self.head, net.fc, self.body = net.fc, nn.Identity(), net
        else:  # a SmallCNN
            self.body, self.head = net.body, net.head
        self.size, self.channels, self.noise = size, channels, None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)  # grey images for an RGB network
        if self.noise is not None:  # drawn on the CPU from a seeded generator: the same noise on any device
            x = x + self.noise[0] * torch.randn(x.shape, generator=self.noise[1]).to(x)
        return self.head(self.body(x))

    def train(self, mode=True):
        super().train(mode)
        if not any(p.requires_grad for p in self.body.parameters()):
            self.body.eval()  # frozen: its batch norm keeps (and uses) the pretrained statistics
        return self


def configure(model, strategy, lr, finetune_lr):
    """Freeze what ``strategy`` keeps fixed; the optimiser's parameter groups: the
    pretrained layers' unless frozen, then the new last layer's."""
    model.body.requires_grad_(strategy != "head")
    body_lr, head_lr = {"head": (0, lr), "finetune": (finetune_lr, finetune_lr),
                        "finetune_head10": (finetune_lr, 10 * finetune_lr), "scratch": (lr, lr)}[strategy]
    parts = ((model.body, body_lr), (model.head, head_lr))
    return [{"params": list(part.parameters()), "lr": rate} for part, rate in parts if rate]


def new_head(model: Prepared, num_classes: int) -> None:
    """Replace the last layer by a new one with the course's initialisation: N(0, 0.01), bias 0."""
    model.head = nn.Linear(model.head.in_features, num_classes)
    nn.init.normal_(model.head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(model.head.bias)


def noisy_accuracy(model: Prepared, loader: DataLoader, stds, seed: int) -> list[float]:
    """Accuracy over ``loader`` with gaussian noise of each std in ``stds`` (0: clean) added
    after normalisation (the course's ``AddGaussianNoise``), each drawn from a generator seeded
    with ``seed`` plus its index, so every model sees the same noise on any device."""
    accuracy = []
    for i, std in enumerate(stds):
        model.noise = (std, torch.Generator().manual_seed(seed + i)) if std else None
        accuracy.append(evaluate(model, loader)["accuracy"])
    model.noise = None
    return accuracy


def class_split(split, classes: range, per_class: int | None = None, rng: np.random.Generator | None = None,
                size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of the images of ``classes`` in ``split`` (arrays ``.x``, ``.y``), relabelled from 0:
    at most ``per_class`` of each class (drawn by ``rng``), at most ``size`` in all. Two disjoint
    ranges give a source and a target task (Yosinski et al. 2014)."""
    picked = [np.flatnonzero(split.y == c) for c in classes]
    if per_class is not None:
        picked = [rng.choice(i, per_class, replace=False) if len(i) > per_class else i for i in picked]
    idx = np.sort(np.concatenate(picked))[:size]
    return split.x[idx], (split.y[idx] - classes.start).astype(np.int64)
