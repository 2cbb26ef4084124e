"""The shortcuts that keep the engine's overhead small (issue 19) change no result.
A leaf keeps a gradient array only when nothing else holds it (and a user who keeps
a gradient never sees it change afterwards). The one-pass numba kernels equal torch:
cross-entropy's plain case (no class weights, nothing ignored, no smoothing) and
ReLU's gradient; SGD's one-pass momentum update equals NumPy's bit for bit; scalars
and empty batches stay out of the kernels. And the MLP step stays lean in structure:
one graph node per layer, no float64 array."""
import weakref

import numpy as np
import torch

import minidl as md
import minidl.nn as nn
import minidl.nn.functional as F
from minidl.autograd import Function


def test_a_gradient_handed_to_two_leaves_is_two_arrays():
    a = md.tensor([1.0, 2.0], requires_grad=True)
    b = md.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()  # Add hands the same array to both
    assert a.grad is not b.grad
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])


def test_the_callers_gradient_is_copied_not_kept():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    upstream = np.array([5.0, 6.0], dtype=np.float32)
    (x + 0).backward(upstream)
    x.grad *= 2
    np.testing.assert_array_equal(upstream, [5.0, 6.0])


class ReturnsSavedFn(Function):
    """A (wrong-headed but legal) backward that returns an array it saved."""

    def forward(self, x):
        self.ones = np.ones_like(x)
        return x.copy()

    def backward(self, grad):
        return self.ones


def test_an_array_the_node_saved_is_copied():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    out = ReturnsSavedFn.apply(x)
    node = out.grad_fn
    out.backward(np.ones(2, dtype=np.float32), retain_graph=True)
    x.grad *= 3
    np.testing.assert_array_equal(node.ones, [1.0, 1.0])


class FreshGradFn(Function):
    """Returns a fresh gradient, watched through a weak reference (which holds nothing)."""
    made = []

    def forward(self, x):
        return x.copy()

    def backward(self, grad):
        fresh = grad * 2
        FreshGradFn.made.append(weakref.ref(fresh))
        return fresh


def test_a_fresh_gradient_nothing_else_holds_is_kept_without_a_copy():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    FreshGradFn.apply(x).backward(np.ones(2, dtype=np.float32))
    assert x.grad is FreshGradFn.made[-1]()  # the very array backward made: no copy
    kept = []  # a caller's backward (torch's form) that keeps what it returns gets a copy

    class KeepsFn(Function):
        @staticmethod
        def forward(ctx, t):
            return t * 1

        @staticmethod
        def backward(ctx, grad):
            kept.append(grad * 2)
            return kept[-1]

    y = md.tensor([1.0, 2.0], requires_grad=True)
    KeepsFn.apply(y).backward(np.ones(2, dtype=np.float32))
    assert y.grad is not kept[0].data
    kept[0].data[:] = 0
    np.testing.assert_array_equal(y.grad, [2.0, 2.0])


def test_a_linear_layers_fresh_weight_gradient_is_kept_and_accumulates():
    md.manual_seed(0)
    layer = nn.Linear(3, 2)
    x = md.randn(4, 3)
    layer(x).sum().backward()
    first = layer.weight.grad.copy()
    layer(x).sum().backward()  # a second backward adds to the kept array
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)
    expected = np.ones((4, 2), np.float32).T @ x.data
    np.testing.assert_allclose(first, expected, rtol=1e-6)


