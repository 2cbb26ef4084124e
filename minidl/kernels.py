"""Numba kernels for the data movement around convolution, pooling and batch norm,
and for the few small elementwise steps that NumPy would take in several passes
(softmax cross-entropy, ReLU's gradient).

The division of labour (see ``minidl/conv.py``): every multiply-add of a
convolution goes to a BLAS matrix product (numpy's ``@``), and everything
that only *moves* numbers (unfolding images into columns, folding them back,
pooling windows, transposes, per-channel sums) happens here, in plain loops
that numba compiles to machine code. NumPy alone would need fancy indexing and
``np.add.at`` for these, which is 10 to 100 times slower.

The column layout
-----------------
``im2col`` writes a matrix ``cols`` of shape ``(C*kh*kw, B*OH*OW)`` for a chunk
of B images: one row per (channel, kernel row, kernel column) and one column
per output pixel. Each row, the input seen through one kernel offset, is one
contiguous slice, so the kernel writes memory in order, and one GEMM
``W(O, C*kh*kw) @ cols`` convolves all B images at once.

The kernels never start threads of their own (no ``prange``); they release the
GIL (``nogil``), so that ``threads.parallel_for`` can run them on several
threads at once beside single-threaded BLAS (``minidl/threads.py`` says why).

Every kernel is compiled once per dtype (float32 for training, float64 for the
gradient tests) and cached on disk (``cache=True``), so only the very first
import pays the compilation.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# nogil: the kernels release the GIL, so that threads can run them in parallel.
_JIT = dict(cache=True, nogil=True)
# Sums may be reordered (vectorised); used only for the bias and batch-norm sums.
_JIT_SUM = dict(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})


# ------------------------------------------------------------ im2col / col2im


@njit(**_JIT)
def _valid_range(offset, stride, out_size, in_size):
    """Output positions o in [lo, hi) whose input o*stride + offset lies in
    [0, in_size): the rest of the row reads padding."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi = (in_size - 1 - offset) // stride + 1 if in_size - 1 - offset >= 0 else 0
    hi = min(hi, out_size)
    if hi < lo:
        hi = lo
    return lo, hi


# The inner loops of im2col and col2im: each runs over a slice from index 0, so
# numba knows no index is negative (no wrap-around check per element) and
# vectorises the loop, about seven times faster than ``row[start + k]``.
@njit(**_JIT)
def _fill_zero(a):
    for k in range(a.size):
        a[k] = 0


@njit(**_JIT)
def _copy(src, dst):
    for k in range(dst.size):
        dst[k] = src[k]


@njit(**_JIT)
def _add(src, dst):
    for k in range(dst.size):
        dst[k] += src[k]


@njit(**_JIT)
def _zero_border_columns(row, base, ylo, yhi, ow, lo, hi):
    """In the output rows ylo..yhi-1 of one image's block of ``row``, zero the
    columns z < lo and z >= hi (those that read the padding left and right)."""
    for y in range(ylo, yhi):
        line = row[base + y * ow:base + (y + 1) * ow]
        for z in range(lo):
            line[z] = 0
        for z in range(hi, ow):
            line[z] = 0


@njit(**_JIT)
def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols):
    """Unfold ``x`` (N, C, H, W) into ``cols`` (C*kh*kw, N*oh*ow).

    ``cols[(c*kh + i)*kw + j, (n*oh + y)*ow + z] = x[n, c, y*sh - ph + i*dh, z*sw - pw + j*dw]``
    and 0 where that position lies in the padding.

    The inner loops are ``_copy`` and ``_fill_zero`` on slices (see above).
    """
    n_img, channels, height, width = x.shape
    plane = oh * ow
    # Stride 1 with output rows as wide as input rows (a 'same' convolution): an
    # output block and its source block have the same row length, so the block
    # is one long contiguous copy, not oh short ones; the few values that wrap
    # around a row's end are then overwritten with the padding's zeros.
    one_span = sh == 1 and sw == 1 and ow == width
    for c in range(channels):
        for i in range(kh):
            # output rows y in [ylo, yhi) read input rows inside the image
            ylo, yhi = _valid_range(i * dh - ph, sh, oh, height)
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                offset = j * dw - pw
                lo, hi = _valid_range(offset, sw, ow, width)
                for n in range(n_img):
                    base = n * plane
                    _fill_zero(row[base:base + ylo * ow])  # rows above the image
                    _fill_zero(row[base + max(yhi, ylo) * ow:base + plane])  # rows below it
                    if yhi <= ylo:
                        continue
                    if one_span and hi > lo:
                        src = x[n, c].reshape(height * width)
                        first = (ylo - ph + i * dh) * width + lo + offset
                        start, stop = base + ylo * ow + lo, base + (yhi - 1) * ow + hi
                        _copy(src[first:first + stop - start], row[start:stop])
                        _zero_border_columns(row, base, ylo, yhi, ow, lo, hi)
                        continue
                    for y in range(ylo, yhi):
                        src = x[n, c, y * sh - ph + i * dh]
                        line = row[base + y * ow:base + (y + 1) * ow]
                        _fill_zero(line[:lo])
                        _copy(src[lo * sw + offset::sw], line[lo:hi])
                        _fill_zero(line[hi:])
    return cols


