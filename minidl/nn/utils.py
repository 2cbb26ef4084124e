"""torch.nn.utils's gradient clipping, on minidl parameters.

    loss.backward()
    md.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _with_grad(parameters):
    parameters = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0):
    """Scale the gradients so that their norm, taken over all of them together as one
    vector, is at most ``max_norm``; returns that norm before clipping (a 0-d tensor)."""
    params = _with_grad(parameters)
    if not params:
        return Tensor(np.zeros((), dtype=np.float32))
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        total = max(float(np.abs(p.grad).max()) for p in params)
    else:
        total = sum(float(np.sum(np.abs(p.grad.astype(np.float64)) ** norm_type))
                    for p in params) ** (1.0 / norm_type)
    scale = max_norm / (total + 1e-6)  # torch's epsilon
    if scale < 1:
        for p in params:  # a new array: a gradient may be shared or read-only
            p.grad = (p.grad * scale).astype(p.grad.dtype)
    return Tensor(np.asarray(total, dtype=params[0].grad.dtype))


def clip_grad_value_(parameters, clip_value):
    """Clip every gradient entry to [-clip_value, clip_value]."""
    for p in _with_grad(parameters):
        p.grad = np.clip(p.grad, -clip_value, clip_value)
