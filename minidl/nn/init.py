"""Weight initialisation, with torch.nn.init's names, formulas and defaults.

Every function fills its argument in place (a Parameter, a Tensor or an ndarray),
keeps its dtype, draws from minidl's generator (``md.manual_seed`` makes it
repeatable) and returns it.

fan_in and fan_out count the inputs and outputs of one output unit: for a Linear
weight (out, in) they are in and out; for a conv weight (out, in, kh, kw) they are
in*kh*kw and out*kh*kw.
"""
from __future__ import annotations

import math

import numpy as np

from .. import autograd
from ..autograd import Tensor


def _array(t):
    return t.data if isinstance(t, Tensor) else t


def _fill(t, values):
    array = _array(t)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"init functions fill a Tensor or an ndarray in place, got {type(t).__name__}")
    array[...] = values
    if isinstance(t, Tensor):
        t._bump()
    return t


def calculate_gain(nonlinearity, param=None):
    """The factor that keeps activations' variance steady through ``nonlinearity``."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unknown nonlinearity {nonlinearity!r}; use one of linear, sigmoid, tanh, "
                     "relu, leaky_relu, selu")


def calculate_fan_in_and_fan_out(t):
    shape = _array(t).shape
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight of at least 2 dimensions, got shape "
                         f"{shape} (biases are initialised with uniform_ or zeros_)")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(t, mode):
    fan_in, fan_out = calculate_fan_in_and_fan_out(t)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def uniform_(t, a=0.0, b=1.0):
    return _fill(t, autograd.rng().uniform(a, b, _array(t).shape))


def normal_(t, mean=0.0, std=1.0):
    return _fill(t, autograd.rng().normal(mean, std, _array(t).shape))


def constant_(t, value):
    return _fill(t, value)


def zeros_(t):
    return _fill(t, 0)


def ones_(t):
    return _fill(t, 1)


def xavier_uniform_(t, gain=1.0):
    """Glorot: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(t)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -bound, bound)


def xavier_normal_(t, gain=1.0):
    """Glorot: N(0, std²) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_uniform_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He: U(-b, b) with b = gain * sqrt(3 / fan). torch's defaults (a=0, leaky_relu)
    give the ReLU gain sqrt(2)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(t, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(t, -bound, bound)


def kaiming_normal_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He: N(0, std²) with std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(t, mode))
    return normal_(t, 0.0, std)
