"""Differentiable tensor operations, one block per op: the Function class (forward
with its backward beside it), then the function you call, which ``tensor_method``
also makes a ``Tensor`` method where torch has one.

Rules every op here follows (the engine in autograd.py relies on them):
  * forward receives ndarrays (and plain Python values) and returns an ndarray;
  * backward returns one gradient per positional input, None where
    ``self.needs_input_grad`` says nobody needs it;
  * backward never modifies ``grad`` in place (it may be shared or read-only);
  * broadcasting is undone by the engine (``autograd.unbroadcast``), not here:
    a gradient may come back in the broadcast shape (see ``Function``).
"""
from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from .autograd import DEFAULT_DTYPE, Function, Tensor, _as_array, _unwrap_index, tensor_method
from .threads import matmul as _matmul  # numpy's, on one BLAS thread when small


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


# ------------------------------------------------------------------ dtypes
# NumPy and torch promote dtypes differently: NumPy makes int64 / 2 and int64 * 0.5
# float64, and float32 * a float64 0-d array float64; torch makes them float32. The
# binary ops follow torch: the highest kind (bool < integer < floating) wins; within
# it, tensors with dimensions decide over 0-d ones, and those over Python numbers,
# which only bring their kind (a float: float32, torch's default; an int: int64).
_KINDS = {"b": 0, "u": 1, "i": 1, "f": 2}
_DEFAULTS = (np.dtype(np.bool_), np.dtype(np.int64), np.dtype(DEFAULT_DTYPE))


def _kind_and_rank(x):
    """(kind, rank): rank 2 for a tensor with dimensions, 1 for a 0-d one, 0 for a number."""
    if isinstance(x, (Tensor, np.ndarray)):
        return _KINDS.get(x.dtype.kind, 2), (2 if x.ndim else 1)
    if isinstance(x, (bool, np.bool_)):
        return 0, 0
    if isinstance(x, (int, np.integer)):
        return 1, 0
    return 2, 0


def result_type(*operands):
    """The dtype torch gives a binary op on these operands (tensors, arrays, numbers)."""
    ranked = [(*_kind_and_rank(x), x) for x in operands]
    kind = builtins.max(k for k, _, _ in ranked)
    rank = builtins.max(r for k, r, _ in ranked if k == kind)
    if rank == 0:
        return _DEFAULTS[kind]
    return np.result_type(*(x.dtype for k, r, x in ranked if k == kind and r == rank))


def _promoted(*operands, floating=False):
    """The operands, tensors and arrays cast to their torch result dtype (a float one
    when ``floating``, as for division); numbers stay, NumPy keeps their kind out."""
    dtype = result_type(*operands)
    if floating and dtype.kind != "f":
        dtype = _DEFAULTS[2]
    return tuple(cast(x, dtype) if isinstance(x, (Tensor, np.ndarray)) and x.dtype != dtype else x
                 for x in operands)


def _floating(a):
    """``a`` as a float tensor for exp, log, sqrt: an integer one becomes float32, as in torch."""
    a = _tensor(a)
    return a if a.dtype.kind == "f" else cast(a, DEFAULT_DTYPE)


# ------------------------------------------------------------------ arithmetic


class AddFn(Function):
    saves_inputs = False

    def forward(self, a, b):
        return np.add(a, b)

    def backward(self, grad):
        return grad, grad


@tensor_method("add", "__add__", reflected="__radd__")
def add(a, b):
    return AddFn.apply(*_promoted(a, b))


class SubFn(Function):
    saves_inputs = False

    def forward(self, a, b):
        return np.subtract(a, b)

    def backward(self, grad):
        return grad, (-grad if self.needs_input_grad[1] else None)


@tensor_method("sub", "__sub__", reflected="__rsub__")
def sub(a, b):
    return SubFn.apply(*_promoted(a, b))


class MulFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.multiply(a, b)

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        return (grad * self.b if need_a else None), (grad * self.a if need_b else None)


@tensor_method("mul", "__mul__", reflected="__rmul__")
def mul(a, b):
    return MulFn.apply(*_promoted(a, b))


class DivFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.divide(a, b)

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        grad_a = grad / self.b if need_a else None
        grad_b = -grad * self.a / (self.b * self.b) if need_b else None
        return grad_a, grad_b


@tensor_method("div", "__truediv__", reflected="__rtruediv__")
def div(a, b):
    return DivFn.apply(*_promoted(a, b, floating=True))  # int / int is float32, as in torch


class PowFn(Function):
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


@tensor_method("pow", "__pow__", reflected="__rpow__")
def pow(a, b):  # noqa: A001  (torch's name)
    return PowFn.apply(*_promoted(a, b))


