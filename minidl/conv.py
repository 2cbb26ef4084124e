"""Convolution, transposed convolution and pooling, with torch's ``F`` signatures
(``minidl.nn.functional`` re-exports the functions below). One block per op: its
Function class, then the function you call.

How a convolution is computed (im2col + GEMM)
---------------------------------------------
A convolution is a matrix product in disguise. ``kernels.im2col`` copies every
input patch a kernel window sees into one column of a matrix

    cols: (C*kh*kw, B*OH*OW)     one row per (channel, kernel offset),
                                 one column per output pixel of B images

so that convolving those B images is a matrix product

    y = W.reshape(O, C*kh*kw) @ cols          (O, B*OH*OW)

Each image's columns are one block of every row, so numpy's batched matmul
can take the product image by image and write it straight into the (N, O,
OH, OW) output (with ``groups`` > 1, one big product per group, then
``kernels.rows_to_nchw`` moves it there). The backward pass is two more
products with the same matrices:

    grad_W   += grad_y @ cols.T               (O, C*kh*kw), summed over images
    grad_cols = W.T @ grad_y                  (C*kh*kw, B*OH*OW)

and ``kernels.col2im`` folds grad_cols back onto the images, adding up the
overlaps. With ``groups`` > 1 each group is its own product over its own block
of rows. Nobody needs the gradient of the images fed to a network's first
layer, so when ``needs_input_grad`` says so, grad_cols and col2im are skipped.

Why chunks of B images, not the whole batch at once: the column matrix of a
whole batch is large (58 MB for 64 images of 32 channels at 28x28), and
writing it to main memory and reading it back costs as much as the GEMM. A
chunk of about 1 MB stays in cache between im2col and the GEMM,
and the chunks are independent, so ``threads.parallel_for`` gives them to
several threads, each with a single-threaded GEMM (``minidl/threads.py`` says
why this beats multi-threaded BLAS calls). Backward recomputes each chunk's
columns rather than keeping them from the forward pass: cheaper than the
memory traffic, and it saves C*kh*kw copies of the input.

A transposed convolution is the same machinery run backwards: its forward is a
convolution's input gradient and its input gradient is a convolution.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import kernels
from .autograd import Function, Tensor, _as_array
from .threads import num_threads, parallel_for, scratch

__all__ = ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "Conv2dFn", "ConvTranspose2dFn", "MaxPool2dFn", "AvgPool2dFn", "AdaptiveAvgPool2dFn"]


# ------------------------------------------------------------------ helpers


def _pair(value, name, minimum=0):
    """``3`` -> (3, 3); ``(3, 5)`` stays; checks that both are ints >= minimum."""
    if isinstance(value, numbers.Integral):
        value = (int(value), int(value))
    else:
        value = tuple(value)
        if len(value) != 2 or not all(isinstance(v, numbers.Integral) for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        value = (int(value[0]), int(value[1]))
    if min(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _floating(array, name):
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point numbers, got dtype {array.dtype}")


def _contiguous(array, dtype):
    """The array as a C-contiguous block of ``dtype``; copies only when it must."""
    return np.ascontiguousarray(array, dtype=dtype)


def _conv_out(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _pool_out(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling output size; with ceil_mode the last window may hang over
    the border, but must start inside the image or the left padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _zeros_if_none(array, length, dtype):
    return np.zeros(length, dtype=dtype) if array is None else _contiguous(array, dtype)


def _unbatched(x, fn_name):
    """torch accepts one image (C, H, W) as well as a batch (N, C, H, W)."""
    shape = _as_array(x).shape
    if len(shape) == 3:
        return True
    if len(shape) != 4:
        raise ValueError(f"{fn_name} expects input of shape (N, C, H, W) or (C, H, W), "
                         f"got shape {shape} ({len(shape)} dimensions)")
    return False


def _as_batch(x):
    return (x if isinstance(x, Tensor) else Tensor(x)).reshape(1, *_as_array(x).shape)


# ---------------------------------------------------------------- convolution


# Bytes of column matrix per chunk of images, about twice one core's L2 cache
# (512 KB on the 2-core EPYC this was tuned on). ``bench_conv.py --chunk-sweep``
# measures 0.5 to 16 MB: on the benchmark's two big layers no size beat 1 MB by
# more than the noise of a loaded machine, and 16 MB was slower in five of six.
CHUNK_BYTES = 1 << 20


def _chunks(n, bytes_per_image):
    """Split n images into chunks: small enough for the cache, and at least four
    per thread so that the threads stay balanced. Returns (size, count)."""
    size = min(max(1, CHUNK_BYTES // max(bytes_per_image, 1)),
               -(-n // (4 * num_threads())))
    size = max(1, size)
    return size, -(-n // size)


def _grouped_matmul(a, b, out, groups, transpose_a=False):
    """out = a @ b (or a.T @ b), one product per group: group g's rows of the
    output come from group g's rows of a and of b only."""
    if groups == 1:
        np.matmul(a.T if transpose_a else a, b, out=out)
        return
    ka, kb, kout = a.shape[0] // groups, b.shape[0] // groups, out.shape[0] // groups
    for g in range(groups):
        a_g = a[g * ka:(g + 1) * ka]
        np.matmul(a_g.T if transpose_a else a_g, b[g * kb:(g + 1) * kb],
                  out=out[g * kout:(g + 1) * kout])