@njit(**_JIT)
def col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """The adjoint of ``im2col``: fold ``cols`` (C*kh*kw, N*oh*ow) back into
    ``out`` (N, C, H, W), *adding up* every column that reads the same pixel
    (overlapping windows), and dropping what falls into the padding.

    ``cols`` is used as scratch: its entries that read the padding are zeroed,
    so that in the 'same' case (as in ``im2col``) each block is added in one
    long contiguous run. For each channel c the loop touches only ``out[:, c]``,
    which stays in cache while the kh*kw rows of that channel stream past.
    """
    n_img, channels, height, width = out.shape
    plane = oh * ow
    out[...] = 0
    one_span = sh == 1 and sw == 1 and ow == width
    for c in range(channels):
        for i in range(kh):
            ylo, yhi = _valid_range(i * dh - ph, sh, oh, height)
            if yhi <= ylo:
                continue
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                offset = j * dw - pw
                lo, hi = _valid_range(offset, sw, ow, width)
                if hi <= lo:
                    continue
                for n in range(n_img):
                    base = n * plane
                    if one_span:
                        _zero_border_columns(row, base, ylo, yhi, ow, lo, hi)
                        dst = out[n, c].reshape(height * width)
                        first = (ylo - ph + i * dh) * width + lo + offset
                        start, stop = base + ylo * ow + lo, base + (yhi - 1) * ow + hi
                        _add(row[start:stop], dst[first:first + stop - start])
                        continue
                    for y in range(ylo, yhi):
                        dst = out[n, c, y * sh - ph + i * dh]
                        line = row[base + y * ow + lo:base + y * ow + hi]
                        _add(line, dst[lo * sw + offset::sw][:hi - lo])
    return out


# ------------------------------------------------------------- layout changes


@njit(**_JIT)
def rows_to_nchw(y, bias, out):
    """``out[n, o, p] = y[o, n*P + p] + bias[o]`` with out (N, O, P): the GEMM's
    (O, N*P) result back into torch's layout, adding the bias in the same pass
    (pass zeros for no bias: the addition is free next to the memory traffic)."""
    n_img, channels, plane = out.shape
    for n in range(n_img):
        for o in range(channels):
            b = bias[o]
            src = y[o, n * plane:(n + 1) * plane]
            dst = out[n, o]
            for p in range(plane):
                dst[p] = src[p] + b
    return out


@njit(**_JIT_SUM)
def nchw_to_rows(g, out, bias_grad):
    """``out[o, n*P + p] = g[n, o, p]`` with g (N, O, P): gradients (or inputs) in
    torch's layout into the (O, N*P) layout the GEMMs want. When ``bias_grad``
    (float64) is not empty, the per-channel sums of g (the bias gradient) are
    *added* to it, from the same pass over memory."""
    n_img, channels, plane = g.shape
    want_sum = bias_grad.size > 0
    for n in range(n_img):
        for o in range(channels):
            src = g[n, o]
            dst = out[o, n * plane:(n + 1) * plane]
            acc = 0.0
            for p in range(plane):
                v = src[p]
                dst[p] = v
                acc += v
            if want_sum:
                bias_grad[o] += acc
    return out


@njit(**_JIT)
def add_channel_bias(x, bias):
    """``x[n, c] += bias[c]`` in place, x (N, C, P)."""
    n_img, channels, plane = x.shape
    for n in range(n_img):
        for c in range(channels):
            b = bias[c]
            row = x[n, c]
            for p in range(plane):
                row[p] += b
    return x


