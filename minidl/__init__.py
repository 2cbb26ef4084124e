"""minidl: a from-scratch deep-learning engine on NumPy with PyTorch's API shape.

    import minidl as md
    x = md.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    x.grad  # array([[2., 4.]], dtype=float32)
"""
import numpy as np

from . import autograd, ops
from .autograd import (DEFAULT_DTYPE, Function, Tensor, arange, detect_anomaly, enable_grad,
                       full, is_grad_enabled, manual_seed, no_grad, ones, ones_like, rand, randn,
                       tensor, zeros, zeros_like)
from .ops import (abs, amax, argmax, argmin, cat, clamp, clip, exp, flatten, log, matmul,
                  max, maximum, mean, min, minimum, pad, permute, reshape, sqrt, squeeze,
                  stack, std, sum, transpose, unsqueeze, var, where)
from . import nn  # noqa: E402
from . import data, explain, gradcheck, manual, models, optim, regularization, train  # noqa: E402
from .errors import InputError  # noqa: E402
from .fileio import load, save  # noqa: E402  (md.save(state_dict, path), md.load(path))

float32, float64, int32, int64, bool_ = np.float32, np.float64, np.int32, np.int64, np.bool_

__version__ = "0.1.0"
