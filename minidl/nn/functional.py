"""Neural-network functions (``import minidl.nn.functional as F``): activations,
linear, dropout, batch norm and losses. One block per op, as in ``minidl/ops.py``:
the Function class (forward with its backward beside it), then the function you
call; activations with a torch ``Tensor`` method get it from ``tensor_method``.

Convolution and pooling live in ``minidl/conv.py`` and are re-exported here
(``F.conv2d``, ``F.max_pool2d``, ...), as is ``F.pad`` from ``minidl/ops.py``.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from .. import autograd, kernels
from ..autograd import Function, Tensor, _as_array, tensor_method
from ..conv import (adaptive_avg_pool2d, avg_pool2d, conv2d,  # noqa: F401  (torch's F names)
                    conv_transpose2d, max_pool2d)
from ..ops import pad  # noqa: F401
from ..threads import matmul

# ---------------------------------------------------------------- activations


class ReLUFn(Function):
    saves_inputs = False  # backward reads the output only

    def forward(self, x):
        self.out = np.maximum(x, 0)
        return self.out

    def backward(self, grad):
        out = self.out
        if out.ndim and grad.flags.c_contiguous and out.flags.c_contiguous:  # (the kernel walks flat arrays)
            return kernels.relu_backward(grad, out, np.empty_like(out))
        return np.where(out > 0, grad, 0)


@tensor_method()
def relu(x):
    return ReLUFn.apply(x)


class LeakyReLUFn(Function):
    def forward(self, x, negative_slope):
        self.positive, self.slope = x > 0, negative_slope
        return np.where(self.positive, x, x * negative_slope)

    def backward(self, grad):
        return np.where(self.positive, grad, grad * self.slope)


def leaky_relu(x, negative_slope=0.01):
    return LeakyReLUFn.apply(x, negative_slope=negative_slope)


class ELUFn(Function):
    def forward(self, x, alpha):
        self.positive, self.alpha = x > 0, alpha
        self.out = np.where(self.positive, x, alpha * np.expm1(np.minimum(x, 0)))
        return self.out

    def backward(self, grad):
        # For x <= 0: d/dx alpha (e^x - 1) = alpha e^x = out + alpha.
        return np.where(self.positive, grad, grad * (self.out + self.alpha))


def elu(x, alpha=1.0):
    return ELUFn.apply(x, alpha=alpha)


class GELUFn(Function):
    """x Φ(x) exactly (erf), or torch's tanh approximation."""

    def forward(self, x, approximate):
        self.x, self.approximate = x, approximate
        if approximate == "tanh":
            self.inner = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))
            return 0.5 * x * (1 + self.inner)
        self.cdf = 0.5 * (1 + special.erf(x / np.sqrt(2)))
        return x * self.cdf

    def backward(self, grad):
        x = self.x
        if self.approximate == "tanh":
            d_inner = (1 - self.inner ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x ** 2)
            return grad * (0.5 * (1 + self.inner) + 0.5 * x * d_inner)
        pdf = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
        return grad * (self.cdf + x * pdf)


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELUFn.apply(x, approximate=approximate)


class SigmoidFn(Function):
    def forward(self, x):
        self.out = special.expit(x)  # no overflow for large |x|
        return self.out

    def backward(self, grad):
        return grad * self.out * (1 - self.out)


@tensor_method()
def sigmoid(x):
    return SigmoidFn.apply(x)


class TanhFn(Function):
    def forward(self, x):
        self.out = np.tanh(x)
        return self.out

    def backward(self, grad):
        return grad * (1 - self.out * self.out)


@tensor_method()
def tanh(x):
    return TanhFn.apply(x)


class SoftmaxFn(Function):
    def forward(self, x, axis):
        shifted = np.exp(x - x.max(axis=axis, keepdims=True))  # the max trick: no overflow
        self.out, self.axis = shifted / shifted.sum(axis=axis, keepdims=True), axis
        return self.out

    def backward(self, grad):
        return self.out * (grad - (grad * self.out).sum(axis=self.axis, keepdims=True))


@tensor_method()
def softmax(x, dim=-1):
    return SoftmaxFn.apply(x, axis=dim)


class LogSoftmaxFn(Function):
    def forward(self, x, axis):
        shifted = x - x.max(axis=axis, keepdims=True)
        self.out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        self.axis = axis
        return self.out

    def backward(self, grad):
        return grad - np.exp(self.out) * grad.sum(axis=self.axis, keepdims=True)