@njit(**_JIT_SUM)
def channel_sum(g):
    """Per-channel sum of g (N, C, P), accumulated in float64."""
    n_img, channels, plane = g.shape
    total = np.zeros(channels, dtype=np.float64)
    for n in range(n_img):
        for c in range(channels):
            row = g[n, c]
            acc = 0.0
            for p in range(plane):
                acc += row[p]
            total[c] += acc
    return total


# ------------------------------------------------------------------- max pool


@njit(**_JIT)
def max_pool_2x2(x, out, arg):
    """The common case, 2×2 windows with stride 2 and no padding. ``arg`` records
    where each maximum sat as an int8 offset 0..3 (row-major in the window), a
    quarter of the memory of an index. Ties go to the first maximum in that
    order, and a NaN wins, both as in torch."""
    n_img, channels, _, _ = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(n_img):
        for c in range(channels):
            for y in range(oh):
                top = x[n, c, 2 * y]
                bottom = x[n, c, 2 * y + 1]
                o = out[n, c, y]
                a = arg[n, c, y]
                for z in range(ow):
                    best = top[2 * z]
                    k = 0
                    v = top[2 * z + 1]
                    if v > best or v != v:  # v != v: v is NaN
                        best = v
                        k = 1
                    v = bottom[2 * z]
                    if v > best or v != v:
                        best = v
                        k = 2
                    v = bottom[2 * z + 1]
                    if v > best or v != v:
                        best = v
                        k = 3
                    o[z] = best
                    a[z] = k
    return out


@njit(**_JIT)
def max_pool_2x2_backward(g, arg, dx):
    """Route each gradient to the position of its window's maximum. Windows do
    not overlap, so every input pixel is written exactly once (no zeroing pass
    first, no accumulation); rows and columns no window covers get 0.

    Each input row is written in one sweep (top row of the windows, then bottom
    row): contiguous stores that the compiler vectorises, five times faster
    than writing the four pixels of each window in turn.
    """
    n_img, channels, height, width = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    zero = np.zeros(1, dtype=dx.dtype)[0]  # a zero of dx's dtype: no float64 detour
    for n in range(n_img):
        for c in range(channels):
            for y in range(oh):
                gr = g[n, c, y]
                a = arg[n, c, y]
                for half in range(2):  # 0: the windows' top row, 1: their bottom row
                    row = dx[n, c, 2 * y + half]
                    left, right = np.int8(2 * half), np.int8(2 * half + 1)
                    for z in range(ow):
                        v = gr[z]
                        k = a[z]
                        row[2 * z] = v if k == left else zero
                        row[2 * z + 1] = v if k == right else zero
                    for z in range(2 * ow, width):  # odd width: the last column
                        row[z] = zero
            for r in range(2 * oh, height):  # odd height: the last row
                dx[n, c, r, :] = zero
    return dx


