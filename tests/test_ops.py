"""Every differentiable op against torch, in float64, from one table.

Each row builds the same computation in minidl and in torch from the same random
inputs; the test compares the outputs and the gradients of every input under a
random upstream gradient (a plain .sum() would hide transposed gradients), runs
md.gradcheck, and repeats on non-contiguous inputs. A last test checks that every
Function subclass in the engine appears in some row, so no op goes untested.
"""
import inspect

import numpy as np
import pytest
import torch

import minidl as md
import minidl.nn.functional as F
import torch.nn.functional as TF
from minidl.autograd import Function
from minidl.gradcheck import gradcheck



def positive(shape, rng):
    return rng.uniform(0.5, 2.0, shape)


def normal(shape, rng):
    return rng.standard_normal(shape)


def distinct(shape, rng):
    """Values far apart, so that max/min/relu kinks are not within a finite-difference step."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.1 + rng.uniform(-0.02, 0.02, shape)


def probabilities(shape, rng):
    return rng.uniform(0.05, 0.95, shape)


class Row:
    def __init__(self, name, md_fn, torch_fn, shapes, init=normal, numeric=True):
        self.name, self.md_fn, self.torch_fn = name, md_fn, torch_fn
        self.shapes, self.init = shapes, init
        self.numeric = numeric  # False where float64 finite differences cannot apply

    def __repr__(self):
        return self.name


rng0 = np.random.default_rng(0)
TARGET = rng0.integers(0, 5, size=6)
TARGET_IGNORE = np.array([0, 3, -100, 1, 4, 2])
WEIGHT = rng0.uniform(0.5, 2, 5)
INDEX = np.array([2, 0, 2, 1])
IDS = np.array([[4, 0, 4], [1, 1, 2]])  # embedding ids, repeated ones accumulate
BCE_TARGET = rng0.uniform(0, 1, (4, 3))
COND = rng0.random((3, 4)) > 0.5

ROWS = [
    # arithmetic with broadcasting, size-1 dims and Python scalars on either side
    Row("add", lambda a, b: a + b, lambda a, b: a + b, [(3, 4), (4,)]),
    Row("add_size1", lambda a, b: a + b, lambda a, b: a + b, [(3, 1, 5), (1, 4, 1)]),
    Row("radd_scalar", lambda a: 2.5 + a, lambda a: 2.5 + a, [(2, 3)]),
    Row("sub", lambda a, b: a - b, lambda a, b: a - b, [(2, 3, 4), (3, 1)]),
    Row("rsub_scalar", lambda a: 1 - a, lambda a: 1 - a, [(5,)]),
    Row("mul", lambda a, b: a * b, lambda a, b: a * b, [(4, 1), (1, 3)]),
    Row("div", lambda a, b: a / b, lambda a, b: a / b, [(3, 4), (4,)], init=positive),
    Row("rdiv_scalar", lambda a: 2 / a, lambda a: 2 / a, [(3,)], init=positive),
    Row("pow_scalar", lambda a: a ** 3, lambda a: a ** 3, [(3, 4)]),
    Row("pow_tensor", lambda a, b: a ** b, lambda a, b: a ** b, [(3, 4), (4,)], init=positive),
    Row("rpow", lambda a: 2.0 ** a, lambda a: 2.0 ** a, [(3,)]),
    Row("neg", lambda a: -a, lambda a: -a, [(3, 2)]),
    Row("matmul", lambda a, b: a @ b, lambda a, b: a @ b, [(3, 4), (4, 5)]),
    Row("matmul_batched", lambda a, b: a @ b, lambda a, b: a @ b, [(2, 3, 4), (4, 2)]),
    Row("matmul_broadcast", lambda a, b: a @ b, lambda a, b: a @ b, [(2, 1, 3, 4), (5, 4, 2)]),
    Row("matmul_vec_mat", lambda a, b: a @ b, lambda a, b: a @ b, [(4,), (2, 4, 3)]),
    Row("matmul_mat_vec", lambda a, b: a @ b, lambda a, b: a @ b, [(2, 3, 4), (4,)]),
    Row("matmul_vec_vec", lambda a, b: a @ b, lambda a, b: a @ b, [(4,), (4,)]),
    # elementwise
    Row("exp", lambda a: a.exp(), lambda a: a.exp(), [(3, 4)]),
    Row("log", lambda a: a.log(), lambda a: a.log(), [(3, 4)], init=positive),
    Row("sqrt", lambda a: a.sqrt(), lambda a: a.sqrt(), [(3, 4)], init=positive),
    Row("abs", lambda a: a.abs(), lambda a: a.abs(), [(3, 4)], init=distinct),
    Row("clip", lambda a: md.clip(a, -0.5, 0.7), lambda a: a.clamp(-0.5, 0.7), [(4, 5)], init=distinct),
    Row("clip_low", lambda a: a.clip(min=0.1), lambda a: a.clamp(min=0.1), [(4, 5)], init=distinct),
    Row("maximum", md.maximum, torch.maximum, [(3, 4), (4,)]),
    Row("minimum", md.minimum, torch.minimum, [(3, 1), (3, 4)]),
    Row("where", lambda a, b: md.where(COND, a, b),
        lambda a, b: torch.where(torch.from_numpy(COND), a, b), [(3, 4), (1, 4)]),
    Row("cast", lambda a: (a.float() * 2).double(), lambda a: (a.float() * 2).double(), [(3,)],
        numeric=False),  # a float32 round trip is too coarse for float64 differences
    Row("clone", lambda a: a.clone() * a, lambda a: a.clone() * a, [(2, 3)]),
    # reductions
    Row("sum_all", lambda a: a.sum(), lambda a: a.sum(), [(3, 4)]),
    Row("sum_dim", lambda a: a.sum(dim=1), lambda a: a.sum(dim=1), [(3, 4, 2)]),
    Row("sum_dims_keep", lambda a: a.sum(dim=(0, 2), keepdim=True),
        lambda a: a.sum(dim=(0, 2), keepdim=True), [(3, 4, 2)]),
    Row("mean_all", lambda a: a.mean(), lambda a: a.mean(), [(3, 4)]),
    Row("mean_axis", lambda a: a.mean(axis=-1, keepdim=True), lambda a: a.mean(dim=-1, keepdim=True), [(3, 4)]),
    Row("var", lambda a: a.var(dim=0), lambda a: a.var(dim=0), [(5, 3)]),
    Row("var_biased_all", lambda a: a.var(unbiased=False), lambda a: a.var(unbiased=False), [(5, 3)]),
    Row("std", lambda a: a.std(dim=1, keepdim=True), lambda a: a.std(dim=1, keepdim=True), [(4, 6)]),
    Row("max_all", lambda a: a.max(), lambda a: a.max(), [(3, 4)], init=distinct),
    Row("max_dim", lambda a: a.max(dim=1).values, lambda a: a.max(dim=1).values, [(3, 4)], init=distinct),
    Row("max_dim_keep", lambda a: a.max(dim=0, keepdim=True)[0],
        lambda a: a.max(dim=0, keepdim=True)[0], [(3, 4)], init=distinct),
    Row("min_all", lambda a: a.min(), lambda a: a.min(), [(3, 4)], init=distinct),
    Row("min_dim", lambda a: a.min(dim=-1).values, lambda a: a.min(dim=-1).values, [(2, 3, 4)], init=distinct),
    Row("amax_dims", lambda a: md.amax(a, dim=(0, 2)), lambda a: torch.amax(a, dim=(0, 2)), [(2, 3, 4)],
        init=distinct),
    # shape
    Row("reshape", lambda a: a.reshape(4, 6) * 1.5, lambda a: a.reshape(4, 6) * 1.5, [(2, 3, 4)]),
    Row("view_infer", lambda a: a.view(-1, 2), lambda a: a.reshape(-1, 2), [(2, 3, 4)]),
    Row("transpose", lambda a: a.transpose(0, 2), lambda a: a.transpose(0, 2), [(2, 3, 4)]),
    Row("permute", lambda a: a.permute(1, 2, 0), lambda a: a.permute(1, 2, 0), [(2, 3, 4)]),
    Row("T", lambda a: a.T @ a, lambda a: a.T @ a, [(3, 4)]),
    Row("flatten", lambda a: a.flatten(1), lambda a: a.flatten(1), [(2, 3, 4)]),
    Row("squeeze", lambda a: a.squeeze(1), lambda a: a.squeeze(1), [(3, 1, 4)]),
    Row("squeeze_all", lambda a: a.squeeze(), lambda a: a.squeeze(), [(1, 3, 1)]),
    Row("unsqueeze", lambda a: a.unsqueeze(-1), lambda a: a.unsqueeze(-1), [(3, 4)]),
    Row("getitem_slice", lambda a: a[1:, ::2], lambda a: a[1:, ::2], [(4, 5)]),
    Row("getitem_int", lambda a: a[2], lambda a: a[2], [(4, 5)]),
    Row("getitem_array_repeated", lambda a: a[INDEX], lambda a: a[torch.from_numpy(INDEX)], [(3, 5)]),
    Row("getitem_pairs", lambda a: a[np.arange(4), INDEX], lambda a: a[torch.arange(4), torch.from_numpy(INDEX)],
        [(4, 3)]),
    Row("getitem_tensor_index", lambda a: a[md.tensor(INDEX)], lambda a: a[torch.from_numpy(INDEX)], [(3, 2)]),
    Row("cat", lambda a, b: md.cat([a, b, a], dim=1), lambda a, b: torch.cat([a, b, a], dim=1), [(2, 3), (2, 1)]),
    Row("stack", lambda a, b: md.stack([a, b], dim=1), lambda a, b: torch.stack([a, b], dim=1), [(2, 3), (2, 3)]),
    Row("pad", lambda a: md.pad(a, (1, 2, 0, 1), value=0.5),
        lambda a: TF.pad(a, (1, 2, 0, 1), value=0.5), [(2, 3, 4)]),
    # nn.functional
    Row("relu", F.relu, TF.relu, [(3, 4)], init=distinct),
    Row("leaky_relu", lambda a: F.leaky_relu(a, 0.2), lambda a: TF.leaky_relu(a, 0.2), [(3, 4)], init=distinct),
    Row("elu", lambda a: F.elu(a, 0.7), lambda a: TF.elu(a, 0.7), [(3, 4)], init=distinct),
    Row("gelu", F.gelu, TF.gelu, [(3, 4)]),
    Row("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"), lambda a: TF.gelu(a, approximate="tanh"), [(3, 4)]),
    Row("sigmoid", F.sigmoid, torch.sigmoid, [(3, 4)]),
    Row("tanh", F.tanh, torch.tanh, [(3, 4)]),
    Row("softmax", lambda a: F.softmax(a, dim=1), lambda a: TF.softmax(a, dim=1), [(3, 4, 2)]),
    Row("log_softmax", lambda a: F.log_softmax(a, dim=-1), lambda a: TF.log_softmax(a, dim=-1), [(3, 4)]),
    Row("linear", F.linear, TF.linear, [(5, 3), (4, 3), (4,)]),
    Row("embedding", lambda w: F.embedding(IDS, w), lambda w: TF.embedding(torch.from_numpy(IDS), w), [(5, 3)]),
    Row("layer_norm", lambda a, w, b: F.layer_norm(a, (4,), w, b), lambda a, w, b: TF.layer_norm(a, (4,), w, b),
        [(2, 3, 4), (4,), (4,)]),
    Row("layer_norm_2d_plain", lambda a: F.layer_norm(a, (3, 4)), lambda a: TF.layer_norm(a, (3, 4)), [(2, 3, 4)]),
    Row("linear_nobias_3d", F.linear, TF.linear, [(2, 5, 3), (4, 3)]),
    Row("batch_norm_train", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True), [(6, 3), (3,), (3,)]),
    Row("batch_norm_train_positions", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True), [(4, 3, 5), (3,), (3,)]),
    Row("batch_norm_eval", lambda x, w, b: F.batch_norm(x, np.linspace(-1, 1, 3), np.linspace(0.5, 2, 3), w, b),
        lambda x, w, b: TF.batch_norm(x, torch.linspace(-1, 1, 3, dtype=torch.float64),
                                      torch.linspace(0.5, 2, 3, dtype=torch.float64), w, b),
        [(6, 3), (3,), (3,)]),
    Row("cross_entropy", lambda z: F.cross_entropy(z, TARGET),
        lambda z: TF.cross_entropy(z, torch.from_numpy(TARGET)), [(6, 5)]),
    Row("cross_entropy_weighted_smooth_ignore",
        lambda z: F.cross_entropy(z, TARGET_IGNORE, weight=WEIGHT, label_smoothing=0.2),
        lambda z: TF.cross_entropy(z, torch.from_numpy(TARGET_IGNORE), weight=torch.from_numpy(WEIGHT),
                                   label_smoothing=0.2), [(6, 5)]),
    Row("cross_entropy_none", lambda z: F.cross_entropy(z, TARGET, reduction="none", label_smoothing=0.1),
        lambda z: TF.cross_entropy(z, torch.from_numpy(TARGET), reduction="none", label_smoothing=0.1), [(6, 5)]),
    Row("cross_entropy_spatial", lambda z: F.cross_entropy(z, TARGET.reshape(2, 3), reduction="sum"),
        lambda z: TF.cross_entropy(z, torch.from_numpy(TARGET.reshape(2, 3)), reduction="sum"), [(2, 5, 3)]),
    Row("nll_loss", lambda z: F.nll_loss(F.log_softmax(z, 1), TARGET_IGNORE, weight=WEIGHT),
        lambda z: TF.nll_loss(TF.log_softmax(z, 1), torch.from_numpy(TARGET_IGNORE), weight=torch.from_numpy(WEIGHT)),
        [(6, 5)]),
    Row("mse_loss", F.mse_loss, TF.mse_loss, [(4, 3), (4, 3)]),
    Row("l1_loss_sum", lambda a, b: F.l1_loss(a, b, reduction="sum"),
        lambda a, b: TF.l1_loss(a, b, reduction="sum"), [(4, 3), (4, 3)], init=distinct),
    Row("binary_cross_entropy", lambda p: F.binary_cross_entropy(p, BCE_TARGET),
        lambda p: TF.binary_cross_entropy(p, torch.from_numpy(BCE_TARGET)), [(4, 3)], init=probabilities),
    Row("bce_with_logits", lambda z: F.binary_cross_entropy_with_logits(z, BCE_TARGET, pos_weight=np.array([1., 2, 3])),
        lambda z: TF.binary_cross_entropy_with_logits(z, torch.from_numpy(BCE_TARGET),
                                                      pos_weight=torch.tensor([1., 2, 3], dtype=torch.float64)),
        [(4, 3)]),
]


def _inputs(row, seed, contiguous=True):
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in row.shapes:
        if contiguous:
            arrays.append(row.init(shape, rng))
        else:
            # The same values seen through a transposed, strided view.
            big = row.init(tuple(reversed(shape)) + (2,), rng)[..., 0]
            arrays.append(np.transpose(big))
    return arrays


def _run_both(row, arrays):
    md_in = [md.Tensor(a, requires_grad=True) for a in arrays]
    th_in = [torch.tensor(a, requires_grad=True) for a in arrays]
    return md_in, row.md_fn(*md_in), th_in, row.torch_fn(*th_in)


@pytest.mark.parametrize("row", ROWS, ids=repr)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_forward_and_gradients_match_torch(row, contiguous):
    arrays = _inputs(row, seed=1, contiguous=contiguous)
    md_in, md_out, th_in, th_out = _run_both(row, arrays)
    assert md_out.dtype == np.float64
    np.testing.assert_allclose(md_out.data, th_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    upstream = np.random.default_rng(2).standard_normal(th_out.shape)
    md_out.backward(upstream)
    th_out.backward(torch.from_numpy(upstream))
    for m, t in zip(md_in, th_in):
        assert m.grad is not None and m.grad.shape == m.shape
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("row", ROWS, ids=repr)
def test_gradcheck(row):
    if not row.numeric:
        pytest.skip("not differentiable numerically in float64")
    arrays = _inputs(row, seed=3)
    inputs = [md.Tensor(a, requires_grad=True) for a in arrays]
    assert gradcheck(row.md_fn, inputs)


def _graph_nodes(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(t.grad_fn for t in node.inputs if t is not None)
    return {type(n).__name__ for n in seen}


# Ops that cannot match torch value for value, with where they are tested instead.
TESTED_ELSEWHERE = {"DropoutFn": "random mask; test_autograd.py::test_dropout"}


def test_every_function_is_in_the_table():
    import minidl.ops
    defined = {
        name for module in (minidl.ops, F)
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, Function) and obj is not Function
        and obj.__module__ == module.__name__
    }
    covered = set()
    for row in ROWS:
        _, out, _, _ = _run_both(row, _inputs(row, seed=0))
        covered |= _graph_nodes(out)
    assert defined - covered - set(TESTED_ELSEWHERE) == set(), "ops without a row in the table"