@tensor_method()
def log_softmax(x, dim=-1):
    return LogSoftmaxFn.apply(x, axis=dim)


# ------------------------------------------------------------ linear, dropout


class LinearFn(Function):
    """x @ weight.T + bias in one node: two GEMMs backward, none wasted."""

    def forward(self, x, weight, bias=None):
        if x.dtype.kind != "f":  # checked here, on the array, not in linear(): one call less
            _check_floating("linear", x)  # raises, naming the dtype
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"linear: input has {x.shape[-1]} features, weight {weight.shape} "
                             f"expects {weight.shape[1]}")
        self.x, self.weight = x, weight
        out = matmul(x, weight.T)
        if bias is not None:
            out += bias
        return out

    def backward(self, grad):
        need_x, need_w, need_b = (self.needs_input_grad + (False,))[:3]
        x2, g2 = self.x, grad
        if x2.ndim != 2:  # one sample or (batch..., features): the rows of a matrix
            x2, g2 = x2.reshape(-1, x2.shape[-1]), g2.reshape(-1, g2.shape[-1])
        grad_x = matmul(grad, self.weight) if need_x else None
        grad_w = matmul(g2.T, x2) if need_w else None
        # (np.add.reduce is what .sum() calls, without its Python wrapper in between)
        grad_b = np.add.reduce(g2, axis=0) if need_b else None
        return (grad_x, grad_w, grad_b)[:len(self.needs_input_grad)]


def _check_floating(where, x, what="input"):
    """Layers and losses compute in floating point; torch refuses integer inputs too
    (NumPy would silently compute them in float64)."""
    dtype = x.dtype if isinstance(x, (Tensor, np.ndarray)) else _as_array(x).dtype
    if dtype.kind != "f":
        raise TypeError(f"{where}: the {what} has dtype {dtype}; it must be a float tensor, "
                        "e.g. x.float() or md.tensor(data, dtype=md.float32)")


def linear(x, weight, bias=None):
    if bias is None:
        return LinearFn.apply(x, weight)
    return LinearFn.apply(x, weight, bias)


class DropoutFn(Function):
    def forward(self, x, p):
        keep = autograd.rng().random(x.shape, dtype=np.float32) >= p
        # Inverted dropout: scale at training time so evaluation needs no change.
        self.scale = keep.astype(x.dtype) / (1 - p)
        return x * self.scale

    def backward(self, grad):
        return grad * self.scale


def dropout(x, p=0.5, training=True):
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    return DropoutFn.apply(x, p=p)


# ---------------------------------------------------- embedding, layer norm


class EmbeddingFn(Function):
    """Rows of ``weight`` picked by integer ``indices``; the gradient of a row is the
    sum of the gradients of every place that picked it."""

    saves_inputs = False

    def forward(self, weight, *, indices):
        self.indices, self.shape = indices, weight.shape
        return weight[indices]

    def backward(self, grad):
        full = np.zeros(self.shape, dtype=grad.dtype)
        np.add.at(full, self.indices, grad)  # a row picked twice gets both contributions
        return full


def embedding(input, weight):  # noqa: A002  (torch's names)
    """torch's F.embedding: ``weight[input]`` for integer ids ``input`` of any shape."""
    indices = np.asarray(_as_array(input))
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"embedding: ids must be integers, got dtype {indices.dtype}")
    rows = _as_array(weight).shape[0]
    if indices.size and (indices.min() < 0 or indices.max() >= rows):
        raise IndexError(f"embedding: ids must be in 0..{rows - 1}, got {indices.min()}..{indices.max()}")
    return EmbeddingFn.apply(weight, indices=indices)