@njit(**_JIT)
def max_pool(x, kh, kw, sh, sw, ph, pw, dh, dw, out, arg):
    """General max pooling; ``arg`` (int32) gets the flat index y*W + x of each
    maximum within its image plane (torch's ``return_indices`` convention).
    Padding counts as -inf, so it never wins."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(n_img):
        for c in range(channels):
            plane = x[n, c]
            for y in range(oh):
                for z in range(ow):
                    y0 = y * sh - ph
                    z0 = z * sw - pw
                    best = -np.inf
                    where = -1
                    for i in range(kh):
                        iy = y0 + i * dh
                        if iy < 0 or iy >= height:
                            continue
                        for j in range(kw):
                            iz = z0 + j * dw
                            if iz < 0 or iz >= width:
                                continue
                            v = plane[iy, iz]
                            if v > best or v != v or where < 0:
                                best = v
                                where = iy * width + iz
                    out[n, c, y, z] = best
                    arg[n, c, y, z] = where
    return out


@njit(**_JIT)
def max_pool_backward(g, arg, dx):
    """Add each gradient to the pixel that won its window (windows may overlap,
    so this accumulates into a zeroed ``dx``)."""
    n_img, channels, height, width = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    dx[...] = 0
    for n in range(n_img):
        for c in range(channels):
            flat = dx[n, c].reshape(height * width)
            for y in range(oh):
                for z in range(ow):
                    where = arg[n, c, y, z]
                    if where >= 0:
                        flat[where] += g[n, c, y, z]
    return dx


# ------------------------------------------------------------------- avg pool


@njit(**_JIT)
def _avg_window(y, size, stride, pad, in_size):
    """Start, end and padded length of window ``y`` along one axis, torch's rule:
    the window is cut at the padded border, then at the image border."""
    start = y * stride - pad
    end = min(start + size, in_size + pad)
    padded = end - start
    start = max(start, 0)
    end = min(end, in_size)
    return start, end, padded


@njit(**_JIT)
def _avg_count(rows, cols, padded_rows, padded_cols, count_include_pad, divisor):
    """What a window's sum is divided by: its pixels inside the image, or with
    the padding counted, or ``divisor`` when > 0 (torch's divisor_override)."""
    if divisor > 0:
        return divisor
    return padded_rows * padded_cols if count_include_pad else rows * cols


@njit(**_JIT)
def avg_pool(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, out):
    """Mean over each window; ``divisor`` > 0 replaces the count (torch's
    divisor_override)."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(n_img):
        for c in range(channels):
            plane = x[n, c]
            for y in range(oh):
                y0, y1, ly = _avg_window(y, kh, sh, ph, height)
                for z in range(ow):
                    z0, z1, lz = _avg_window(z, kw, sw, pw, width)
                    count = _avg_count(y1 - y0, z1 - z0, ly, lz, count_include_pad, divisor)
                    acc = 0.0
                    for iy in range(y0, y1):
                        for iz in range(z0, z1):
                            acc += plane[iy, iz]
                    out[n, c, y, z] = acc / count if count > 0 else 0.0
    return out


@njit(**_JIT)
def avg_pool_backward(g, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, dx):
    n_img, channels, height, width = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    dx[...] = 0
    for n in range(n_img):
        for c in range(channels):
            plane = dx[n, c]
            for y in range(oh):
                y0, y1, ly = _avg_window(y, kh, sh, ph, height)
                for z in range(ow):
                    z0, z1, lz = _avg_window(z, kw, sw, pw, width)
                    count = _avg_count(y1 - y0, z1 - z0, ly, lz, count_include_pad, divisor)
                    if count == 0:
                        continue
                    share = g[n, c, y, z] / count
                    for iy in range(y0, y1):
                        for iz in range(z0, z1):
                            plane[iy, iz] += share
    return dx


@njit(**_JIT)
def adaptive_avg_pool(x, out):
    """torch's adaptive windows: output cell y covers input rows
    floor(y*H/OH) .. ceil((y+1)*H/OH) - 1 (they may overlap by one)."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for n in range(n_img):
        for c in range(channels):
            plane = x[n, c]
            for y in range(oh):
                y0 = (y * height) // oh
                y1 = ((y + 1) * height + oh - 1) // oh
                for z in range(ow):
                    z0 = (z * width) // ow
                    z1 = ((z + 1) * width + ow - 1) // ow
                    acc = 0.0
                    for iy in range(y0, y1):
                        for iz in range(z0, z1):
                            acc += plane[iy, iz]
                    out[n, c, y, z] = acc / ((y1 - y0) * (z1 - z0))
    return out


@njit(**_JIT)
def adaptive_avg_pool_backward(g, dx):
    n_img, channels, height, width = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    dx[...] = 0
    for n in range(n_img):
        for c in range(channels):
            plane = dx[n, c]
            for y in range(oh):
                y0 = (y * height) // oh
                y1 = ((y + 1) * height + oh - 1) // oh
                for z in range(ow):
                    z0 = (z * width) // ow
                    z1 = ((z + 1) * width + ow - 1) // ow
                    share = g[n, c, y, z] / ((y1 - y0) * (z1 - z0))
                    for iy in range(y0, y1):
                        for iz in range(z0, z1):
                            plane[iy, iz] += share
    return dx


# ----------------------------------------------------------------- batch norm


@njit(**_JIT_SUM)
def channel_mean_var(x):
    """Per-channel mean and biased variance of x (N, C, P), in float64, with two
    passes (mean first, then squared deviations) so that large means do not
    swallow small variances."""
    n_img, channels, plane = x.shape
    count = n_img * plane
    mean = np.zeros(channels, dtype=np.float64)
    var = np.zeros(channels, dtype=np.float64)
    for n in range(n_img):
        for c in range(channels):
            row = x[n, c]
            acc = 0.0
            for p in range(plane):
                acc += row[p]
            mean[c] += acc
    mean /= count
    for n in range(n_img):
        for c in range(channels):
            row = x[n, c]
            m = mean[c]
            acc = 0.0
            for p in range(plane):
                d = row[p] - m
                acc += d * d
            var[c] += acc
    var /= count
    return mean, var


@njit(**_JIT)
def channel_normalize(x, mean, scale, shift, out):
    """``out[n, c] = (x[n, c] - mean[c]) * scale[c] + shift[c]``: batch norm's
    forward in one pass, with the statistics and the affine parameters folded
    into one scale and one shift per channel."""
    n_img, channels, plane = x.shape
    for n in range(n_img):
        for c in range(channels):
            m = mean[c]
            a = scale[c]
            b = shift[c]
            src = x[n, c]
            dst = out[n, c]
            for p in range(plane):
                dst[p] = (src[p] - m) * a + b
    return out


@njit(**_JIT_SUM)
def channel_grad_sums(g, x, mean):
    """Per channel: sum of g, and sum of g * (x - mean), in float64 (batch norm's
    backward needs exactly these two numbers per channel)."""
    n_img, channels, plane = g.shape
    sum_g = np.zeros(channels, dtype=np.float64)
    sum_gx = np.zeros(channels, dtype=np.float64)
    for n in range(n_img):
        for c in range(channels):
            gr = g[n, c]
            xr = x[n, c]
            m = mean[c]
            acc_g = 0.0
            acc_gx = 0.0
            for p in range(plane):
                acc_g += gr[p]
                acc_gx += gr[p] * (xr[p] - m)
            sum_g[c] += acc_g
            sum_gx[c] += acc_gx
    return sum_g, sum_gx


@njit(**_JIT)
def batch_norm_input_grad(g, x, mean, a, b, d, out):
    """``out[n, c] = g[n, c] * a[c] + (x[n, c] - mean[c]) * b[c] + d[c]``: batch
    norm's input gradient in one pass (``functional.BatchNormFn`` derives a, b
    and d)."""
    n_img, channels, plane = g.shape
    for n in range(n_img):
        for c in range(channels):
            m = mean[c]
            ac = a[c]
            bc = b[c]
            dc = d[c]
            gr = g[n, c]
            xr = x[n, c]
            dst = out[n, c]
            for p in range(plane):
                dst[p] = gr[p] * ac + (xr[p] - m) * bc + dc
    return out


# ------------------------------------------------- cross-entropy and ReLU


@njit(**_JIT)
def targets_in_range(target, classes):
    """Whether every class index in ``target`` lies in [0, classes): one pass where
    ``target.min()`` and ``target.max()`` take two."""
    for i in range(target.size):
        if target[i] < 0 or target[i] >= classes:
            return False
    return True


@njit(**_JIT)
def softmax_cross_entropy(logits, target, softmax):
    """Writes the row-wise softmax of ``logits`` (N, C) into ``softmax`` and returns
    the sum over rows of -log softmax[i, target[i]] = log sum_j exp(z_ij - m_i) -
    (z_i,target - m_i), with m_i the row's maximum so that nothing overflows. One
    pass over each row where NumPy takes eight over the whole array; the row sums
    in float64."""
    n, classes = logits.shape
    total = 0.0
    for i in range(n):
        if target[i] < 0 or target[i] >= classes:  # (numba checks no bounds)
            raise ValueError("softmax_cross_entropy: a target lies outside [0, classes)")
        row = logits[i]
        m = row[0]
        for j in range(1, classes):
            if row[j] > m:  # (a NaN is never greater: it reaches the sum through exp)
                m = row[j]
        s = 0.0
        for j in range(classes):
            e = np.exp(row[j] - m)
            softmax[i, j] = e
            s += e
        inverse = 1.0 / s
        for j in range(classes):
            softmax[i, j] *= inverse
        total += np.log(s) - (row[target[i]] - m)
    return total


@njit(**_JIT)
def softmax_cross_entropy_backward(softmax, target, scale, out):
    """``out = scale * (softmax - one_hot(target))``: the gradient of the summed
    loss, times ``scale`` (the incoming gradient over the mean's denominator)."""
    n, classes = softmax.shape
    for i in range(n):
        for j in range(classes):
            out[i, j] = softmax[i, j] * scale
        out[i, target[i]] -= scale
    return out


@njit(**_JIT)
def relu_backward(grad, out, result):
    """``result = grad where out > 0, else 0``, the three arrays of one shape in C
    order: one pass, where ``grad * (out > 0)`` writes a mask first. A NaN gradient
    where the unit is off gives 0, as torch's does."""
    grad, out, flat = grad.reshape(grad.size), out.reshape(out.size), result.reshape(result.size)
    for i in range(grad.size):
        flat[i] = grad[i] if out[i] > 0 else 0
    return result