class NegFn(Function):
    saves_inputs = False

    def forward(self, a):
        return np.negative(a)

    def backward(self, grad):
        return -grad


@tensor_method("__neg__")
def neg(a):
    return NegFn.apply(a)


class MatMulFn(Function):
    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul needs tensors of at least one dimension; use * for scalars")
        self.a, self.b = a, b
        out = _matmul(a, b)
        if a.ndim > 2 or b.ndim > 2:
            # The batch dimensions broadcast; each gradient comes back with all of
            # them and the engine sums it to its input's shape.
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            self.broadcast_shapes = (batch + a.shape[-2:], batch + b.shape[-2:])
        return out

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
                grad_a = grad_a[..., 0, :]
        if need_b:
            grad_b = _matmul(np.swapaxes(a2, -1, -2), g2)
            if b.ndim == 1:
                grad_b = grad_b[..., 0]
        return grad_a, grad_b


@tensor_method("matmul", "__matmul__", reflected="__rmatmul__")
def matmul(a, b):
    return MatMulFn.apply(a, b)


# --------------------------------------------------------------- elementwise


class ExpFn(Function):
    def forward(self, a):
        self.out = np.exp(a)
        return self.out

    def backward(self, grad):
        return grad * self.out


@tensor_method()
def exp(a):
    return ExpFn.apply(_floating(a))


class LogFn(Function):
    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, grad):
        return grad / self.a


@tensor_method()
def log(a):
    return LogFn.apply(_floating(a))


class SqrtFn(Function):
    def forward(self, a):
        self.out = np.sqrt(a)
        return self.out

    def backward(self, grad):
        return grad / (2 * self.out)


@tensor_method()
def sqrt(a):
    return SqrtFn.apply(_floating(a))


class AbsFn(Function):
    def forward(self, a):
        self.a = a
        return np.abs(a)

    def backward(self, grad):
        return grad * np.sign(self.a)  # torch's choice at 0: gradient 0


@tensor_method()
def abs(a):  # noqa: A001
    return AbsFn.apply(a)


class ClipFn(Function):
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


@tensor_method("clip", "clamp")
def clip(a, min=None, max=None):  # noqa: A002  (torch's names)
    if min is None and max is None:
        raise ValueError("clip needs at least one of min and max")
    return ClipFn.apply(a, low=min, high=max)


clamp = clip


class MaximumFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.maximum(a, b)

    def backward(self, grad):
        # As torch: the gradient goes to the larger input, split in half on ties.
        share_a = (self.a > self.b) + 0.5 * (self.a == self.b)
        need_a, need_b = self.needs_input_grad
        return (grad * share_a if need_a else None), (grad * (1 - share_a) if need_b else None)


def maximum(a, b):
    return MaximumFn.apply(*_promoted(a, b))


class MinimumFn(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return np.minimum(a, b)

    def backward(self, grad):
        share_a = (self.a < self.b) + 0.5 * (self.a == self.b)
        need_a, need_b = self.needs_input_grad
        return (grad * share_a if need_a else None), (grad * (1 - share_a) if need_b else None)


def minimum(a, b):
    return MinimumFn.apply(*_promoted(a, b))


class WhereFn(Function):
    def forward(self, condition, a, b):
        self.condition = condition
        return np.where(condition, a, b)

    def backward(self, grad):
        zero = np.zeros((), dtype=grad.dtype)
        _, need_a, need_b = self.needs_input_grad
        return (None,
                np.where(self.condition, grad, zero) if need_a else None,
                np.where(self.condition, zero, grad) if need_b else None)


def where(condition, a, b):
    return WhereFn.apply(_as_array(condition).astype(bool), *_promoted(a, b))


class CastFn(Function):
    saves_inputs = False

    def forward(self, a, dtype):
        return a.astype(dtype)

    def backward(self, grad):
        return grad  # the engine casts it back to the input's dtype


@tensor_method("astype")
def cast(a, dtype):
    return CastFn.apply(a, dtype=np.dtype(dtype))


@tensor_method("float")
def _to_float32(a):
    return cast(a, np.float32)


@tensor_method("double")
def _to_float64(a):
    return cast(a, np.float64)


@tensor_method("long")
def _to_int64(a):
    return cast(a, np.int64)


@tensor_method("int")
def _to_int32(a):
    return cast(a, np.int32)


@tensor_method("to")
def to(a, dtype=None, device=None):
    """``x.to(md.float64)``; minidl runs on the CPU only, so a device must be "cpu"."""
    if isinstance(dtype, str) and dtype.split(":")[0] in ("cpu", "cuda", "mps"):
        dtype, device = None, dtype
    if device not in (None, "cpu"):
        raise ValueError(f"minidl computes on the CPU only, not on {device!r}; "
                         "use reference_torch for a GPU")
    if dtype is None or np.dtype(dtype) == a.dtype:
        return a
    return cast(a, dtype)


class CloneFn(Function):
    saves_inputs = False

    def forward(self, a):
        return a.copy()

    def backward(self, grad):
        return grad


@tensor_method()
def clone(a):
    return CloneFn.apply(a)


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


def _dim(dim, axis):
    """``dim`` (torch's name) or ``axis`` (numpy's), whichever was given."""
    return axis if dim is None else dim


def _expand_back(grad, shape, axes, keepdim):
    """Broadcast a reduced gradient back over the reduced axes (a read-only view)."""
    if not keepdim:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, shape)


