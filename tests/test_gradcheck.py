"""md.gradcheck: passes on correct gradients, catches wrong ones (also those a
plain .sum() upstream would hide), names the worst entry, and leaves the caller's
tensors as they were."""
import numpy as np
import pytest

import minidl as md
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.autograd import Function
from minidl.gradcheck import GradcheckError, gradcheck, numerical_gradient


def t(*shape, seed=0):
    return md.Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


class TransposedMatMul(Function):
    """a @ b with a classic bug: b's gradient is transposed (aᵀg should be used)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, grad):
        return grad @ self.b.T, (self.a.T @ grad).T


class OneEntryWrong(Function):
    """2x with a gradient that is wrong at one entry only."""

    def forward(self, x):
        return 2 * x

    def backward(self, grad):
        g = 2 * grad.copy()
        g[1, 2] *= 1.5
        return g


def test_passes_on_correct_functions():
    assert gradcheck(lambda x, w, b: F.linear(x, w, b).tanh(), [t(4, 3), t(5, 3, seed=1), t(5, seed=2)])
    assert gradcheck(lambda x: F.cross_entropy(x, np.array([0, 2, 1])), [t(3, 4)])
    # Non-tensor arguments pass through untouched; inputs without requires_grad are constants.
    assert gradcheck(lambda x, c, k: (x * c).sum() * k,
                     [t(3), md.Tensor(np.arange(3.0)), 2.0])


def test_transposed_gradient_is_caught_although_sum_hides_it():
    a, b = t(3, 3), t(3, 3, seed=1)
    # With a plain .sum() upstream, the wrong gradient of b has the right total, so a
    # check along the all-ones direction would pass it...
    TransposedMatMul.apply(a, b).backward(np.ones((3, 3)))
    right = a.data.T @ np.ones((3, 3))
    assert not np.allclose(b.grad, right)
    assert np.sum(b.grad) == pytest.approx(np.sum(right))
    # ...but the random output weighting of gradcheck exposes it.
    with pytest.raises(GradcheckError, match=r"input 1\["):
        gradcheck(TransposedMatMul.apply, [t(3, 3), t(3, 3, seed=1)])


def test_failure_names_the_worst_entry():
    with pytest.raises(GradcheckError, match=r"the worst is input 0\[1, 2\]: analytic"):
        gradcheck(OneEntryWrong.apply, [t(3, 4)])


def test_large_inputs_are_checked_by_directions_and_samples():
    # 60 x 50 = 3000 entries > max_entries: the sample misses the wrong entry, the random
    # directions notice it and bisection finds it.
    with pytest.raises(GradcheckError, match=r"the worst is input 0\[1, 2\]"):
        gradcheck(lambda x: OneEntryWrong.apply(x) * 1.0, [t(60, 50)], max_entries=50)
    assert gradcheck(lambda x: (x * x).sum(), [t(60, 50)], max_entries=50)


def test_module_parameters_are_checked_and_restored():
    md.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 2))  # float32 parameters
    params = list(model.parameters())
    before = [(p.data, p.data.dtype) for p in params]
    model(md.randn(2, 3)).sum().backward()
    grads = [p.grad for p in params]
    x = md.Tensor(np.random.default_rng(0).standard_normal((5, 3)), requires_grad=True)
    assert gradcheck(model, [x], params=params)
    for p, (data, dtype), grad in zip(params, before, grads):
        assert p.data is data and p.dtype == dtype and p.grad is grad


def test_float32_output_is_refused_with_advice():
    x = md.Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x.float() * 2, [x])
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(lambda x: x * 2, [md.Tensor(np.ones(2))])


def test_inputs_are_not_modified():
    x = t(3, 2)
    data = x.data.copy()
    gradcheck(lambda x: x.exp(), [x])
    np.testing.assert_array_equal(x.data, data)
    assert x.grad is None


def test_numerical_gradient_on_plain_arrays():
    a = np.random.default_rng(0).standard_normal((3, 4))
    c = np.arange(12.0).reshape(3, 4)
    g = numerical_gradient(lambda: np.sum(c * a ** 2), a)
    np.testing.assert_allclose(g, 2 * c * a, rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="contiguous"):
        numerical_gradient(lambda: 0.0, np.ones((3, 4)).T)


def test_module_buffers_are_restored():
    md.manual_seed(0)
    bn = nn.BatchNorm1d(3).double()
    x = md.Tensor(np.random.default_rng(1).standard_normal((6, 3)), requires_grad=True)
    assert gradcheck(bn, [x], params=list(bn.parameters()))
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert int(bn.num_batches_tracked) == 0
