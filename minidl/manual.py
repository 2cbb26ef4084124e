"""Explicit backpropagation, module by module, in the style of the UvA DL1
assignment-1 template (``modules.py`` and ``mlp_numpy.py``).

No autograd here: every module caches what its backward needs in ``forward`` and
turns the gradient of the loss with respect to its output (``dout``) into the
gradient with respect to its input (``dx``), filling ``grads`` on the way. Hold
these against ``minidl``'s autograd (or torch) to see that both compute the same::

    mlp = MLP(64, [128], 10)
    loss_module = CrossEntropyModule()
    probs = mlp.forward(x)                       # (N, 10) probabilities
    loss = loss_module.forward(probs, y)
    mlp.backward(loss_module.backward(probs, y))
    mlp.layers[0].grads["weight"]                # dL/dW of the first layer

Shapes follow torch: a weight is (out_features, in_features) and a layer computes
x Wᵀ + b for a batch x of shape (N, in_features). Everything is float64 (numpy's
default), so central differences with h = 1e-5 agree with these gradients to about
1e-7 relative error (see ``minidl.gradcheck.numerical_gradient``).
"""
from __future__ import annotations

import numpy as np

from . import autograd

__all__ = ["LinearModule", "ReLUModule", "ELUModule", "SoftMaxModule", "CrossEntropyModule",
           "MLP"]


class LinearModule:
    """Linear layer: out = x Wᵀ + b."""

    def __init__(self, in_features, out_features, input_layer=False):
        """Kaiming initialisation, W ~ N(0, 2 / in_features): right for a layer whose
        input came through a ReLU-like activation. The input layer sees the raw data
        (not rectified), so it uses N(0, 1 / in_features) instead. Biases are zero.

        The weights come from minidl's generator: ``md.manual_seed`` makes them repeatable.
        """
        self.in_features, self.out_features, self.input_layer = in_features, out_features, input_layer
        std = np.sqrt((1.0 if input_layer else 2.0) / in_features)
        self.params = {
            "weight": autograd.rng().normal(0.0, std, (out_features, in_features)),
            "bias": np.zeros(out_features),
        }
        self.grads = {"weight": np.zeros_like(self.params["weight"]),
                      "bias": np.zeros_like(self.params["bias"])}
        self.x = None

    def forward(self, x):
        """x: (N, in_features) -> (N, out_features). Reads ``params`` on every call,
        so weights set from outside take effect at once."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"LinearModule({self.in_features}, {self.out_features}) expects input "
                             f"(N, {self.in_features}), got shape {x.shape}")
        self.x = x
        return x @ self.params["weight"].T + self.params["bias"]

    def backward(self, dout):
        """dout: dL/dout (N, out_features). Fills grads and returns dL/dx (N, in_features).

        out[n, j] = sum_i x[n, i] W[j, i] + b[j], hence
        dL/dW = doutᵀ x,   dL/db = sum over the batch of dout,   dL/dx = dout W.
        """
        if self.x is None:
            raise RuntimeError("backward() before forward() (or after clear_cache())")
        self.grads["weight"] = dout.T @ self.x
        self.grads["bias"] = dout.sum(axis=0)
        return dout @ self.params["weight"]

    def clear_cache(self):
        """Forget the cached input (e.g. before saving the model)."""
        self.x = None


class ReLUModule:
    """out = max(0, x)."""

    def __init__(self):
        self.x = None

    def forward(self, x):
        self.x = x
        return np.maximum(x, 0)

    def backward(self, dout):
        """The gradient passes where x > 0 and is zero elsewhere."""
        return dout * (self.x > 0)

    def clear_cache(self):
        self.x = None


class ELUModule:
    """out = x for x > 0, alpha (e^x - 1) otherwise (alpha = 1 in the assignment)."""

    def __init__(self, alpha=1.0):
        self.alpha = alpha
        self.x = None

    def forward(self, x):
        self.x = x
        # expm1 on min(x, 0): accurate near 0 and never overflows for large positive x.
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def backward(self, dout):
        """d out/dx = 1 for x > 0, alpha e^x otherwise."""
        x = self.x
        return dout * np.where(x > 0, 1.0, self.alpha * np.exp(np.minimum(x, 0)))

    def clear_cache(self):
        self.x = None


class SoftMaxModule:
    """Softmax over the classes (axis 1), with the max trick: subtracting each row's
    maximum changes nothing mathematically and keeps exp from overflowing."""

    def __init__(self):
        self.out = None

    def forward(self, x):
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        self.out = shifted / shifted.sum(axis=1, keepdims=True)
        return self.out

    def backward(self, dout):
        """Row by row the Jacobian is diag(y) - y yᵀ, so
        dx = y * (dout - sum_j dout_j y_j), without building the (C, C) matrix."""
        y = self.out
        return y * (dout - (dout * y).sum(axis=1, keepdims=True))

    def clear_cache(self):
        self.out = None


class CrossEntropyModule:
    """Mean negative log-likelihood of the true classes, on probabilities."""

    @staticmethod
    def _one_hot(x, y):
        y = np.asarray(y)
        if y.shape == x.shape:  # already one-hot (or soft) targets
            return y.astype(x.dtype)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({x.shape[0]},) or one-hot of "
                             f"shape {x.shape}, got {y.dtype} of shape {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= x.shape[1]):
            raise ValueError(f"labels must lie in [0, {x.shape[1]}), got {y.min()}..{y.max()}")
        target = np.zeros_like(x)
        target[np.arange(len(y)), y] = 1
        return target

    def forward(self, x, y):
        """x: probabilities (N, C); y: integer labels (N,) (or one-hot (N, C)).
        L = -1/N sum_n log x[n, y_n]."""
        target = self._one_hot(x, y)
        # Probabilities that underflowed to 0 would give log(0) = -inf; clip at the tiniest float.
        return float(-(target * np.log(np.maximum(x, np.finfo(x.dtype).tiny))).sum() / len(x))

    def backward(self, x, y):
        """dL/dx = -(1/N) target / x."""
        target = self._one_hot(x, y)
        return -target / np.maximum(x, np.finfo(x.dtype).tiny) / len(x)


class MLP:
    """(Linear, ELU) for every hidden size, then a last Linear and SoftMax:
    the network of the assignment. ``layers`` lists the modules in order."""

    def __init__(self, n_inputs, n_hidden, n_classes):
        """n_hidden: list of hidden sizes (may be empty: then softmax regression)."""
        self.layers = []
        width = n_inputs
        for i, size in enumerate(n_hidden):
            self.layers += [LinearModule(width, size, input_layer=(i == 0)), ELUModule()]
            width = size
        self.layers += [LinearModule(width, n_classes, input_layer=not n_hidden), SoftMaxModule()]

    def forward(self, x):
        """x: (N, n_inputs), or images (N, ...) that are flattened. Returns probabilities."""
        out = x.reshape(len(x), -1)
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def backward(self, dout):
        """dout: dL/d(probabilities), e.g. CrossEntropyModule().backward(probs, y).
        Fills every layer's grads; returns dL/dx."""
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def clear_cache(self):
        for layer in self.layers:
            layer.clear_cache()

    @property
    def linear_modules(self):
        return [layer for layer in self.layers if isinstance(layer, LinearModule)]
