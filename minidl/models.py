"""The small models the course drivers share. Their twins in PyTorch
(``reference_torch.twins``) have the same module names, so state dicts move between
the two engines unchanged."""
from __future__ import annotations

from . import nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _per_layer(value, count, what):
    """One value for every layer, or a list with one value per layer."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{what}: expected {count} values (one per hidden layer), got {values}")
    return values


class MLP(nn.Module):
    """Flatten, then (Linear [BatchNorm1d] activation [Dropout]) per hidden layer,
    then a last Linear to the logits. ``features`` are the last hidden activations."""

    def __init__(self, in_features, hidden=(128,), num_classes=10, activation="relu",
                 dropout=0.0, batch_norm=False):
        super().__init__()
        hidden = list(hidden)
        dropouts = _per_layer(dropout, len(hidden), "dropout")
        layers, width = [nn.Flatten()], in_features
        for size, p in zip(hidden, dropouts):
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(_activation(activation))
            if p > 0:
                layers.append(nn.Dropout(p))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class SmallCNN(nn.Module):
    """(Conv [BatchNorm2d] ReLU MaxPool2d) per entry of ``widths``, then Flatten,
    optional Dropout and a Linear to the logits. With the defaults on 28×28 digits:
    conv 1→16, pool, conv 16→32, pool, linear 32·7·7→10."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, widths=(16, 32), kernel_size=3,
                 batch_norm=False, dropout=0.0):
        super().__init__()
        channels, height, width = in_shape
        layers = []
        for out_channels in widths:
            layers.append(nn.Conv2d(channels, out_channels, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            channels, height, width = out_channels, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"{len(widths)} pooling stages are too many for input {in_shape}")
        layers.append(nn.Flatten())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels * height * width, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))