class SumFn(Function):
    saves_inputs = False

    def forward(self, a, axes, keepdim):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        return np.sum(a, axis=axes, keepdims=keepdim)

    def backward(self, grad):
        return _expand_back(grad, self.shape, self.axes, self.keepdim)


@tensor_method()
def sum(a, dim=None, keepdim=False, axis=None):  # noqa: A001
    a = _tensor(a)
    return SumFn.apply(a, axes=_axes(_dim(dim, axis), a.ndim), keepdim=keepdim)


class MeanFn(Function):
    saves_inputs = False

    def forward(self, a, axes, keepdim):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        self.count = int(np.prod([a.shape[i] for i in axes]))
        return np.mean(a, axis=axes, keepdims=keepdim)

    def backward(self, grad):
        return _expand_back(grad / self.count, self.shape, self.axes, self.keepdim)


@tensor_method()
def mean(a, dim=None, keepdim=False, axis=None):
    a = _tensor(a)
    return MeanFn.apply(a, axes=_axes(_dim(dim, axis), a.ndim), keepdim=keepdim)


class VarFn(Function):
    def forward(self, a, axes, keepdim, correction):
        self.shape, self.axes, self.keepdim = a.shape, axes, keepdim
        self.centered = a - a.mean(axis=axes, keepdims=True)
        self.dof = builtins.max(int(np.prod([a.shape[i] for i in axes])) - correction, 0)
        return np.sum(self.centered ** 2, axis=axes, keepdims=keepdim) / self.dof

    def backward(self, grad):
        grad = _expand_back(grad, self.shape, self.axes, self.keepdim)
        return grad * (2.0 / self.dof) * self.centered


@tensor_method()
def var(a, dim=None, keepdim=False, correction=1, unbiased=None, axis=None):
    """Variance; like torch, the unbiased estimate (divide by n - 1) by default."""
    a = _tensor(a)
    if unbiased is not None:
        correction = 1 if unbiased else 0
    return VarFn.apply(a, axes=_axes(_dim(dim, axis), a.ndim), keepdim=keepdim,
                       correction=correction)


@tensor_method()
def std(a, dim=None, keepdim=False, correction=1, unbiased=None, axis=None):
    return sqrt(var(a, dim, keepdim, correction, unbiased, axis))


class AMaxFn(Function):
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


@tensor_method()
def amax(a, dim=None, keepdim=False):
    a = _tensor(a)
    return AMaxFn.apply(a, axes=_axes(dim, a.ndim), keepdim=keepdim, largest=True)


class ArgReduceFn(Function):
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


ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _extreme(a, dim, keepdim, largest):
    a = _tensor(a)
    if dim is None:
        return AMaxFn.apply(a, axes=_axes(None, a.ndim), keepdim=False, largest=largest)
    if not isinstance(dim, (int, np.integer)):  # several axes: values only, like torch.amax
        return AMaxFn.apply(a, axes=_axes(dim, a.ndim), keepdim=keepdim, largest=largest)
    axis = _axes(dim, a.ndim)[0]
    indices = np.argmax(a.data, axis=axis) if largest else np.argmin(a.data, axis=axis)
    values = ArgReduceFn.apply(a, axis=axis, keepdim=keepdim, indices=indices)
    return ValuesIndices(values, Tensor(np.expand_dims(indices, axis) if keepdim else indices))


@tensor_method()
def max(a, dim=None, keepdim=False, axis=None):  # noqa: A001
    """Without ``dim`` the largest element; with an int ``dim`` (values, indices) as in torch."""
    return _extreme(a, _dim(dim, axis), keepdim, largest=True)


@tensor_method()
def min(a, dim=None, keepdim=False, axis=None):  # noqa: A001
    return _extreme(a, _dim(dim, axis), keepdim, largest=False)


# any and all: booleans, outside the graph (what bool() of a tensor points to)
@tensor_method("any")
def any_(a, dim=None, keepdim=False):
    return Tensor(np.any(_as_array(a), axis=dim, keepdims=keepdim))