def _per_image(cols, n_images):
    """The (rows, B*P) column matrix seen as B matrices (rows, P), one per image:
    a strided view, no copy (each image's columns are one block of every row)."""
    rows = cols.shape[0]
    return cols.reshape(rows, n_images, -1).transpose(1, 0, 2)


def _weight_grad_matmul(a, b, out, groups):
    """out = a @ b.T per group (a weight gradient: grad rows times column rows)."""
    ka, kb, kout = a.shape[0] // groups, b.shape[0] // groups, out.shape[0] // groups
    for g in range(groups):
        np.matmul(a[g * ka:(g + 1) * ka], b[g * kb:(g + 1) * kb].T,
                  out=out[g * kout:(g + 1) * kout])


class Conv2dFn(Function):
    """conv2d on arrays: x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None."""

    def forward(self, x, weight, bias, *, stride, padding, dilation, groups):
        dtype = x.dtype
        x, weight = _contiguous(x, dtype), _contiguous(weight, dtype)
        n, c, h, w = x.shape
        o, c_group, kh, kw = weight.shape
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        oh, ow = _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)
        self.geometry = (kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        self.x_shape, self.w_shape, self.groups = x.shape, weight.shape, groups
        self.rows, self.plane = c * kh * kw, oh * ow
        self.chunk, n_chunks = _chunks(n, self.rows * self.plane * x.itemsize)

        w2 = weight.reshape(o, c_group * kh * kw)
        b = _zeros_if_none(bias, o, dtype)
        out = np.empty((n, o, oh, ow), dtype=dtype)
        out3 = out.reshape(n, o, self.plane)

        def task(worker, i):
            lo, hi = i * self.chunk, min(n, (i + 1) * self.chunk)
            cols = self._im2col(worker, x[lo:hi])
            if groups == 1:  # one product per image, straight into torch's layout
                np.matmul(w2, _per_image(cols, hi - lo), out=out3[lo:hi])
                kernels.add_channel_bias(out3[lo:hi], b)
                return
            y = scratch.get(worker, "y", (o, (hi - lo) * self.plane), dtype)
            _grouped_matmul(w2, cols, y, groups)
            kernels.rows_to_nchw(y, b, out3[lo:hi])

        parallel_for(n_chunks, task)
        # Keep what backward needs: the input (to recompute the columns) for
        # the weight gradient, the weight for the input gradient.
        need_x, need_w = self.needs_input_grad[:2]
        self.x = x if need_w else None
        self.w2 = w2 if need_x else None
        return out

    def _im2col(self, worker, xb):
        """The column matrix of the images ``xb``, in this worker's scratch."""
        kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = self.geometry
        cols = scratch.get(worker, "cols", (self.rows, len(xb) * self.plane), xb.dtype)
        kernels.im2col(xb, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
        return cols

    def backward(self, grad):
        need_x, need_w, need_b = self.needs_input_grad
        n = self.x_shape[0]
        o, c_group, kh, kw = self.w_shape
        groups, plane, dtype = self.groups, self.plane, grad.dtype
        grad3 = _contiguous(grad, dtype).reshape(n, o, plane)
        threads = num_threads()
        # One accumulator per thread for the sums over the batch: no locking.
        grad_w = np.zeros((threads, o, c_group * kh * kw), dtype=dtype) if need_w else None
        grad_b = np.zeros((threads, o if need_b else 0))  # float64
        grad_x = np.empty(self.x_shape, dtype=dtype) if need_x else None

        def task(worker, i):
            lo, hi = i * self.chunk, min(n, (i + 1) * self.chunk)
            g_rows = None
            if need_x or groups > 1:
                # (B, O, OH, OW) -> (O, B*OH*OW), summing the bias gradient on the way.
                g_rows = scratch.get(worker, "g_rows", (o, (hi - lo) * plane), dtype)
                kernels.nchw_to_rows(grad3[lo:hi], g_rows, grad_b[worker])
            elif need_b:
                grad_b[worker] += kernels.channel_sum(grad3[lo:hi])
            if need_w:  # grad_W += grad_y @ cols.T
                cols = self._im2col(worker, self.x[lo:hi])
                if g_rows is None:  # one product per image, read in torch's layout
                    partial = np.matmul(grad3[lo:hi], _per_image(cols, hi - lo).transpose(0, 2, 1))
                    grad_w[worker] += partial.sum(axis=0)
                    return
                partial = scratch.get(worker, "grad_w", grad_w.shape[1:], dtype)
                _weight_grad_matmul(g_rows, cols, partial, groups)
                grad_w[worker] += partial
            if need_x:  # grad_cols = W.T @ grad_y, folded back onto the images
                dcols = scratch.get(worker, "cols", (self.rows, (hi - lo) * plane), dtype)
                _grouped_matmul(self.w2, g_rows, dcols, groups, transpose_a=True)
                kernels.col2im(dcols, *self.geometry, grad_x[lo:hi])

        parallel_for(-(-n // self.chunk), task)
        return (grad_x,
                grad_w.sum(axis=0).reshape(self.w_shape) if need_w else None,
                grad_b.sum(axis=0).astype(dtype) if need_b else None)


def _check_conv(fn_name, x_shape, w_shape, bias, stride, padding, dilation, groups, transposed):
    """The shape checks torch makes, with messages that show the shapes."""
    if len(w_shape) != 4:
        raise ValueError(f"{fn_name}: weight must have 4 dimensions, got shape {w_shape}")
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"{fn_name}: groups must be a positive int, got {groups!r}")
    c = x_shape[1]
    if transposed:  # weight (C_in, C_out/groups, kh, kw)
        if w_shape[0] != c:
            raise ValueError(f"{fn_name}: input of shape {x_shape} has {c} channels but weight "
                             f"of shape {w_shape} expects {w_shape[0]} (weight is "
                             "(in_channels, out_channels/groups, kh, kw))")
        if c % groups:
            raise ValueError(f"{fn_name}: {c} input channels are not divisible by groups={groups}")
        out_channels = w_shape[1] * groups
    else:  # weight (C_out, C_in/groups, kh, kw)
        if w_shape[1] * groups != c:
            raise ValueError(f"{fn_name}: input of shape {x_shape} has {c} channels but weight "
                             f"of shape {w_shape} with groups={groups} expects "
                             f"{w_shape[1] * groups}")
        if w_shape[0] % groups:
            raise ValueError(f"{fn_name}: {w_shape[0]} output channels (weight {w_shape}) are "
                             f"not divisible by groups={groups}")
        out_channels = w_shape[0]
    if bias is not None and _as_array(bias).shape != (out_channels,):
        raise ValueError(f"{fn_name}: bias must have shape ({out_channels},), got "
                         f"{_as_array(bias).shape}")
    if not transposed:
        for axis, size, k, p, d in zip("HW", x_shape[2:], w_shape[2:], padding, dilation):
            if size + 2 * p < d * (k - 1) + 1:
                raise ValueError(
                    f"{fn_name}: kernel of size {d * (k - 1) + 1} along {axis} (weight {w_shape}, "
                    f"dilation {dilation}) is larger than the padded input "
                    f"({size} + 2*{p} = {size + 2 * p}; input shape {x_shape})")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """2-D convolution (really cross-correlation, as in every framework), torch's
    ``F.conv2d``: input (N, C, H, W) or (C, H, W), weight (O, C/groups, kh, kw),
    bias (O,). ``padding`` may also be 'valid' (0) or 'same' (stride 1 only)."""
    if _unbatched(input, "conv2d"):
        return conv2d(_as_batch(input), weight, bias, stride, padding, dilation, groups)[0]
    x, w = _as_array(input), _as_array(weight)
    _floating(x, "conv2d input")
    stride, dilation = _pair(stride, "conv2d stride", 1), _pair(dilation, "conv2d dilation", 1)
    if isinstance(padding, str):
        padding = _same_padding(padding, w.shape, stride, dilation)
    padding = _pair(padding, "conv2d padding", 0)
    _check_conv("conv2d", x.shape, w.shape, bias, stride, padding, dilation, groups, False)
    if w.dtype != x.dtype:
        raise ValueError(f"conv2d: input dtype {x.dtype} and weight dtype {w.dtype} differ; "
                         "convert one (e.g. x.float() or model.double())")
    return Conv2dFn.apply(input, weight, bias, stride=stride, padding=padding,
                          dilation=dilation, groups=groups)


def _same_padding(mode, w_shape, stride, dilation):
    if mode == "valid":
        return 0
    if mode != "same":
        raise ValueError(f"conv2d padding must be an int, a pair, 'valid' or 'same', got {mode!r}")
    if stride != (1, 1):
        raise ValueError(f"conv2d padding='same' needs stride 1, got stride {stride}")
    spans = [d * (k - 1) for k, d in zip(w_shape[2:], dilation)]
    if any(s % 2 for s in spans):
        raise ValueError(f"conv2d padding='same' with an even kernel span {spans} would need "
                         "uneven padding; pad explicitly with F.pad first")
    return spans[0] // 2, spans[1] // 2


class ConvTranspose2dFn(Function):
    """conv_transpose2d on arrays: x (N, C_in, H, W), weight (C_in, C_out/groups,
    kh, kw). Forward is conv2d's input gradient (GEMM then col2im), backward
    is a convolution (im2col then GEMM); chunks of images as in Conv2dFn."""

    def forward(self, x, weight, bias, *, stride, padding, output_padding, dilation, groups,
                out_hw):
        dtype = x.dtype
        x, weight = _contiguous(x, dtype), _contiguous(weight, dtype)
        n, c_in, h, w = x.shape
        _, cout_group, kh, kw = weight.shape
        c_out = cout_group * groups
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        # The convolution that maps the output back to x's size has this geometry.
        self.geometry = (kh, kw, sh, sw, ph, pw, dh, dw, h, w)
        self.x_shape, self.w_shape, self.groups = x.shape, weight.shape, groups
        self.rows, self.plane = c_out * kh * kw, h * w
        self.chunk, n_chunks = _chunks(n, self.rows * self.plane * x.itemsize)
        w2 = weight.reshape(c_in, cout_group * kh * kw)
        out = np.empty((n, c_out) + out_hw, dtype=dtype)
        x3 = x.reshape(n, c_in, self.plane)

        def task(worker, i):
            lo, hi = i * self.chunk, min(n, (i + 1) * self.chunk)
            x_rows = self._rows(worker, x3[lo:hi])
            cols = scratch.get(worker, "cols", (self.rows, (hi - lo) * self.plane), dtype)
            _grouped_matmul(w2, x_rows, cols, groups, transpose_a=True)
            kernels.col2im(cols, *self.geometry, out[lo:hi])
            if bias is not None:
                kernels.add_channel_bias(out[lo:hi].reshape(hi - lo, c_out, -1),
                                         _contiguous(bias, dtype))

        parallel_for(n_chunks, task)
        need_x, need_w = self.needs_input_grad[:2]
        self.x3 = x3 if need_w else None
        self.w2 = w2 if need_x else None
        return out

    def _rows(self, worker, x3b):
        """(B, C_in, H*W) -> (C_in, B*H*W), in this worker's scratch."""
        rows = scratch.get(worker, "x_rows", (x3b.shape[1], len(x3b) * self.plane), x3b.dtype)
        kernels.nchw_to_rows(x3b, rows, np.empty(0))
        return rows

    def backward(self, grad):
        need_x, need_w, need_b = self.needs_input_grad
        n, c_in = self.x_shape[:2]
        _, cout_group, kh, kw = self.w_shape
        groups, plane, dtype = self.groups, self.plane, grad.dtype
        grad = _contiguous(grad, dtype)
        threads = num_threads()
        grad_w = np.zeros((threads, c_in, cout_group * kh * kw), dtype=dtype) if need_w else None
        grad_x = np.empty(self.x_shape, dtype=dtype) if need_x else None

        def task(worker, i):
            lo, hi = i * self.chunk, min(n, (i + 1) * self.chunk)
            cols = scratch.get(worker, "cols", (self.rows, (hi - lo) * plane), dtype)
            kernels.im2col(grad[lo:hi], *self.geometry, cols)
            if need_x:  # a convolution of the output gradient
                rows = scratch.get(worker, "y", (c_in, (hi - lo) * plane), dtype)
                _grouped_matmul(self.w2, cols, rows, groups)
                kernels.rows_to_nchw(rows, np.zeros(c_in, dtype=dtype),
                                     grad_x[lo:hi].reshape(hi - lo, c_in, plane))
            if need_w:
                x_rows = self._rows(worker, self.x3[lo:hi])
                partial = scratch.get(worker, "grad_w", grad_w.shape[1:], dtype)
                _weight_grad_matmul(x_rows, cols, partial, groups)
                grad_w[worker] += partial

        if need_x or need_w:
            parallel_for(-(-n // self.chunk), task)
        grad_b = kernels.channel_sum(grad.reshape(n, grad.shape[1], -1)).astype(dtype) \
            if need_b else None
        return (grad_x, grad_w.sum(axis=0).reshape(self.w_shape) if need_w else None, grad_b)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0,  # noqa: A002
                     output_padding=0, groups=1, dilation=1):
    """torch's ``F.conv_transpose2d`` (argument order included): input (N, C_in, H, W)
    or (C_in, H, W), weight (C_in, C_out/groups, kh, kw). The output has
    (H - 1)*stride - 2*padding + dilation*(kh - 1) + output_padding + 1 rows."""
    if _unbatched(input, "conv_transpose2d"):
        return conv_transpose2d(_as_batch(input), weight, bias, stride, padding,
                                output_padding, groups, dilation)[0]
    x, w = _as_array(input), _as_array(weight)
    _floating(x, "conv_transpose2d input")
    stride = _pair(stride, "conv_transpose2d stride", 1)
    dilation = _pair(dilation, "conv_transpose2d dilation", 1)
    padding = _pair(padding, "conv_transpose2d padding", 0)
    output_padding = _pair(output_padding, "conv_transpose2d output_padding", 0)
    _check_conv("conv_transpose2d", x.shape, w.shape, bias, stride, padding, dilation, groups,
                True)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= max(s, d):
            raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller "
                             f"than the stride {stride} or the dilation {dilation}")
    out_hw = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
                   zip(x.shape[2:], stride, padding, dilation, w.shape[2:], output_padding))
    if min(out_hw) < 1:
        raise ValueError(f"conv_transpose2d: input {x.shape} with weight {w.shape}, stride "
                         f"{stride} and padding {padding} gives an empty output {out_hw}")
    if w.dtype != x.dtype:
        raise ValueError(f"conv_transpose2d: input dtype {x.dtype} and weight dtype {w.dtype} "
                         "differ; convert one")
    return ConvTranspose2dFn.apply(input, weight, bias, stride=stride, padding=padding,
                                   output_padding=output_padding, dilation=dilation,
                                   groups=groups, out_hw=out_hw)


# -------------------------------------------------------------------- pooling


def _pool_args(fn_name, x, kernel_size, stride, padding, dilation, ceil_mode):
    """Normalised (kernel, stride, padding, dilation, output size) with torch's checks."""
    kernel = _pair(kernel_size, f"{fn_name} kernel_size", 1)
    stride = kernel if stride is None or stride == [] or stride == () else \
        _pair(stride, f"{fn_name} stride", 1)
    padding = _pair(padding, f"{fn_name} padding", 0)
    dilation = _pair(dilation, f"{fn_name} dilation", 1)
    shape = x.shape
    for p, k, d in zip(padding, kernel, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise ValueError(f"{fn_name}: padding {padding} must be at most half of the "
                             f"kernel size {kernel}")
    out_hw = tuple(_pool_out(size, k, s, p, d, ceil_mode) for size, k, s, p, d in
                   zip(shape[2:], kernel, stride, padding, dilation))
    if min(out_hw) < 1:
        raise ValueError(f"{fn_name}: kernel {kernel} (dilation {dilation}, padding {padding}) "
                         f"is larger than the padded input of shape {shape}")
    return kernel, stride, padding, dilation, out_hw


class MaxPool2dFn(Function):
    saves_inputs = False  # backward needs only where the maxima were

    def forward(self, x, *, kernel, stride, padding, dilation, out_hw):
        x = _contiguous(x, x.dtype)
        n, c = x.shape[:2]
        out = np.empty((n, c) + out_hw, dtype=x.dtype)
        # The common 2x2/2 case has its own kernel that stores where each maximum
        # was as an int8 0..3 (a quarter of the memory of an int32 index).
        self.fast = (kernel == (2, 2) and stride == (2, 2) and padding == (0, 0)
                     and dilation == (1, 1) and out_hw == (x.shape[2] // 2, x.shape[3] // 2))
        if self.fast:
            self.arg = np.empty(out.shape, dtype=np.int8)
            kernels.max_pool_2x2(x, out, self.arg)
        else:
            self.arg = np.empty(out.shape, dtype=np.int32)
            kernels.max_pool(x, *kernel, *stride, *padding, *dilation, out, self.arg)
        self.x_shape = x.shape
        return out

    def indices(self):
        """torch's ``return_indices``: flat position y*W + x of each maximum in its plane."""
        if not self.fast:
            return self.arg.astype(np.int64)
        width = self.x_shape[3]
        oh, ow = self.arg.shape[2:]
        k = self.arg.astype(np.int64)
        rows = 2 * np.arange(oh)[:, None] + k // 2
        cols = 2 * np.arange(ow)[None, :] + k % 2
        return rows * width + cols

    def backward(self, grad):
        grad = _contiguous(grad, grad.dtype)
        dx = np.empty(self.x_shape, dtype=grad.dtype)
        if self.fast:
            kernels.max_pool_2x2_backward(grad, self.arg, dx)
        else:
            kernels.max_pool_backward(grad, self.arg, dx)
        return dx


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1,  # noqa: A002
               ceil_mode=False, return_indices=False):
    """torch's ``F.max_pool2d``; ``stride`` defaults to ``kernel_size``. Ties go to
    the first maximum in row-major order, as in torch."""
    if _unbatched(input, "max_pool2d"):
        result = max_pool2d(_as_batch(input), kernel_size, stride, padding, dilation,
                            ceil_mode, return_indices)
        return (result[0][0], result[1][0]) if return_indices else result[0]
    x = _as_array(input)
    _floating(x, "max_pool2d input")
    kernel, stride, padding, dilation, out_hw = _pool_args(
        "max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode)
    out = MaxPool2dFn.apply(input, kernel=kernel, stride=stride, padding=padding,
                            dilation=dilation, out_hw=out_hw)
    if not return_indices:
        return out
    if out.grad_fn is None:  # no graph recorded: compute the indices once more
        fn = MaxPool2dFn()
        fn.needs_input_grad = (False,)
        fn.forward(x, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                   out_hw=out_hw)
        return out, Tensor(fn.indices())
    return out, Tensor(out.grad_fn.indices())


class AvgPool2dFn(Function):
    saves_inputs = False  # the gradient of a mean does not depend on the input

    def forward(self, x, *, kernel, stride, padding, count_include_pad, divisor, out_hw):
        x = _contiguous(x, x.dtype)
        out = np.empty(x.shape[:2] + out_hw, dtype=x.dtype)
        self.args = (*kernel, *stride, *padding, count_include_pad, divisor)
        kernels.avg_pool(x, *self.args, out)
        self.x_shape = x.shape
        return out

    def backward(self, grad):
        dx = np.empty(self.x_shape, dtype=grad.dtype)
        kernels.avg_pool_backward(_contiguous(grad, grad.dtype), *self.args, dx)
        return dx


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,  # noqa: A002
               count_include_pad=True, divisor_override=None):
    """torch's ``F.avg_pool2d``: padding counts as zeros in the mean unless
    ``count_include_pad=False``; ``divisor_override`` replaces the window size."""
    if _unbatched(input, "avg_pool2d"):
        return avg_pool2d(_as_batch(input), kernel_size, stride, padding, ceil_mode,
                          count_include_pad, divisor_override)[0]
    x = _as_array(input)
    _floating(x, "avg_pool2d input")
    kernel, stride, padding, _, out_hw = _pool_args("avg_pool2d", x, kernel_size, stride,
                                                    padding, 1, ceil_mode)
    if divisor_override is not None and (not isinstance(divisor_override, numbers.Integral)
                                         or divisor_override <= 0):
        raise ValueError(f"avg_pool2d: divisor_override must be a positive int, got "
                         f"{divisor_override!r}")
    return AvgPool2dFn.apply(input, kernel=kernel, stride=stride, padding=padding,
                             count_include_pad=bool(count_include_pad),
                             divisor=int(divisor_override or 0), out_hw=out_hw)


class AdaptiveAvgPool2dFn(Function):
    saves_inputs = False

    def forward(self, x, *, out_hw):
        x = _contiguous(x, x.dtype)
        self.x_shape = x.shape
        n, c, h, w = x.shape
        if out_hw == (1, 1):  # global average pooling: a plain mean per plane
            return x.reshape(n, c, h * w).mean(axis=2).reshape(n, c, 1, 1)
        out = np.empty((n, c) + out_hw, dtype=x.dtype)
        return kernels.adaptive_avg_pool(x, out)

    def backward(self, grad):
        n, c, h, w = self.x_shape
        if grad.shape[2:] == (1, 1):
            return np.repeat(grad.reshape(n, c, 1) / (h * w), h * w, axis=2).reshape(self.x_shape)
        dx = np.empty(self.x_shape, dtype=grad.dtype)
        return kernels.adaptive_avg_pool_backward(_contiguous(grad, grad.dtype), dx)


def adaptive_avg_pool2d(input, output_size):  # noqa: A002
    """torch's ``F.adaptive_avg_pool2d``: average over windows chosen so that the
    output has ``output_size`` (an int, a pair, None keeps that dimension)."""
    if _unbatched(input, "adaptive_avg_pool2d"):
        return adaptive_avg_pool2d(_as_batch(input), output_size)[0]
    x = _as_array(input)
    _floating(x, "adaptive_avg_pool2d input")
    if isinstance(output_size, numbers.Integral) or output_size is None:
        output_size = (output_size, output_size)
    if len(output_size) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got "
                         f"{output_size!r}")
    out_hw = tuple(int(size if o is None else o) for o, size in zip(output_size, x.shape[2:]))
    if min(out_hw) < 1 or min(x.shape[2:]) < 1:
        raise ValueError(f"adaptive_avg_pool2d: output size {out_hw} and input {x.shape} "
                         "must both be at least 1")
    return AdaptiveAvgPool2dFn.apply(input, out_hw=out_hw)