def test_plain_cross_entropy_and_its_gradient_equal_torchs():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((16, 7)) * 3
    target = rng.integers(0, 7, 16)
    mine = md.tensor(logits, requires_grad=True, dtype=np.float64)
    theirs = torch.tensor(logits, requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        mine.grad, theirs.grad = None, None
        loss = F.cross_entropy(mine, target, reduction=reduction)
        their_loss = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(target),
                                                       reduction=reduction)
        np.testing.assert_allclose(loss.data, their_loss.detach().numpy(), rtol=1e-12)
        loss.sum().backward()
        their_loss.sum().backward()
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_plain_cross_entropy_in_float32_equals_torchs_and_does_not_overflow():
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((64, 10)) * 5 + np.array([[1e4], [-1e4]]).repeat(32, 0)).astype(np.float32)
    target = rng.integers(0, 10, 64)
    mine = md.tensor(logits, requires_grad=True)
    theirs = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(mine, target)
    their_loss = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(target))
    loss.backward()
    their_loss.backward()
    assert loss.dtype == mine.grad.dtype == np.float32 and np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), their_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_relus_gradient_is_torchs_on_both_paths_even_for_nan_and_inf():
    """C-ordered arrays take the one-pass kernel, a transposed gradient NumPy's where;
    both pass the gradient where the unit is on and give 0 where it is off, a NaN or
    inf gradient included, as torch does."""
    x = np.array([[-2.0, 0.0, 3.0], [1.5, -0.5, 2.0]], dtype=np.float32)
    upstream = np.array([[np.nan, np.inf, 1.0], [-np.inf, np.nan, 4.0]], dtype=np.float32)
    theirs = torch.tensor(x, requires_grad=True)
    torch.relu(theirs).backward(torch.from_numpy(upstream))
    for transposed in (False, True):
        mine = md.tensor(x.T.copy() if transposed else x, requires_grad=True)
        out = F.relu(mine.T if transposed else mine)  # out (2, 3) either way; transposed: F order
        out.backward(upstream)
        grad = mine.grad.T if transposed else mine.grad
        np.testing.assert_array_equal(grad, theirs.grad.numpy())
        assert mine.grad.dtype == np.float32


def _mlp_step_graph():
    """One forward pass of the benchmark's MLP (tiny sizes), float32, graph kept."""
    md.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))
    x = md.Tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
    loss = nn.CrossEntropyLoss()(model(x), np.array([0, 2, 1, 2]))
    nodes, stack = [], [loss.grad_fn]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(t.grad_fn for t in node.inputs if t is not None and t.grad_fn is not None)
    return model, loss, nodes


def test_an_mlp_step_records_one_node_per_layer_and_the_loss():
    _, _, nodes = _mlp_step_graph()
    names = sorted(type(node).__name__ for node in nodes)
    assert names == ["CrossEntropyFn"] + ["LinearFn"] * 3 + ["ReLUFn"] * 2


def test_a_float32_step_makes_no_float64_array():
    model, loss, nodes = _mlp_step_graph()
    saved = [value for node in nodes for value in vars(node).values()
             if isinstance(value, np.ndarray) and value.dtype.kind == "f"]
    assert saved and {a.dtype for a in saved} == {np.dtype(np.float32)}
    assert loss.dtype == np.float32
    opt = md.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss.backward()
    opt.step()
    opt.step()  # the second step updates the momentum buffers in place
    for p in model.parameters():
        assert p.grad.dtype == p.data.dtype == opt.state[p]["momentum_buffer"].dtype == np.float32


def test_cross_entropys_ignore_and_weight_paths_equal_torchs():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((8, 4))
    cases = [(np.array([0, -100, 3, 1, -100, 2, 0, 1]), {}),           # ignored rows, default index
             (np.array([0, 1, 3, 1, 0, 2, 0, 1]), {"ignore_index": 0}),  # an index among the classes
             (np.array([0, 1, 3, 1, 0, 2, 0, 1]), {"weight": [1.0, 2.0, 0.5, 1.5]})]
    for target, options in cases:
        mine = md.tensor(logits, requires_grad=True, dtype=np.float64)
        theirs = torch.tensor(logits, requires_grad=True)
        their_options = {k: torch.tensor(v, dtype=torch.float64) if k == "weight" else v
                         for k, v in options.items()}
        loss = F.cross_entropy(mine, target, **{k: np.array(v) if k == "weight" else v
                                                 for k, v in options.items()})
        their_loss = torch.nn.functional.cross_entropy(theirs, torch.from_numpy(target),
                                                       **their_options)
        np.testing.assert_allclose(loss.data, their_loss.detach().numpy(), rtol=1e-12)
        loss.backward()
        their_loss.backward()
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-14)


def _layer_step(layer, x, opt=None):
    layer(x).sum().backward()
    if opt is not None:
        opt.step()


def test_a_gradient_the_user_keeps_is_not_changed_by_later_steps():
    # The engine lets a leaf keep its fresh gradient array without a copy; the user who
    # keeps that array must still see it unchanged by the update, by a second backward
    # that accumulates, and by the next step's gradient.
    md.manual_seed(0)
    layer = nn.Linear(3, 2)
    x = md.randn(4, 3)
    opt = md.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    _layer_step(layer, x, opt)
    kept, expected = layer.weight.grad, layer.weight.grad.copy()
    opt.step()  # the momentum buffer is updated in place: it is not the gradient
    _layer_step(layer, x)  # accumulates into .grad
    np.testing.assert_array_equal(kept, expected)
    assert layer.weight.grad is not kept
    opt.zero_grad()
    _layer_step(layer, x, opt)
    np.testing.assert_array_equal(kept, expected)
    assert not np.shares_memory(opt.state[layer.weight]["momentum_buffer"], layer.weight.grad)


