"""The engine's semantics: accumulation, broadcasting, graph lifetime, in-place
safety, anomaly detection, no_grad and the error messages."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minidl as md
import minidl.nn.functional as F
from minidl.autograd import Function


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = md.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = (x * x + 3 * x).sum()  # dy/dx = 2x + 3
    y.backward()
    np.testing.assert_allclose(x.grad, [5.0, -1.0, 9.0])
    # and across backward calls, as in torch
    (2 * x).sum().backward()
    np.testing.assert_allclose(x.grad, [7.0, 1.0, 11.0])


def test_broadcast_input_receives_gradient_of_its_own_shape():
    a = md.randn(4, 1, 3, requires_grad=True)
    b = md.randn(5, 1, requires_grad=True)
    c = md.tensor(2.0, requires_grad=True)
    (a * b + c).sum().backward()
    assert a.grad.shape == (4, 1, 3) and b.grad.shape == (5, 1) and c.grad.shape == ()
    np.testing.assert_allclose(c.grad, 4 * 5 * 3)
    np.testing.assert_allclose(b.grad[:, 0], np.full(5, a.data.sum()), rtol=1e-5)


def test_long_chain_does_not_hit_the_recursion_limit():
    x = md.tensor(1.0, requires_grad=True, dtype=np.float64)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001 ** 10_000, rtol=1e-9)


def test_second_backward_raises_unless_graph_retained():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.copy()
    y.backward()  # allowed: the graph was retained
    np.testing.assert_allclose(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_graph_is_freed_after_backward():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    z = y.sum()
    z.backward()
    assert not hasattr(y.grad_fn, "out")  # the saved exp(x) is gone


def test_inplace_change_of_saved_tensor_is_detected():
    w = md.tensor([1.0, 2.0])  # no gradient needed, so in-place changes are allowed
    x = md.tensor([3.0, 4.0], requires_grad=True)
    y = (x * w).sum()  # Mul saves w for the gradient of x
    w += 1
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_inplace_change_of_input_not_saved_is_fine():
    w = md.tensor([1.0, 2.0])
    x = md.tensor([3.0, 4.0], requires_grad=True)
    y = (x + w).sum()  # Add saves nothing
    w += 1
    y.backward()
    np.testing.assert_allclose(x.grad, [1.0, 1.0])


def test_inplace_on_tensor_requiring_grad_is_refused_while_recording():
    x = md.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        x += 1
    with md.no_grad():
        x += 1  # an optimiser-style update
    np.testing.assert_allclose(x.data, [2.0])


def test_requires_grad_on_integer_data_raises():
    with pytest.raises(TypeError, match="int64"):
        md.tensor([1, 2, 3], requires_grad=True)


def test_detect_anomaly_names_the_first_op_producing_nan():
    x = md.tensor([-1.0, 4.0], requires_grad=True)
    with md.detect_anomaly():
        with pytest.raises(FloatingPointError, match="Sqrt"):
            with np.errstate(invalid="ignore"):
                (x.sqrt() * 2).sum()
    # the backward pass too: d/dx sqrt(x) is inf at 0
    x = md.tensor([0.0, 4.0], requires_grad=True)
    with md.detect_anomaly():
        y = x.sqrt().sum()
        with pytest.raises(FloatingPointError, match="backward pass of Sqrt"):
            with np.errstate(divide="ignore"):
                y.backward()


def test_nothing_recorded_under_no_grad_or_without_requires_grad():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    with md.no_grad():
        y = x * 2
    assert y.grad_fn is None and not y.requires_grad
    z = md.tensor([1.0]) * 3
    assert z.grad_fn is None and not z.requires_grad


def test_shape_mismatch_names_op_and_shapes():
    a, b = md.randn(3, 4), md.randn(5)
    with pytest.raises(ValueError, match=r"Add.*\(3, 4\).*\(5,\)"):
        a + b
    with pytest.raises(ValueError, match=r"MatMul.*\(3, 4\).*\(3, 4\)"):
        a @ a
    with pytest.raises(ValueError, match="input shape"):
        F.mse_loss(md.randn(4, 1), md.randn(4))


def test_backward_needs_scalar_or_gradient():
    x = md.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2).backward()


def test_default_dtype_and_float64():
    assert md.tensor([1.0, 2.0]).dtype == np.float32
    assert md.tensor([1, 2]).dtype == np.int64
    x = md.tensor(np.array([1.0, 2.0]), requires_grad=True)  # float64 stays float64
    y = (x * 2.5).sum()
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float64


def test_float32_stays_float32_with_python_scalars():
    x = md.randn(3, requires_grad=True)
    y = (x * 2.0 + 1.0) / 3.0 - 0.5
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_max_with_dim_returns_values_and_indices_like_torch():
    data = np.array([[1.0, 5.0, 5.0], [7.0, 2.0, 7.0]])
    values, indices = md.tensor(data).max(dim=1)
    t_values, t_indices = torch.tensor(data).max(dim=1)
    np.testing.assert_array_equal(values.data, t_values.numpy())
    np.testing.assert_array_equal(indices.data, t_indices.numpy())


def test_full_max_shares_gradient_between_ties_like_torch():
    data = np.array([1.0, 3.0, 3.0])
    x = md.tensor(data, requires_grad=True)
    x.max().backward()
    t = torch.tensor(data, requires_grad=True)
    t.max().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())


def test_dropout_keeps_expected_share_scales_and_routes_gradient():
    md.manual_seed(0)
    x = md.ones(200, 100, requires_grad=True)
    y = F.dropout(x, p=0.3, training=True)
    kept = y.data != 0
    assert 0.68 < kept.mean() < 0.72
    np.testing.assert_allclose(y.data[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, y.data)  # gradient flows exactly where values did
    assert F.dropout(x, p=0.3, training=False) is x


def test_manual_seed_makes_draws_repeatable():
    md.manual_seed(7)
    a = md.randn(5).data
    md.manual_seed(7)
    np.testing.assert_array_equal(a, md.randn(5).data)


def test_detach_shares_data_and_cuts_graph():
    x = md.randn(3, requires_grad=True)
    d = (x * 2).detach()
    assert d.grad_fn is None and not d.requires_grad


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_broadcasting_gradients_match_torch(data):
    """For any pair of broadcastable shapes, each input's gradient has its own shape
    and equals torch's."""
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4,
                                                                   max_side=4)).input_shapes
    op = data.draw(st.sampled_from(["add", "sub", "mul", "div", "maximum", "where"]))
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2, shape_a), rng.uniform(0.5, 2, shape_b)
    cond = np.asarray(rng.random(np.broadcast_shapes(shape_a, shape_b)) > 0.5)
    fns = {
        "add": (lambda x, y: x + y, lambda x, y: x + y),
        "sub": (lambda x, y: x - y, lambda x, y: x - y),
        "mul": (lambda x, y: x * y, lambda x, y: x * y),
        "div": (lambda x, y: x / y, lambda x, y: x / y),
        "maximum": (md.maximum, torch.maximum),
        "where": (lambda x, y: md.where(cond, x, y),
                  lambda x, y: torch.where(torch.from_numpy(cond), x, y)),
    }
    md_fn, torch_fn = fns[op]
    ma, mb = md.tensor(a, requires_grad=True), md.tensor(b, requires_grad=True)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    out, t_out = md_fn(ma, mb), torch_fn(ta, tb)
    upstream = rng.standard_normal(t_out.shape)
    out.backward(upstream)
    t_out.backward(torch.from_numpy(upstream))
    assert ma.grad.shape == shape_a and mb.grad.shape == shape_b
    np.testing.assert_allclose(ma.grad, ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mb.grad, tb.grad.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------- the gradient rule (Function)
# Student-written Functions with the two classic shape bugs. The engine must name
# the Function, the input and both shapes, not fail in a NumPy reshape (or, worse,
# reshape or sum the gradient silently into a wrong one).


class RowSumFn(Function):
    """x.sum(axis=1), with a bug: the gradient is not expanded back over the rows."""

    def forward(self, x):
        return x.sum(axis=1)

    def backward(self, grad):
        return grad  # should be np.broadcast_to(grad[:, None], (3, 4))


class TwiceTransposedFn(Function):
    """2x, with a bug that keeps the size: the gradient comes back transposed."""

    def forward(self, x):
        return 2 * x

    def backward(self, grad):
        return (2 * grad).T


class ScaleFn(Function):
    """x * s for two (4, 1) columns, with a bug: s.T broadcasts x's gradient to (4, 4)."""

    def forward(self, x, s):
        self.x, self.s = x, s
        return x * s

    def backward(self, grad):
        return grad * self.s.T, grad * self.x


class OuterFn(Function):
    """a * b for a (4, 1) and b (1, 3): both gradients come back in the output's
    shape (4, 3), the shape both inputs were broadcast to, as the rule allows."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        return grad * self.b, grad * self.a


class OuterTransposedFn(OuterFn):
    def backward(self, grad):
        grad_a, grad_b = super().backward(grad)
        return grad_a.T, grad_b


def test_gradient_of_a_wrong_shape_names_function_input_and_both_shapes():
    x = md.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"RowSumFn\.backward returned a gradient of shape "
                                           r"\(3,\) for input 0 of shape \(3, 4\)"):
        RowSumFn.apply(x).sum().backward()
    # The same size in another shape is caught too (a reshape would hide it).
    with pytest.raises(RuntimeError, match=r"TwiceTransposedFn.*\(4, 3\).*input 0.*\(3, 4\)"):
        TwiceTransposedFn.apply(x).sum().backward()


def test_over_broadcast_gradient_raises_instead_of_being_summed():
    x, s = md.randn(4, 1, requires_grad=True), md.randn(4, 1, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"ScaleFn\.backward returned a gradient of shape "
                                           r"\(4, 4\) for input 0 of shape \(4, 1\)"):
        ScaleFn.apply(x, s).backward(np.ones((4, 1), dtype=np.float32))


def test_gradient_in_the_broadcast_shape_is_summed_back_by_the_engine():
    a = md.tensor(np.arange(4.0).reshape(4, 1), requires_grad=True)
    b = md.tensor(np.arange(3.0).reshape(1, 3), requires_grad=True)
    upstream = np.random.default_rng(0).standard_normal((4, 3))
    OuterFn.apply(a, b).backward(upstream)
    np.testing.assert_allclose(a.grad, (upstream * b.data).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(b.grad, (upstream * a.data).sum(axis=0, keepdims=True))
    # Anything else is refused, and the message offers both allowed shapes.
    with pytest.raises(RuntimeError, match=r"OuterTransposedFn.*\(3, 4\) for input 0 of shape "
                                           r"\(4, 1\); expected \(4, 1\) or \(4, 3\), the "
                                           r"shape it was broadcast to in forward"):
        OuterTransposedFn.apply(a, b).backward(upstream)
