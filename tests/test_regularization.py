"""L1 and L2 penalties: values on plain numbers and arrays, gradients as part of a
loss (against torch), and clear errors."""
import numpy as np
import pytest
import torch

import minidl as md
import minidl.nn as nn
import minidl.optim
from minidl.regularization import l1_penalty, l2_penalty

WEIGHTS = [0.2, 0.5, 5, 1, 0.25, 0.75]


def test_values_on_the_course_example():
    # |w| sums to 7.7; w² to 0.04 + 0.25 + 25 + 1 + 0.0625 + 0.5625 = 26.915.
    assert l1_penalty(WEIGHTS) == pytest.approx(7.7, abs=1e-12)
    assert l2_penalty(WEIGHTS) == pytest.approx(26.915, abs=1e-12)
    # The same numbers however the weights are grouped, and with signs flipped for L1.
    split = [np.array([[0.2, -0.5], [5, 1]]), np.array([-0.25, 0.75])]
    assert l1_penalty(split) == pytest.approx(7.7, abs=1e-12)
    assert l2_penalty(split) == pytest.approx(26.915, abs=1e-12)
    assert isinstance(l1_penalty(split), float)


def test_tensors_give_a_differentiable_scalar():
    w = md.tensor(np.array(WEIGHTS) * np.array([1, -1, 1, -1, 1, 1]), requires_grad=True)
    l1 = l1_penalty([w])
    assert isinstance(l1, md.Tensor) and l1.shape == () and l1.item() == pytest.approx(7.7, rel=1e-6)
    l1.backward()
    np.testing.assert_array_equal(w.grad, np.sign(w.data))
    w.grad = None
    l2 = l2_penalty(w)  # a single tensor is accepted too
    l2.backward()
    np.testing.assert_allclose(w.grad, 2 * w.data, rtol=1e-6)


def test_penalised_loss_gradients_match_torch():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    md.manual_seed(0)
    ours = nn.Linear(5, 3).double()
    theirs = torch.nn.Linear(5, 3).double()
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    loss = nn.CrossEntropyLoss()(ours(md.Tensor(x)), y) \
        + 1e-2 * l1_penalty([ours.weight]) + 1e-3 * l2_penalty(ours.parameters())
    t_loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)) \
        + 1e-2 * theirs.weight.abs().sum() + 1e-3 * sum((p ** 2).sum() for p in theirs.parameters())
    np.testing.assert_allclose(loss.item(), t_loss.item(), rtol=1e-12)
    loss.backward()
    t_loss.backward()
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10)


def test_l2_penalty_gradient_step_equals_sgd_weight_decay():
    # lambda * sum w² has gradient 2 lambda w: SGD on it equals weight_decay = 2 lambda.
    rng = np.random.default_rng(1)
    a, b = nn.Parameter(rng.standard_normal(4)), None
    b = nn.Parameter(a.data.copy())
    grad = rng.standard_normal(4)
    (0.05 * l2_penalty([a])).backward()
    a.grad = a.grad + grad
    minidl.optim.SGD([a], lr=0.1).step()
    b.grad = grad.copy()
    minidl.optim.SGD([b], lr=0.1, weight_decay=0.1).step()
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12)


def test_mixed_tensors_and_arrays_and_empty_input():
    w = md.tensor([1.0, -2.0], requires_grad=True)
    total = l1_penalty([w, np.array([3.0])])
    assert isinstance(total, md.Tensor) and total.item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="no parameters"):
        l2_penalty([])
    params = nn.Linear(2, 2).parameters()
    l2_penalty(params)
    with pytest.raises(ValueError, match="consumed"):
        l2_penalty(params)  # the generator is used up
