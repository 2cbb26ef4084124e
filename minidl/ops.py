"""Differentiable tensor operations: each forward with its backward beside it.

Rules every op here follows (the engine in autograd.py relies on them):
  * forward receives ndarrays (and plain Python values) and returns an ndarray;
  * backward returns one gradient per positional input, None where
    ``self.needs_input_grad`` says nobody needs it;
  * backward never modifies ``grad`` in place (it may be shared or read-only);
  * broadcasting is undone by the engine (``autograd.unbroadcast``), not here.
"""
from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from .autograd import Function, Tensor, _as_array, _unwrap_index
from .kernels import matmul as _matmul  # numpy's, on one BLAS thread when small

# ------------------------------------------------------------------ arithmetic


class Add(Function):
    saves_inputs = False

    def forward(self, a, b):
        return np.add(a, b)

    def backward(self, grad):
        return grad, grad


class Sub(Function):
    saves_inputs = False

    def forward(self, a, b):
        return np.subtract(a, b)

    def backward(self, grad):
        return grad, (-grad if self.needs_input_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.multiply(a, b)

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        return (grad * self.b if need_a else None), (grad * self.a if need_b else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.divide(a, b)

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        grad_a = grad / self.b if need_a else None
        grad_b = -grad * self.a / (self.b * self.b) if need_b else None
        return grad_a, grad_b


class Pow(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = np.power(a, b)
        return self.out

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        grad_a = grad * self.b * np.power(self.a, self.b - 1) if need_a else None
        # d(a^b)/db = a^b log a; torch sets it to 0 where a == 0 (and b >= 0).
        grad_b = None
        if need_b:
            with np.errstate(divide="ignore", invalid="ignore"):
                log_a = np.where(self.a == 0, 0.0, np.log(self.a))
            grad_b = grad * self.out * log_a
        return grad_a, grad_b


class Neg(Function):
    saves_inputs = False

    def forward(self, a):
        return np.negative(a)

    def backward(self, grad):
        return -grad


class MatMul(Function):
    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul needs tensors of at least one dimension; use * for scalars")
        self.a, self.b = a, b
        return _matmul(a, b)

    def backward(self, grad):
        a, b = self.a, self.b
        need_a, need_b = self.needs_input_grad
        if a.ndim == 1 and b.ndim == 1:  # a dot product
            return (grad * b if need_a else None), (grad * a if need_b else None)
        # Treat vectors as matrices (a row for a, a column for b), then undo it.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = grad
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        grad_a = grad_b = None
        if need_a:
            grad_a = _matmul(g2, np.swapaxes(b2, -1, -2))
            if a.ndim == 1:
                grad_a = grad_a.sum(axis=tuple(range(grad_a.ndim - 2))).reshape(a.shape) \
                    if grad_a.ndim > 2 else grad_a.reshape(a.shape)
        if need_b:
            grad_b = _matmul(np.swapaxes(a2, -1, -2), g2)
            if b.ndim == 1:
                grad_b = grad_b.sum(axis=tuple(range(grad_b.ndim - 2))).reshape(b.shape) \
                    if grad_b.ndim > 2 else grad_b.reshape(b.shape)
        return grad_a, grad_b


# --------------------------------------------------------------- elementwise


class Exp(Function):
    def forward(self, a):
        self.out = np.exp(a)
        return self.out

    def backward(self, grad):
        return grad * self.out


class Log(Function):
    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, grad):
        return grad / self.a


class Sqrt(Function):
    def forward(self, a):
        self.out = np.sqrt(a)
        return self.out

    def backward(self, grad):
        return grad / (2 * self.out)


class Abs(Function):
    def forward(self, a):
        self.a = a
        return np.abs(a)

    def backward(self, grad):
        return grad * np.sign(self.a)  # torch's choice at 0: gradient 0


class Clip(Function):
    def forward(self, a, low=None, high=None):
        self.a, self.low, self.high = a, low, high
        return np.clip(a, low, high)

    def backward(self, grad):
        inside = np.ones(self.a.shape, dtype=bool)
        if self.low is not None:
            inside &= self.a >= self.low
        if self.high is not None:
            inside &= self.a <= self.high
        return grad * inside


class Maximum(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.maximum(a, b)

    def backward(self, grad):
        # As torch: the gradient goes to the larger input, split in half on ties.
        share_a = (self.a > self.b) + 0.5 * (self.a == self.b)
        need_a, need_b = self.needs_input_grad
        return (grad * share_a if need_a else None), (grad * (1 - share_a) if need_b else None)


class Minimum(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.minimum(a, b)

    def backward(self, grad):
        share_a = (self.a < self.b) + 0.5 * (self.a == self.b)
        need_a, need_b = self.needs_input_grad
        return (grad * share_a if need_a else None), (grad * (1 - share_a) if need_b else None)


class Where(Function):
    def forward(self, condition, a, b):
        self.condition = condition
        return np.where(condition, a, b)

    def backward(self, grad):
        zero = np.zeros((), dtype=grad.dtype)
        _, need_a, need_b = self.needs_input_grad
        return (None,
                np.where(self.condition, grad, zero) if need_a else None,
                np.where(self.condition, zero, grad) if need_b else None)


class Cast(Function):
    saves_inputs = False

    def forward(self, a, dtype):
        return a.astype(dtype)

    def backward(self, grad):
        return grad  # the engine casts it back to the input's dtype


class Clone(Function):
    saves_inputs = False

    def forward(self, a):
        return a.copy()

    def backward(self, grad):
        return grad


# ----------------------------------------------------------------- reductions


def _axes(dim, ndim):
    """torch's ``dim`` (int, tuple or None) as a tuple of non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    for d in dims:
        if not -ndim <= d < builtins.max(ndim, 1):
            raise IndexError(f"dimension {d} is out of range for a tensor of {ndim} dimensions")
    return tuple(sorted(d % builtins.max(ndim, 1) for d in dims))


def _expand_back(grad, shape, axes, keepdim):
    """Broadcast a reduced gradient back over the reduced axes (a read-only view)."""
    if not keepdim:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


class Sum(Function):
    saves_inputs = False

    def forward(self, a, axes, keepdim):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        return np.sum(a, axis=axes, keepdims=keepdim)

    def backward(self, grad):
        return _expand_back(grad, self.shape, self.axes, self.keepdim)


class Mean(Function):
    saves_inputs = False

    def forward(self, a, axes, keepdim):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        self.count = int(np.prod([a.shape[i] for i in axes]))
        return np.mean(a, axis=axes, keepdims=keepdim)

    def backward(self, grad):
        return _expand_back(grad / self.count, self.shape, self.axes, self.keepdim)


class Var(Function):
    def forward(self, a, axes, keepdim, correction):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        self.centered = a - a.mean(axis=axes, keepdims=True)
        self.dof = builtins.max(int(np.prod([a.shape[i] for i in axes])) - correction, 0)
        return np.sum(self.centered ** 2, axis=axes, keepdims=keepdim) / self.dof

    def backward(self, grad):
        grad = _expand_back(grad, self.shape, self.axes, self.keepdim)
        return grad * (2.0 / self.dof) * self.centered


class AMax(Function):
    """Max (or min) over all elements or over several axes; ties share the gradient."""

    def forward(self, a, axes, keepdim, largest=True):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        out = np.amax(a, axis=axes, keepdims=True) if largest else np.amin(a, axis=axes, keepdims=True)
        self.winners = a == out
        return out if keepdim else np.squeeze(out, axis=axes)

    def backward(self, grad):
        count = self.winners.sum(axis=self.axes, keepdims=True)
        grad = _expand_back(grad, self.shape, self.axes, self.keepdim)
        return grad * self.winners / count


class ArgReduce(Function):
    """Max (or min) along one dimension; the gradient goes to the chosen index."""

    def forward(self, a, axis, keepdim, indices):
        self.shape, self.axis, self.keepdim, self.indices = a.shape, axis, keepdim, indices
        out = np.take_along_axis(a, np.expand_dims(indices, axis), axis=axis)
        return out if keepdim else np.squeeze(out, axis=axis)

    def backward(self, grad):
        full = np.zeros(self.shape, dtype=grad.dtype)
        if not self.keepdim:
            grad = np.expand_dims(grad, self.axis)
        np.put_along_axis(full, np.expand_dims(self.indices, self.axis), grad, axis=self.axis)
        return full


# --------------------------------------------------------------------- shape


class Reshape(Function):
    saves_inputs = False

    def forward(self, a, shape):
        self.in_shape = a.shape
        return np.reshape(a, shape)

    def backward(self, grad):
        return np.reshape(grad, self.in_shape)


class Permute(Function):
    saves_inputs = False

    def forward(self, a, axes):
        self.inverse = np.argsort(axes)
        return np.transpose(a, axes)

    def backward(self, grad):
        return np.transpose(grad, self.inverse)


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice, type(None), type(Ellipsis))) for i in items)


class GetItem(Function):
    saves_inputs = False

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, grad):
        full = np.zeros(self.shape, dtype=grad.dtype)
        if _is_basic_index(self.index):
            full[self.index] = grad
        else:
            # Integer arrays may name an element twice; add.at sums both contributions.
            np.add.at(full, self.index, grad)
        return full


class Cat(Function):
    saves_inputs = False

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.splits = np.cumsum([a.shape[axis] for a in arrays])[:-1]
        return np.concatenate(arrays, axis=axis)

    def backward(self, grad):
        return tuple(np.split(grad, self.splits, axis=self.axis))


class Stack(Function):
    saves_inputs = False

    def forward(self, *arrays, axis=0):
        self.axis = axis
        return np.stack(arrays, axis=axis)

    def backward(self, grad):
        return tuple(np.moveaxis(grad, self.axis, 0))


class Pad(Function):
    saves_inputs = False

    """Constant padding with torch's ``F.pad`` order: (left, right) of the last
    dimension first, then (top, bottom) of the one before, and so on."""

    def forward(self, a, pad, value=0.0):
        if len(pad) % 2 or len(pad) // 2 > a.ndim:
            raise ValueError(f"pad {pad} must hold two numbers per padded dimension "
                             f"(at most {a.ndim} dimensions)")
        widths = [(0, 0)] * a.ndim
        for i in range(len(pad) // 2):
            widths[a.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
        if any(lo < 0 or hi < 0 for lo, hi in widths):
            raise ValueError(f"negative padding {pad} is not supported")
        self.slices = tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, a.shape))
        return np.pad(a, widths, mode="constant", constant_values=value)

    def backward(self, grad):
        return grad[self.slices]


# ------------------------------------------------------- user-facing functions


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def add(a, b):
    return Add.apply(a, b)


def sub(a, b):
    return Sub.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)


def div(a, b):
    return Div.apply(a, b)


def pow(a, b):  # noqa: A001  (torch's name)
    return Pow.apply(a, b)


def neg(a):
    return Neg.apply(a)


def matmul(a, b):
    return MatMul.apply(a, b)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


def abs(a):  # noqa: A001
    return Abs.apply(a)


def clip(a, min=None, max=None):  # noqa: A002  (torch's names)
    if min is None and max is None:
        raise ValueError("clip needs at least one of min and max")
    return Clip.apply(a, low=min, high=max)


clamp = clip


def maximum(a, b):
    return Maximum.apply(a, b)


def minimum(a, b):
    return Minimum.apply(a, b)


def where(condition, a, b):
    return Where.apply(_as_array(condition).astype(bool), a, b)


def cast(a, dtype):
    return Cast.apply(a, dtype=np.dtype(dtype))


def clone(a):
    return Clone.apply(a)


def _dim(dim, axis):
    return axis if dim is None else dim


def sum(a, dim=None, keepdim=False, axis=None):  # noqa: A001
    a = _tensor(a)
    return Sum.apply(a, axes=_axes(_dim(dim, axis), a.ndim), keepdim=keepdim)


def mean(a, dim=None, keepdim=False, axis=None):
    a = _tensor(a)
    return Mean.apply(a, axes=_axes(_dim(dim, axis), a.ndim), keepdim=keepdim)


def var(a, dim=None, keepdim=False, correction=1, unbiased=None, axis=None):
    """Variance; like torch, the unbiased estimate (divide by n - 1) by default."""
    a = _tensor(a)
    if unbiased is not None:
        correction = 1 if unbiased else 0
    return Var.apply(a, axes=_axes(_dim(dim, axis), a.ndim), keepdim=keepdim, correction=correction)


def std(a, dim=None, keepdim=False, correction=1, unbiased=None, axis=None):
    return sqrt(var(a, dim, keepdim, correction, unbiased, axis))


ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _extreme(a, dim, keepdim, largest):
    a = _tensor(a)
    if dim is None:
        return AMax.apply(a, axes=_axes(None, a.ndim), keepdim=False, largest=largest)
    if not isinstance(dim, (int, np.integer)):  # several axes: values only, like torch.amax
        return AMax.apply(a, axes=_axes(dim, a.ndim), keepdim=keepdim, largest=largest)
    axis = _axes(dim, a.ndim)[0]
    indices = np.argmax(a.data, axis=axis) if largest else np.argmin(a.data, axis=axis)
    values = ArgReduce.apply(a, axis=axis, keepdim=keepdim, indices=indices)
    return ValuesIndices(values, Tensor(np.expand_dims(indices, axis) if keepdim else indices))


def max(a, dim=None, keepdim=False, axis=None):  # noqa: A001
    """Without ``dim`` the largest element; with an int ``dim`` (values, indices) as in torch."""
    return _extreme(a, _dim(dim, axis), keepdim, largest=True)


def min(a, dim=None, keepdim=False, axis=None):  # noqa: A001
    return _extreme(a, _dim(dim, axis), keepdim, largest=False)


def amax(a, dim=None, keepdim=False):
    a = _tensor(a)
    return AMax.apply(a, axes=_axes(dim, a.ndim), keepdim=keepdim, largest=True)


def argmax(a, dim=None, keepdim=False):
    data = _as_array(a)
    if dim is None:
        return Tensor(np.asarray(np.argmax(data)))
    return Tensor(np.argmax(data, axis=dim, keepdims=keepdim))


def argmin(a, dim=None, keepdim=False):
    data = _as_array(a)
    if dim is None:
        return Tensor(np.asarray(np.argmin(data)))
    return Tensor(np.argmin(data, axis=dim, keepdims=keepdim))


def reshape(a, *shape):
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Reshape.apply(a, shape=shape)


def permute(a, *dims):
    dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    a = _tensor(a)
    if sorted(d % a.ndim for d in dims) != list(range(a.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the {a.ndim} dimensions")
    return Permute.apply(a, axes=tuple(d % a.ndim for d in dims))


def transpose(a, dim0, dim1):
    a = _tensor(a)
    axes = list(range(a.ndim))
    axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
    return Permute.apply(a, axes=tuple(axes))


def flatten(a, start_dim=0, end_dim=-1):
    a = _tensor(a)
    if a.ndim == 0:
        return reshape(a, 1)
    start, end = start_dim % a.ndim, end_dim % a.ndim
    shape = a.shape[:start] + (-1,) + a.shape[end + 1:]
    return reshape(a, shape)


def squeeze(a, dim=None):
    a = _tensor(a)
    if dim is None:
        shape = tuple(n for n in a.shape if n != 1)
    else:
        axes = _axes(dim, a.ndim)
        shape = tuple(n for i, n in enumerate(a.shape) if not (i in axes and n == 1))
    return reshape(a, shape)


def unsqueeze(a, dim):
    a = _tensor(a)
    dim = dim % (a.ndim + 1)
    return reshape(a, a.shape[:dim] + (1,) + a.shape[dim:])


def getitem(a, index):
    return GetItem.apply(a, index=_unwrap_index(index))


def cat(tensors, dim=0):
    tensors = [_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    return Cat.apply(*tensors, axis=dim % tensors[0].ndim)


concatenate = cat


def stack(tensors, dim=0):
    tensors = [_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    return Stack.apply(*tensors, axis=dim % (tensors[0].ndim + 1))


def pad(a, pad, value=0.0):  # noqa: A002
    return Pad.apply(a, pad=tuple(pad), value=value)


# ------------------------------------------------------- Tensor methods


def _comparison(ufunc):
    def compare(self, other):
        return Tensor(ufunc(self.data, _as_array(other)))
    return compare


def _nn(name):
    """Activations live in nn.functional; imported late to avoid a cycle."""
    def method(self, *args, **kwargs):
        from .nn import functional as F
        return getattr(F, name)(self, *args, **kwargs)
    method.__name__ = name
    return method


_METHODS = {
    "__add__": lambda s, o: Add.apply(s, o),
    "__radd__": lambda s, o: Add.apply(o, s),
    "__sub__": lambda s, o: Sub.apply(s, o),
    "__rsub__": lambda s, o: Sub.apply(o, s),
    "__mul__": lambda s, o: Mul.apply(s, o),
    "__rmul__": lambda s, o: Mul.apply(o, s),
    "__truediv__": lambda s, o: Div.apply(s, o),
    "__rtruediv__": lambda s, o: Div.apply(o, s),
    "__pow__": lambda s, o: Pow.apply(s, o),
    "__rpow__": lambda s, o: Pow.apply(o, s),
    "__matmul__": lambda s, o: MatMul.apply(s, o),
    "__rmatmul__": lambda s, o: MatMul.apply(o, s),
    "__neg__": lambda s: Neg.apply(s),
    "__getitem__": getitem,
    "__eq__": _comparison(np.equal),
    "__ne__": _comparison(np.not_equal),
    "__lt__": _comparison(np.less),
    "__le__": _comparison(np.less_equal),
    "__gt__": _comparison(np.greater),
    "__ge__": _comparison(np.greater_equal),
    "__hash__": object.__hash__,  # defining __eq__ would otherwise make tensors unhashable
    "add": add, "sub": sub, "mul": mul, "div": div, "pow": pow, "matmul": matmul,
    "exp": exp, "log": log, "sqrt": sqrt, "abs": abs, "clip": clip, "clamp": clip,
    "sum": sum, "mean": mean, "var": var, "std": std, "max": max, "min": min, "amax": amax,
    "argmax": argmax, "argmin": argmin,
    "reshape": reshape, "view": reshape, "permute": permute, "transpose": transpose,
    "flatten": flatten, "squeeze": squeeze, "unsqueeze": unsqueeze,
    "relu": _nn("relu"), "sigmoid": _nn("sigmoid"), "tanh": _nn("tanh"),
    "softmax": _nn("softmax"), "log_softmax": _nn("log_softmax"),
}
for _name, _method in _METHODS.items():
    setattr(Tensor, _name, _method)
Tensor.T = property(lambda self: permute(self, tuple(range(self.ndim))[::-1]))