class LayerNormFn(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, the mean and (biased) variance
    over the last ``dims`` axes of each sample; weight and bias may be None."""

    def forward(self, x, weight=None, bias=None, *, dims, eps):
        axes = tuple(range(x.ndim - dims, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        self.inv_std = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
        self.xhat, self.weight, self.axes = (x - mean) * self.inv_std, weight, axes
        out = self.xhat if weight is None else self.xhat * weight
        return out if bias is None else out + bias

    def backward(self, grad):
        # dx = (g - mean(g) - x_hat * mean(g * x_hat)) / std with g = grad * weight, the
        # means over the normalised axes (each sample's mean and variance depend on all of them)
        need_x, need_w, need_b = (self.needs_input_grad + (False, False))[:3]
        lead = tuple(range(grad.ndim - len(self.axes)))  # the axes that are not normalised
        g = grad if self.weight is None else grad * self.weight
        grad_x = None
        if need_x:
            grad_x = self.inv_std * (g - g.mean(axis=self.axes, keepdims=True)
                                     - self.xhat * (g * self.xhat).mean(axis=self.axes, keepdims=True))
        grad_w = (grad * self.xhat).sum(axis=lead) if need_w else None
        grad_b = grad.sum(axis=lead) if need_b else None
        return (grad_x, grad_w, grad_b)[:len(self.needs_input_grad)]


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch's F.layer_norm: normalise over the last ``len(normalized_shape)`` axes."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    data = _as_array(x)
    if data.shape[data.ndim - len(shape):] != shape:
        raise ValueError(f"layer_norm: input of shape {data.shape} does not end in normalized_shape {shape}")
    inputs = [x] + [t for t in (weight, bias) if t is not None]
    if weight is None and bias is not None:
        raise ValueError("layer_norm: a bias without a weight is not supported; pass weight=ones")
    return LayerNormFn.apply(*inputs, dims=len(shape), eps=eps)


# -------------------------------------------------------------- batch norm


class BatchNormFn(Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias per channel (axis 1), with
    given float64 statistics of shape (C,); weight and bias may be None.

    Written out in NumPy for (N, C). Inputs with positions, (N, C, L) or
    (N, C, H, W), take a fast branch (as max-pool's 2x2 case does): numba
    kernels on the (N, C, positions) view fold the statistics and the affine
    parameters into one scale and one shift per channel and pass over memory
    once, forward and backward. Both branches compute the same formulas.
    """

    def forward(self, x, weight, bias, *, mean, var, eps, training):
        n, c = x.shape[:2]
        self.fast, self.training = x.ndim > 2, training
        self.inv_std = 1.0 / np.sqrt(var + eps)
        self.w = np.ones(c) if weight is None else weight.astype(np.float64)
        b = np.zeros(c) if bias is None else bias.astype(np.float64)
        if not self.fast:  # (N, C): the (C,) arrays broadcast over the rows
            self.xhat = (x - mean.astype(x.dtype)) * self.inv_std.astype(x.dtype)
            return self.xhat * self.w.astype(x.dtype) + b.astype(x.dtype)
        x3 = np.ascontiguousarray(x).reshape(n, c, -1)
        out = np.empty(x3.shape, dtype=x.dtype)
        # y = (x - mean) * (w / std) + b: one multiply-add per value.
        scale = (self.w * self.inv_std).astype(x.dtype)
        kernels.channel_normalize(x3, mean.astype(x.dtype), scale, b.astype(x.dtype), out)
        self.x3, self.mean, self.x_shape = x3, mean, x.shape
        return out.reshape(x.shape)

    def backward(self, grad):
        # dx = w/std * (g - mean(g) - x_hat * mean(g * x_hat)) in training (the batch
        # statistics depend on x too), just w/std * g in evaluation; dw = sum(g * x_hat)
        # and db = sum(g); means and sums run over everything but the channel axis.
        if self.fast:
            return self._backward_fast(grad)
        need_x, need_w, need_b = self.needs_input_grad
        dtype = grad.dtype
        grad_w = (grad * self.xhat).sum(axis=0) if need_w else None
        grad_b = grad.sum(axis=0) if need_b else None
        grad_x = None
        if need_x:
            g = grad * self.w.astype(dtype)
            if self.training:
                g = g - g.mean(axis=0) - self.xhat * (g * self.xhat).mean(axis=0)
            grad_x = g * self.inv_std.astype(dtype)
        return grad_x, grad_w, grad_b

    def _backward_fast(self, grad):
        need_x, need_w, need_b = self.needs_input_grad
        dtype = grad.dtype
        g3 = np.ascontiguousarray(grad).reshape(self.x3.shape)
        count = g3.shape[0] * g3.shape[2]
        grad_x = grad_w = grad_b = None
        if need_w or need_b or (need_x and self.training):
            sum_g, sum_gxc = kernels.channel_grad_sums(g3, self.x3, self.mean)
            sum_gxhat = sum_gxc * self.inv_std  # sum of g * x_hat per channel
            grad_w = sum_gxhat.astype(dtype) if need_w else None
            grad_b = sum_g.astype(dtype) if need_b else None
        if need_x:
            # The formula above as g*a + (x - mean)*b + d with per-channel a, b, d.
            a = self.w * self.inv_std
            if self.training:
                b = -a * self.inv_std * sum_gxhat / count
                d = -a * sum_g / count
            else:
                b = d = np.zeros_like(a)
            # Allocated in x's own shape, not as a reshaped view: autograd hands a
            # fresh array to x.grad as it is, but copies a view of one.
            grad_x = np.empty(self.x_shape, dtype=dtype)
            kernels.batch_norm_input_grad(g3, self.x3, self.mean.astype(dtype), a.astype(dtype),
                                          b.astype(dtype), d.astype(dtype),
                                          grad_x.reshape(self.x3.shape))
        return grad_x, grad_w, grad_b


def update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """The running-statistics rule: move the running statistics (ndarrays, in
    place; None: none kept) towards a batch's mean and variance over ``count``
    values per channel. The variance is made unbiased (count / (count - 1)) as
    torch does; ``var`` itself is biased."""
    if running_mean is None:
        return
    rm, rv = _as_array(running_mean), _as_array(running_var)
    rm *= 1 - momentum
    rm += momentum * mean
    rv *= 1 - momentum
    rv += momentum * var * count / (count - 1)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch's F.batch_norm for (N, C) or (N, C, ...) input, statistics per channel C.

    In training the batch's mean and biased variance normalise, and the running
    statistics (ndarrays, updated in place; None to keep none) move towards the
    batch mean and the *unbiased* variance, as in torch. In evaluation the
    running statistics normalise."""
    data = _as_array(x)
    if data.ndim < 2:
        raise ValueError(f"batch_norm expects (N, C) or (N, C, ...) input, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"batch_norm input must hold floating-point numbers, got dtype "
                         f"{data.dtype}")
    n, c = data.shape[:2]
    for name, array in (("running_mean", running_mean), ("running_var", running_var),
                        ("weight", weight), ("bias", bias)):
        if array is not None and _as_array(array).shape != (c,):
            raise ValueError(f"batch_norm: input of shape {data.shape} has {c} channels but "
                             f"{name} has shape {_as_array(array).shape}")
    if training:
        count = data.size // c
        if count < 2:
            raise ValueError(f"batch_norm in training needs more than one value per channel, "
                             f"got input of shape {data.shape}")
        # float64 sums in two passes, so that a large mean does not swallow a small variance
        mean, var = kernels.channel_mean_var(np.ascontiguousarray(data).reshape(n, c, -1))
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in evaluation needs running_mean and running_var")
        mean = _as_array(running_mean).astype(np.float64)
        var = _as_array(running_var).astype(np.float64)
    return BatchNormFn.apply(x, weight, bias, mean=mean, var=var, eps=eps,
                             training=bool(training))


# -------------------------------------------------------------------- losses


def _check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(loss, reduction):
    _check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class CrossEntropyFn(Function):
    """log-softmax and negative log-likelihood fused: the gradient is simply
    (softmax - one_hot), and nothing overflows.

    Class weights and ignored targets give each row's likelihood term a weight
    (``row_weight``: the class weight of its target, 0 for an ignored row), and
    ignored rows drop out of the smoothing term (``keep``). Without them, the
    common case, both are None, which skips those multiplications."""

    def forward(self, logits, target, weight, reduction, label_smoothing, ignore_index):
        n, classes = logits.shape
        if weight is None and ignore_index is None and not label_smoothing and reduction != "none":
            # The common case in one kernel: softmax and the summed -log p in a pass per row.
            self.softmax, self.target, self.row_weight, self.eps = np.empty_like(logits), target, None, 0.0
            self.reduction, self.denominator = reduction, n if reduction == "mean" else 1
            total = np.float64(kernels.softmax_cross_entropy(logits, target, self.softmax))
            return np.asarray(total / self.denominator, dtype=logits.dtype)  # (an empty batch: NaN, as torch)
        shifted = logits - logits.max(axis=1, keepdims=True)
        softmax = np.exp(shifted)
        sum_exp = softmax.sum(axis=1, keepdims=True)
        log_sum_exp = np.log(sum_exp)
        softmax /= sum_exp  # in place: exp itself is not needed again
        rows = np.arange(n)
        # ignore_index None: cross_entropy found that no target can equal it
        keep = None if ignore_index is None else target != ignore_index
        w = None if weight is None else weight.astype(logits.dtype)
        if w is None and (keep is None or keep.all()):
            keep = row_weight = None
            denominator = n
        else:
            if keep is not None:
                target = np.where(keep, target, 0)
            row_weight = (1 if w is None else w[target]) * (1 if keep is None else keep)
            denominator = row_weight.sum()
        # -log p of each row's target only (the full log-softmax only for smoothing)
        loss = log_sum_exp[:, 0] - shifted[rows, target]
        if row_weight is not None:
            loss = loss * row_weight
        eps = label_smoothing
        if eps:  # the mean of -w log p over the classes, mixed in with weight eps
            log_p = shifted - log_sum_exp
            smooth = -(log_p if w is None else log_p * w).sum(axis=1) / classes
            loss = (1 - eps) * loss + eps * (smooth if keep is None else smooth * keep)
        self.softmax, self.rows, self.target, self.w = softmax, rows, target, w
        self.row_weight, self.keep, self.eps, self.reduction = row_weight, keep, eps, reduction
        self.denominator = denominator if reduction == "mean" else 1
        if reduction == "none":
            return loss
        return np.asarray(loss.sum() / self.denominator, dtype=logits.dtype)

    def backward(self, grad):
        p, eps = self.softmax, self.eps
        if self.row_weight is None and not eps and self.reduction != "none":
            # The plain case in one pass: (softmax - one_hot) * grad / denominator.
            scale = grad / self.denominator
            return kernels.softmax_cross_entropy_backward(p, self.target, scale, np.empty_like(p)), None, None
        g = p.copy()
        g[self.rows, self.target] -= 1  # softmax - one_hot
        if self.row_weight is not None:
            g *= self.row_weight[:, None]
        if eps:  # the smoothing term's gradient: (p sum(w) - w) / classes
            classes = p.shape[1]
            smooth = p * classes - 1 if self.w is None else p * self.w.sum() - self.w
            if self.keep is not None:
                smooth *= self.keep[:, None]
            g = (1 - eps) * g + eps / classes * smooth
        g *= grad[:, None] if self.reduction == "none" else grad / self.denominator
        return g, None, None


def cross_entropy(logits, target, weight=None, reduction="mean", label_smoothing=0.0,
                  ignore_index=-100):
    """torch's F.cross_entropy for logits (N, C) or (N, C, d1, ...) and integer targets."""
    _check_reduction(reduction)
    logits = logits if isinstance(logits, Tensor) else Tensor(logits)
    # The checks read the array's shape, not the tensor's properties: each of those is
    # a Python call, and this runs once per training step.
    shape = logits.data.shape
    if logits.data.dtype.kind != "f":
        _check_floating("cross_entropy", logits, "logits")  # raises, naming the dtype
    target = _as_array(target)
    if len(shape) == 1 and target.size == 1:  # one unbatched sample: (C,) logits, a label
        loss = cross_entropy(logits.reshape(1, -1), target.reshape(1), weight, reduction,
                             label_smoothing, ignore_index)
        return loss.reshape(()) if reduction == "none" else loss
    if target.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy expects integer class targets, got dtype {target.dtype}")
    if len(shape) < 2 or target.shape != (shape[0],) + shape[2:]:
        raise ValueError(f"cross_entropy: logits of shape {shape} need targets of shape "
                         f"{(shape[0],) + shape[2:]}, got {target.shape}")
    classes = shape[1]
    classes_only = kernels.targets_in_range(target.reshape(-1), classes)
    if not classes_only:  # then look closer
        valid = target[target != ignore_index]
        if valid.size and (valid.min() < 0 or valid.max() >= classes):
            raise ValueError(f"cross_entropy: targets must lie in [0, {classes}), got values "
                             f"from {valid.min()} to {valid.max()}")
    if classes_only and not 0 <= ignore_index < classes:
        ignore_index = None  # no target can be ignored: the loss need not look for one
    out_shape = target.shape
    if len(shape) > 2:  # (N, C, d...) -> (N * d..., C)
        logits = logits.permute(0, *range(2, len(shape)), 1).reshape(-1, classes)
        target = target.reshape(-1)
    w = None if weight is None else _as_array(weight)
    loss = CrossEntropyFn.apply(logits, target, w, reduction=reduction,
                              label_smoothing=float(label_smoothing), ignore_index=ignore_index)
    return loss.reshape(out_shape) if reduction == "none" else loss


class NLLLossFn(Function):
    def forward(self, log_p, target, weight, reduction, ignore_index):
        keep = target != ignore_index
        self.target = np.where(keep, target, 0)
        w = np.ones(log_p.shape[1], dtype=log_p.dtype) if weight is None else weight.astype(log_p.dtype)
        self.w_target = w[self.target] * keep
        self.shape, self.reduction = log_p.shape, reduction
        loss = -self.w_target * log_p[np.arange(len(log_p)), self.target]
        self.denominator = self.w_target.sum() if reduction == "mean" else 1
        return loss if reduction == "none" else np.asarray(loss.sum() / self.denominator, log_p.dtype)

    def backward(self, grad):
        g = np.zeros(self.shape, dtype=grad.dtype)
        scale = grad if self.reduction == "none" else grad / self.denominator
        g[np.arange(self.shape[0]), self.target] = -self.w_target * scale
        return g, None, None


def nll_loss(log_probs, target, weight=None, reduction="mean", ignore_index=-100):
    _check_reduction(reduction)
    target = _as_array(target)
    shape = _as_array(log_probs).shape
    if len(shape) != 2 or target.shape != (shape[0],):
        raise ValueError(f"nll_loss expects log-probabilities (N, C) and targets (N,), got "
                         f"{shape} and {target.shape}")
    w = None if weight is None else _as_array(weight)
    return NLLLossFn.apply(log_probs, target, w, reduction=reduction, ignore_index=ignore_index)


def _same_shape(name, a, b):
    if _as_array(a).shape != _as_array(b).shape:
        raise ValueError(f"{name}: input shape {_as_array(a).shape} != target shape "
                         f"{_as_array(b).shape}; reshape one of them (broadcasting here is "
                         "almost always a bug)")


def mse_loss(input, target, reduction="mean"):  # noqa: A002  (torch's names)
    _same_shape("mse_loss", input, target)
    _check_floating("mse_loss", input)
    diff = input - target
    return _reduce(diff * diff, reduction)


def l1_loss(input, target, reduction="mean"):  # noqa: A002
    _same_shape("l1_loss", input, target)
    _check_floating("l1_loss", input)
    return _reduce((input - target).abs(), reduction)


class BinaryCrossEntropyFn(Function):
    def forward(self, p, target):
        self.p, self.target = p, target
        # torch clamps the logarithms at -100 so that p = 0 or 1 gives a finite loss.
        return -(target * np.maximum(np.log(p), -100) + (1 - target) * np.maximum(np.log1p(-p), -100))

    def backward(self, grad):
        p = np.clip(self.p, 1e-12, 1 - 1e-12)
        return grad * (p - self.target) / (p * (1 - p)), None


def binary_cross_entropy(input, target, weight=None, reduction="mean"):  # noqa: A002
    _same_shape("binary_cross_entropy", input, target)
    _check_floating("binary_cross_entropy", input)
    _check_floating("binary_cross_entropy", target, "target (probabilities)")
    data = _as_array(input)
    if data.size and (data.min() < 0 or data.max() > 1):
        raise ValueError("binary_cross_entropy expects probabilities in [0, 1]; for logits use "
                         "binary_cross_entropy_with_logits")
    loss = BinaryCrossEntropyFn.apply(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


class BCEWithLogitsFn(Function):
    def forward(self, z, target, pos_weight):
        self.z, self.target, self.pos_weight = z, target, pos_weight
        softplus_neg = np.logaddexp(0, -z)  # log(1 + e^-z) without overflow
        weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * target
        return (1 - target) * z + weight * softplus_neg

    def backward(self, grad):
        weight = 1 if self.pos_weight is None else 1 + (self.pos_weight - 1) * self.target
        sig_neg = special.expit(-self.z)
        return grad * ((1 - self.target) - weight * sig_neg), None, None


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",  # noqa: A002
                                     pos_weight=None):
    _same_shape("binary_cross_entropy_with_logits", input, target)
    _check_floating("binary_cross_entropy_with_logits", input)
    _check_floating("binary_cross_entropy_with_logits", target, "target (probabilities)")
    loss = BCEWithLogitsFn.apply(input, _as_array(target), None if pos_weight is None
                               else _as_array(pos_weight))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def one_hot(target, num_classes):
    target = _as_array(target)
    return Tensor(np.eye(num_classes, dtype=np.int64)[target])
