"""PyTorch twins of the small models in ``minidl.models``.

Same constructor arguments, same module names, same layouts: a twin's
``state_dict()`` has exactly the keys and shapes of the minidl model built with the
same arguments, so weights move between the engines unchanged
(``reference_torch.interop.to_minidl`` / ``from_minidl``).

    import minidl as md
    from reference_torch import twins
    md_net = md.models.SmallCNN((1, 28, 28), widths=(16, 32), batch_norm=True)
    torch_net = twins.SmallCNN((1, 28, 28), widths=(16, 32), batch_norm=True)
    sorted(md_net.state_dict()) == sorted(torch_net.state_dict())   # True

Module names: ``body.<i>`` for the layers before the classifier (``body.0`` is the
Flatten of an MLP, ``body.0`` the first Conv2d of a SmallCNN), ``head`` for the last
Linear. ``features(x)`` returns the body's output (what a t-SNE plot shows).
"""
from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}

__all__ = ["ACTIVATIONS", "BodyHead", "MLP", "SmallCNN", "TWINS"]


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _per_layer(value, count: int, what: str) -> list:
    """One value for every layer, or a list with one value per layer."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{what}: expected {count} values (one per hidden layer), got {values}")
    return values


class BodyHead(nn.Module):
    """``head(body(x))``; ``features(x)`` is ``body(x)``. The common shape of both twins."""

    body: nn.Sequential
    head: nn.Linear

    @classmethod
    def from_parts(cls, body: nn.Sequential, head: nn.Module) -> "BodyHead":
        """A model of this class around ready-made ``body`` and ``head`` modules
        (how ``interop`` builds the twin of a minidl model it was handed)."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.body, model.head = body, head
        return model

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MLP(BodyHead):
    """Flatten, then (Linear [BatchNorm1d] activation [Dropout]) per hidden layer,
    then a last Linear to the logits: the twin of ``minidl.models.MLP``."""

    def __init__(self, in_features: int, hidden=(128,), num_classes: int = 10,
                 activation: str = "relu", dropout=0.0, batch_norm: bool = False):
        super().__init__()
        hidden = list(hidden)
        dropouts = _per_layer(dropout, len(hidden), "dropout")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
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


class SmallCNN(BodyHead):
    """(Conv2d [BatchNorm2d] ReLU MaxPool2d) per entry of ``widths``, then Flatten,
    optional Dropout and a Linear to the logits: the twin of ``minidl.models.SmallCNN``."""

    def __init__(self, in_shape=(1, 28, 28), num_classes: int = 10, widths=(16, 32),
                 kernel_size: int = 3, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        channels, height, width = in_shape
        layers: list[nn.Module] = []
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


# minidl.models class name -> torch twin class (interop builds twins from this table)
TWINS = {"MLP": MLP, "SmallCNN": SmallCNN}