@tensor_method("all")
def all_(a, dim=None, keepdim=False):
    return Tensor(np.all(_as_array(a), axis=dim, keepdims=keepdim))


# argmax and argmin have no gradient: plain functions on the data.
def _arg_reduce(reduce, a, dim, keepdim):
    data = _as_array(a)
    if dim is None:
        return Tensor(np.asarray(reduce(data)))
    return Tensor(reduce(data, axis=dim, keepdims=keepdim))


@tensor_method()
def argmax(a, dim=None, keepdim=False):
    return _arg_reduce(np.argmax, a, dim, keepdim)


@tensor_method()
def argmin(a, dim=None, keepdim=False):
    return _arg_reduce(np.argmin, a, dim, keepdim)


# --------------------------------------------------------------------- shape


class ReshapeFn(Function):
    saves_inputs = False

    def forward(self, a, shape):
        self.in_shape = a.shape
        return np.reshape(a, shape)

    def backward(self, grad):
        return np.reshape(grad, self.in_shape)


@tensor_method("reshape", "view")
def reshape(a, *shape):
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return ReshapeFn.apply(a, shape=shape)


@tensor_method()
def flatten(a, start_dim=0, end_dim=-1):
    a = _tensor(a)
    if a.ndim == 0:
        return reshape(a, 1)
    start, end = start_dim % a.ndim, end_dim % a.ndim
    shape = a.shape[:start] + (-1,) + a.shape[end + 1:]
    return reshape(a, shape)


@tensor_method()
def squeeze(a, dim=None):
    a = _tensor(a)
    if dim is None:
        shape = tuple(n for n in a.shape if n != 1)
    else:
        axes = _axes(dim, a.ndim)
        shape = tuple(n for i, n in enumerate(a.shape) if not (i in axes and n == 1))
    return reshape(a, shape)


@tensor_method()
def unsqueeze(a, dim):
    a = _tensor(a)
    dim = dim % (a.ndim + 1)
    return reshape(a, a.shape[:dim] + (1,) + a.shape[dim:])


class PermuteFn(Function):
    saves_inputs = False

    def forward(self, a, axes):
        self.inverse = np.argsort(axes)
        return np.transpose(a, axes)

    def backward(self, grad):
        return np.transpose(grad, self.inverse)


@tensor_method()
def permute(a, *dims):
    dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    a = _tensor(a)
    if sorted(d % a.ndim for d in dims) != list(range(a.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the {a.ndim} dimensions")
    return PermuteFn.apply(a, axes=tuple(d % a.ndim for d in dims))


@tensor_method()
def transpose(a, dim0, dim1):
    a = _tensor(a)
    axes = list(range(a.ndim))
    axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
    return PermuteFn.apply(a, axes=tuple(axes))


Tensor.T = property(lambda self: permute(self, tuple(range(self.ndim))[::-1]))


@tensor_method("t")
def t(a):
    """torch's ``x.t()``: the transpose of a matrix; 0-d and 1-d tensors come back as they are."""
    a = _tensor(a)
    if a.ndim > 2:
        raise ValueError(f"t() expects a tensor of at most 2 dimensions, got shape {a.shape}; "
                         "use transpose(dim0, dim1) or permute")
    return a if a.ndim < 2 else transpose(a, 0, 1)


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice, type(None), type(Ellipsis))) for i in items)


class GetItemFn(Function):
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


@tensor_method("__getitem__")
def getitem(a, index):
    return GetItemFn.apply(a, index=_unwrap_index(index))


class CatFn(Function):
    saves_inputs = False

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.splits = np.cumsum([a.shape[axis] for a in arrays])[:-1]
        return np.concatenate(arrays, axis=axis)

    def backward(self, grad):
        return tuple(np.split(grad, self.splits, axis=self.axis))


def cat(tensors, dim=0):
    tensors = [_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    return CatFn.apply(*tensors, axis=dim % tensors[0].ndim)


class StackFn(Function):
    saves_inputs = False

    def forward(self, *arrays, axis=0):
        self.axis = axis
        return np.stack(arrays, axis=axis)

    def backward(self, grad):
        return tuple(np.moveaxis(grad, self.axis, 0))


def stack(tensors, dim=0):
    tensors = [_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    return StackFn.apply(*tensors, axis=dim % (tensors[0].ndim + 1))


class PadFn(Function):
    """Constant padding with torch's ``F.pad`` order: (left, right) of the last
    dimension first, then (top, bottom) of the one before, and so on."""

    saves_inputs = False

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


def pad(a, pad, value=0.0):  # noqa: A002
    return PadFn.apply(a, pad=tuple(pad), value=value)
