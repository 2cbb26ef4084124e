"""What a student relies on from torch, checked against real torch: truth values and
Python numbers from tensors, shared memory that cannot corrupt a gradient, torch's
dtype promotion, and the names tried first (gradcheck, t(), .to(), save/load,
clip_grad_norm_, TensorDataset, unbatched cross-entropy, torch-style Functions)."""
import numpy as np
import pytest
import torch

import minidl as md
import minidl.nn.functional as F
from minidl.data import DataLoader, TensorDataset


def both(values, **kwargs):
    return md.tensor(values, **kwargs), torch.tensor(values, **kwargs)


# ------------------------------------------------------------ numbers from tensors
def test_truth_value_of_several_elements_raises_as_in_torch():
    with pytest.raises(RuntimeError):
        bool(torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(md.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(md.tensor([]))


@pytest.mark.parametrize("values", [[0.0], [3.0], 0.0, -2.0, [[0.0]]])
def test_truth_value_of_one_element_is_its_value(values):
    m, t = both(values)
    assert bool(m) is bool(t)


def test_a_wrong_prediction_is_not_counted_right():
    correct_md = correct_torch = 0
    for pred, label in [(1, 2), (3, 3), (0, 1)]:
        if md.tensor([pred]) == md.tensor([label]):
            correct_md += 1
        if torch.tensor([pred]) == torch.tensor([label]):
            correct_torch += 1
    assert correct_md == correct_torch == 1


def test_python_numbers_from_zero_d_and_one_element_tensors():
    m, t = both(2.5678)
    assert float(m) == float(t) and int(m) == int(t)
    assert f"{m:.3f}" == f"{t:.3f}" == "2.568"
    assert f"{m}" != ""  # no spec: the tensor's repr, as str()
    # torch 2.13 defines no Tensor.__round__ (round(t) is a TypeError there); minidl
    # rounds the element, as round(float(t)) does
    assert round(m, 2) == round(float(t), 2) and round(md.tensor(2.6)) == 3
    m1, t1 = both([[3.7]])
    assert int(m1) == int(t1) and float(m1) == float(t1)
    with pytest.raises(TypeError):
        f"{torch.tensor([1.0, 2.0]):.3f}"
    with pytest.raises(TypeError, match="0-d tensor"):
        f"{md.tensor([1.0, 2.0]):.3f}"
    with pytest.raises(ValueError, match="one element"):
        float(md.tensor([1.0, 2.0]))


def test_comparisons_drive_max_and_min():
    a, b = md.tensor(1.5), md.tensor(-2.0)
    assert float(max(a, b)) == float(max(torch.tensor(1.5), torch.tensor(-2.0))) == 1.5
    assert float(min(a, b)) == -2.0
    assert a > b and not a < b and a == md.tensor(1.5)
    losses = [md.tensor(0.7), md.tensor(0.2), md.tensor(0.4)]
    assert float(min(losses)) == pytest.approx(0.2)
    assert md.tensor([1.0, 0.0]).any() and not md.tensor([1.0, 0.0]).all()


# ------------------------------------------------------------ shared memory
def test_in_place_change_through_detach_is_caught_at_backward():
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    y = (t * t).sum()
    t.detach().add_(1)
    with pytest.raises(RuntimeError, match="inplace"):
        y.backward()
    x = md.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    x.detach().add_(1)  # shares x's memory and its version counter
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_detach_of_an_unused_tensor_changes_nothing_it_should_not():
    x = md.tensor([1.0, 2.0], requires_grad=True)
    d = x.detach()
    d.mul_(3)  # before x is used: legal in torch too
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 12.0])


def test_numpy_of_a_tensor_that_requires_grad_is_a_read_only_view():
    with pytest.raises(RuntimeError, match="requires grad"):
        torch.ones(2, requires_grad=True).numpy()
    x = md.tensor([1.0, 2.0], requires_grad=True)
    view = x.numpy()
    assert np.shares_memory(view, x.data) and not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(x)[0] = 5.0
    writable = x.detach().numpy()  # as in torch: detach() first to write
    assert writable.flags.writeable and np.shares_memory(writable, x.data)


