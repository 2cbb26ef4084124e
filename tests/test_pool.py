"""max_pool2d, avg_pool2d and adaptive_avg_pool2d against torch in float64
(forward and input gradient under a random upstream gradient), ties in max
pooling, return_indices, gradcheck, bad input, and the pooling layers."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl as md
import minidl.conv as C
from minidl.gradcheck import gradcheck
from minidl.nn.conv import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d


def _compare(md_fn, torch_fn, x, seed=0):
    mx, tx = md.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    mo, to = md_fn(mx), torch_fn(tx)
    assert mo.shape == tuple(to.shape)
    np.testing.assert_allclose(mo.data, to.detach().numpy(), rtol=1e-12, atol=1e-12)
    upstream = np.random.default_rng(seed).standard_normal(mo.shape)
    mo.backward(upstream)
    to.backward(torch.from_numpy(upstream))
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def _distinct(shape, seed):
    """Values far apart: no ties, so the maxima are unambiguous."""
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 3.0


MAX_CASES = [
    dict(kernel_size=2),                                     # the int8 fast path
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1),                # overlapping windows
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0)),
    dict(kernel_size=3, stride=2, dilation=2),
    dict(kernel_size=2, ceil_mode=True),                     # odd size: a half window
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 7, 9)], ids=["even", "odd-batch1"])
def test_max_pool2d_matches_torch(case, shape):
    _compare(lambda x: C.max_pool2d(x, **case), lambda x: TF.max_pool2d(x, **case),
             _distinct(shape, seed=len(str(case))))


@pytest.mark.parametrize("case", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
                                  dict(kernel_size=(3, 2), stride=2)], ids=str)
def test_max_pool2d_ties_go_where_torch_sends_them(case):
    """Plateaus of equal values: the gradient goes to the first maximum in row-major
    order of the window, in both the fast 2x2 path and the general one."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, size=(2, 3, 8, 7)).astype(np.float64)  # many ties
    x[0, 0] = 1.0  # a whole plane of one value
    _compare(lambda x: C.max_pool2d(x, **case), lambda x: TF.max_pool2d(x, **case), x)


@pytest.mark.parametrize("case", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)],
                         ids=str)
def test_max_pool2d_return_indices_and_nan(case):
    x = _distinct((2, 3, 7, 8), seed=4)
    x[0, 1, 2, 3] = np.nan  # torch lets NaN win its window
    out, idx = C.max_pool2d(md.Tensor(x), return_indices=True, **case)
    t_out, t_idx = TF.max_pool2d(torch.tensor(x), return_indices=True, **case)
    np.testing.assert_array_equal(idx.data, t_idx.numpy())
    np.testing.assert_array_equal(out.data, t_out.numpy())  # NaNs compare equal here


AVG_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=2, divisor_override=3),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool2d_matches_torch(case):
    x = np.random.default_rng(5).standard_normal((2, 3, 7, 6))
    _compare(lambda x: C.avg_pool2d(x, **case), lambda x: TF.avg_pool2d(x, **case), x)


@pytest.mark.parametrize("size", [1, (1, 1), 2, (3, 2), (5, 7), (None, 2)], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 5, 9)], ids=str)
def test_adaptive_avg_pool2d_matches_torch(size, shape):
    x = np.random.default_rng(6).standard_normal(shape)
    _compare(lambda x: C.adaptive_avg_pool2d(x, size),
             lambda x: TF.adaptive_avg_pool2d(x, size), x)


def test_pooling_gradcheck_and_unbatched():
    x = md.Tensor(_distinct((2, 2, 6, 5), seed=7), requires_grad=True)
    assert gradcheck(lambda x: C.max_pool2d(x, 3, stride=2, padding=1), [x])
    assert gradcheck(lambda x: C.max_pool2d(x, 2), [x])
    assert gradcheck(lambda x: C.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
                     [x])
    assert gradcheck(lambda x: C.adaptive_avg_pool2d(x, (4, 3)), [x])
    single = _distinct((3, 6, 5), seed=8)  # one image (C, H, W)
    _compare(lambda x: C.max_pool2d(x, 2), lambda x: TF.max_pool2d(x, 2), single)
    _compare(lambda x: C.avg_pool2d(x, 2), lambda x: TF.avg_pool2d(x, 2), single)


def test_float32_stays_float32():
    x = md.Tensor(np.random.default_rng(9).standard_normal((2, 3, 8, 8)).astype(np.float32),
                  requires_grad=True)
    for fn in (lambda x: C.max_pool2d(x, 2), lambda x: C.max_pool2d(x, 3, 1, 1),
               lambda x: C.avg_pool2d(x, 2), lambda x: C.adaptive_avg_pool2d(x, 1)):
        out = fn(x)
        assert out.dtype == np.float32
        out.sum().backward()
        assert x.grad.dtype == np.float32
        x.grad = None


@pytest.mark.parametrize("call,words", [
    (lambda x: C.max_pool2d(x, 9), ["larger than the padded input", "(2, 3, 8, 8)"]),
    (lambda x: C.max_pool2d(x, 2, padding=2), ["at most half"]),
    (lambda x: C.avg_pool2d(x, 3, padding=2), ["at most half"]),
    (lambda x: C.max_pool2d(x[0, 0], 2), ["(8, 8)", "2 dimensions"]),
    (lambda x: C.avg_pool2d(x[None], 2), ["(1, 2, 3, 8, 8)"]),
    (lambda x: C.max_pool2d(x, 0), ["kernel_size"]),
    (lambda x: C.adaptive_avg_pool2d(x, (1, 2, 3)), ["output_size"]),
    (lambda x: C.avg_pool2d(x, 2, divisor_override=0), ["divisor_override"]),
])
def test_bad_input_raises_value_error(call, words):
    x = md.Tensor(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError) as info:
        call(x)
    for word in words:
        assert word in str(info.value)


def test_layers_match_torch_layers():
    x = _distinct((2, 3, 9, 8), seed=10)
    pairs = [
        (MaxPool2d(2), torch.nn.MaxPool2d(2)),
        (MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
         torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)),
        (AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
         torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
        (AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)),
        (AdaptiveAvgPool2d((2, 3)), torch.nn.AdaptiveAvgPool2d((2, 3))),
    ]
    for mine, theirs in pairs:
        assert mine.stride == theirs.stride if hasattr(theirs, "stride") else True
        _compare(mine, theirs, x)
    out, idx = MaxPool2d(2, return_indices=True)(md.Tensor(x))
    np.testing.assert_array_equal(idx.data, torch.nn.MaxPool2d(2, return_indices=True)(
        torch.tensor(x))[1].numpy())
    assert "kernel_size=2" in repr(MaxPool2d(2))