class PassesGradOnFn(Function):
    """torch's form: backward returns the incoming gradient tensor itself."""

    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, grad):
        ctx.seen = grad
        return grad


def test_a_torch_style_functions_gradient_is_copied():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    out = PassesGradOnFn.apply(x)
    node = out.grad_fn
    out.backward(np.array([1.0, 1.0], dtype=np.float32), retain_graph=True)
    x.grad *= 5
    np.testing.assert_array_equal(node.seen.data, [1.0, 1.0])


def test_retained_graph_accumulates_and_a_released_one_names_the_node():
    md.manual_seed(0)
    layer = nn.Linear(3, 2)
    x = md.randn(4, 3)
    loss = layer(x).relu().sum()
    loss.backward(retain_graph=True)
    first = layer.weight.grad.copy()
    loss.backward()
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)
    try:
        loss.backward()
    except RuntimeError as error:
        assert "second time" in str(error) and "SumFn" in str(error)  # the first node it meets
    else:
        raise AssertionError("a third backward through a released graph must raise")


def test_an_input_changed_in_place_after_forward_is_caught_in_a_layer():
    md.manual_seed(0)
    layer = nn.Linear(3, 2)
    loss = layer(md.randn(4, 3)).sum()
    with md.no_grad():
        layer.weight.add_(1.0)
    try:
        loss.backward()
    except RuntimeError as error:
        assert "LinearFn" in str(error) and "modified in place" in str(error)
    else:
        raise AssertionError("backward must refuse a weight changed since forward")


def _numpy_momentum_steps(p, grads, lr, momentum):
    """SGD with momentum written out in NumPy, torch's formula."""
    p, buf = p.copy(), None
    for g in grads:
        buf = g.copy() if buf is None else buf * np.float32(momentum) + g
        p -= np.float32(lr) * buf
    return p, buf


def test_the_one_pass_momentum_update_equals_numpys_bit_for_bit():
    rng = np.random.default_rng(0)
    start = rng.standard_normal((5, 7)).astype(np.float32)
    grads = [rng.standard_normal((5, 7)).astype(np.float32) for _ in range(4)]
    expected, expected_buf = _numpy_momentum_steps(start, grads, lr=0.05, momentum=0.9)
    for layout in ("C", "F"):  # F order: not flat, so the NumPy path updates it
        p = md.Tensor(np.array(start, order=layout), requires_grad=True)
        opt = md.optim.SGD([p], lr=0.05, momentum=0.9)
        for g in grads:
            p.grad = np.array(g, order=layout)
            opt.step()
        np.testing.assert_array_equal(p.data, expected)
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], expected_buf)


def test_the_one_pass_kernels_leave_scalars_and_empty_batches_to_numpy():
    """numba takes a 0-d array for a scalar, so a 0-d parameter or activation must not
    reach the flat kernels: a learnable scalar with momentum and a scalar ReLU give
    torch's numbers, and an empty batch's mean cross-entropy is NaN, as torch's."""
    mine, theirs = md.tensor(1.5, requires_grad=True), torch.tensor(1.5, requires_grad=True)
    my_opt = md.optim.SGD([mine], lr=0.1, momentum=0.9)
    their_opt = torch.optim.SGD([theirs], lr=0.1, momentum=0.9)
    for _ in range(3):
        my_opt.zero_grad()
        (mine * mine).backward()
        my_opt.step()
        their_opt.zero_grad()
        (theirs * theirs).backward()
        their_opt.step()
    np.testing.assert_allclose(mine.item(), theirs.item(), rtol=1e-6)
    x = md.tensor(-2.0, requires_grad=True)
    F.relu(x).backward()
    assert x.grad == 0.0 and x.grad.shape == ()
    with np.errstate(invalid="ignore", divide="ignore"):
        empty = F.cross_entropy(md.tensor(np.zeros((0, 3), np.float32), requires_grad=True), np.zeros(0, np.int64))
    assert np.isnan(empty.item())