# ------------------------------------------------------------ dtype promotion
PROMOTION_CASES = {
    "int / int": lambda a, i, f, s: i / 2,
    "int / int tensor": lambda a, i, f, s: i / i,
    "int * float": lambda a, i, f, s: i * 0.5,
    "int * int": lambda a, i, f, s: i * 3,
    "float / int tensor": lambda a, i, f, s: f / i,
    "int + float tensor": lambda a, i, f, s: i + f,
    "float32 * float64 0-d": lambda a, i, f, s: f * s,
    "int ** float": lambda a, i, f, s: i ** 0.5,
    "int ** int": lambda a, i, f, s: i ** 2,
    "2 / int": lambda a, i, f, s: 2 / i,
    "1 - int": lambda a, i, f, s: 1 - i,
    "sqrt(int)": lambda a, i, f, s: a.sqrt(i),
    "exp(int)": lambda a, i, f, s: a.exp(i),
    "int32 + int64 0-d": lambda a, i, f, s: a.tensor([1, 2], dtype=a.int32) + a.tensor(3),
    "bool + int": lambda a, i, f, s: (i > 1) + 1,
    "where(int, float)": lambda a, i, f, s: a.where(i > 1, i, 0.5),
}


@pytest.mark.parametrize("case", sorted(PROMOTION_CASES))
def test_dtype_promotion_is_torchs(case):
    op = PROMOTION_CASES[case]
    results = []
    for lib in (md, torch):
        ints = lib.tensor([1, 2, 4])
        floats = lib.tensor([0.5, 1.5, 3.0])
        scalar64 = lib.tensor(2.0, dtype=lib.float64)
        results.append(op(lib, ints, floats, scalar64))
    mine, theirs = results
    assert np.dtype(mine.dtype) == theirs.numpy().dtype, case
    np.testing.assert_allclose(mine.data, theirs.numpy(), rtol=1e-6)


def test_gradients_flow_through_promoted_operands():
    w = md.tensor([0.5, -1.0], requires_grad=True)
    counts = md.tensor([3, 4])
    (w * counts / 2).sum().backward()
    tw = torch.tensor([0.5, -1.0], requires_grad=True)
    (tw * torch.tensor([3, 4]) / 2).sum().backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_allclose(w.grad, tw.grad.numpy())


def test_linear_and_losses_refuse_integer_inputs_as_torch_does():
    with pytest.raises(RuntimeError):
        torch.nn.Linear(2, 3)(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="int64.*float"):
        md.nn.Linear(2, 3)(md.tensor([[1, 2]]))
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.nn.functional.mse_loss(torch.tensor([1, 2]), torch.tensor([1, 3]))
    with pytest.raises(TypeError, match="mse_loss"):
        F.mse_loss(md.tensor([1, 2]), md.tensor([1, 3]))
    with pytest.raises(TypeError, match="cross_entropy"):
        F.cross_entropy(md.tensor([[1, 2, 3]]), md.tensor([2]))
    with pytest.raises(RuntimeError):
        torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(TypeError, match="target"):
        F.binary_cross_entropy_with_logits(md.tensor([1.0]), md.tensor([1]))


def test_a_float_loss_of_integer_targets_is_float32_and_torchs_value():
    mine = F.mse_loss(md.tensor([1.0, 2.5]), md.tensor([1, 3]))
    theirs = torch.nn.functional.mse_loss(torch.tensor([1.0, 2.5]), torch.tensor([1, 3]))
    assert mine.dtype == np.float32
    assert float(mine) == pytest.approx(float(theirs))


# ------------------------------------------------------------ the names tried first
def test_gradcheck_is_callable_and_finds_a_wrong_gradient():
    x = md.randn(3, dtype=np.float64, requires_grad=True)
    assert md.gradcheck(lambda x: (x * x.exp()).sum(), [x])

    class WrongSquare(md.autograd.Function):
        def forward(self, a):
            self.a = a
            return a * a

        def backward(self, grad):
            return grad * self.a  # should be 2a

    with pytest.raises(md.gradcheck.GradcheckError):
        md.gradcheck(lambda x: WrongSquare.apply(x), [x])


def test_t_to_long_int_match_torch():
    values = [[1.7, -2.5, 3.2], [0.4, -0.6, 9.9]]
    m, t = both(values)
    np.testing.assert_array_equal(m.t().data, t.t().numpy())
    assert m.t().shape == (3, 2) and md.tensor([1.0, 2.0]).t().shape == (2,)
    np.testing.assert_array_equal(m.long().data, t.long().numpy())
    assert m.long().dtype == t.long().numpy().dtype and m.int().dtype == t.int().numpy().dtype
    np.testing.assert_array_equal(m.int().data, t.int().numpy())
    assert m.to(md.float64).dtype == np.float64 and m.to("cpu") is m
    with pytest.raises(ValueError, match="CPU only"):
        m.to("cuda")


def test_t_keeps_the_gradient():
    x = md.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    (x.t() * md.tensor([[1.0], [2.0], [3.0]])).sum().backward()
    np.testing.assert_array_equal(x.grad, [[1.0, 2.0, 3.0]])


def test_save_and_load_a_state_dict_in_torchs_argument_order(tmp_path):
    md.manual_seed(0)
    model = md.nn.Sequential(md.nn.Linear(3, 4), md.nn.BatchNorm1d(4), md.nn.Linear(4, 2))
    path = md.save(model.state_dict(), tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as archive:  # a plain npz, no pickle inside
        assert sorted(archive.files) == sorted(model.state_dict())
    md.manual_seed(1)
    other = md.nn.Sequential(md.nn.Linear(3, 4), md.nn.BatchNorm1d(4), md.nn.Linear(4, 2))
    other.load_state_dict(md.load(path))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[key], value)
    with pytest.raises(md.InputError, match="dict of arrays"):
        md.save(model, tmp_path / "m.npz")
    with pytest.raises(md.InputError, match="'fn'"):
        md.save({"fn": print}, tmp_path / "m.npz")


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    for max_norm, norm_type in [(1.0, 2.0), (100.0, 2.0), (0.5, float("inf")), (1.0, 1.0)]:
        mine = [md.nn.Parameter(np.zeros_like(g)) for g in grads]
        theirs = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for p, q, g in zip(mine, theirs, grads):
            p.grad, q.grad = g.copy(), torch.from_numpy(g.copy())
        total = md.nn.utils.clip_grad_norm_(mine, max_norm, norm_type)
        expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
        assert float(total) == pytest.approx(float(expected), rel=1e-5)
        for p, q in zip(mine, theirs):
            np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_dataloader_takes_a_tensor_dataset_and_any_dataset():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    expected = list(DataLoader(x, y, batch_size=4, shuffle=True, seed=3))

    class Pairs:  # a map-style dataset, as a student writes for torch
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i], y[i]

    for dataset in (TensorDataset(md.tensor(x), y), Pairs()):
        batches = list(DataLoader(dataset, batch_size=4, shuffle=True, seed=3))
        assert len(batches) == len(expected) == 3
        for (xb, yb), (xe, ye) in zip(batches, expected):
            np.testing.assert_array_equal(xb, xe)
            np.testing.assert_array_equal(yb, ye)


def test_cross_entropy_of_one_unbatched_sample_matches_torch():
    logits = [0.3, -1.2, 2.0, 0.5]
    mine = md.tensor(logits, requires_grad=True)
    theirs = torch.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(mine, md.tensor(2))
    expected = torch.nn.functional.cross_entropy(theirs, torch.tensor(2))
    assert loss.shape == () and float(loss) == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    expected.backward()
    np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), rtol=1e-6)
    assert md.nn.CrossEntropyLoss(reduction="none")(mine, 1).shape == ()


def test_a_torch_style_function_works_as_in_torch():
    class Cube(md.autograd.Function):
        @staticmethod
        def forward(ctx, x, power=3):
            ctx.save_for_backward(x)
            ctx.power = power
            return x ** power

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * ctx.power * x ** (ctx.power - 1)

    class TorchCube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 3 * x ** 2

    values = [0.5, -1.5, 2.0]
    x = md.tensor(values, requires_grad=True)
    out = Cube.apply(x)
    assert out.grad_fn is not None
    (out * md.tensor([1.0, 2.0, 3.0])).sum().backward()
    t = torch.tensor(values, requires_grad=True)
    expected = TorchCube.apply(t)
    (expected * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    np.testing.assert_allclose(out.data, expected.detach().numpy())
    np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-6)
    x64 = md.tensor(values, dtype=md.float64, requires_grad=True)
    assert md.gradcheck(lambda x: Cube.apply(x), [x64])


def test_a_half_torch_style_function_is_refused_with_minidls_form():
    class Half(md.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        def backward(self, grad):
            return grad * 2

    x = md.tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match="backward must be one too"):
        Half.apply(x).sum().backward()
