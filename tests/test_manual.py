"""md.manual: hand-written backprop against central differences (h = 1e-5, relative
error below 1e-5) and against minidl's autograd on the same weights."""
import numpy as np
import pytest

import minidl as md
import minidl.nn as nn
import minidl.nn.functional as F
from minidl import manual
from minidl.gradcheck import numerical_gradient

H = 1e-5


def rel_error(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


def check_module(module, x, seed=0):
    """dx from backward against the numerical gradient of sum(dout * forward(x))."""
    out = module.forward(x)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    dx = module.backward(dout)
    numeric = numerical_gradient(lambda: np.sum(dout * module.forward(x)), x, h=H)
    assert dx.shape == x.shape
    assert rel_error(dx, numeric) < 1e-5
    return dout


def test_linear_module_gradients_and_layout():
    md.manual_seed(0)
    layer = manual.LinearModule(5, 3)
    assert layer.params["weight"].shape == (3, 5) and layer.params["bias"].shape == (3,)
    assert not layer.params["bias"].any() and layer.params["weight"].dtype == np.float64
    layer.params["bias"] = np.random.default_rng(1).standard_normal(3)
    x = np.random.default_rng(2).standard_normal((4, 5))
    dout = check_module(layer, x)
    layer.forward(x)
    layer.backward(dout)
    for key in ("weight", "bias"):
        numeric = numerical_gradient(lambda: np.sum(dout * layer.forward(x)), layer.params[key], h=H)
        assert layer.grads[key].shape == layer.params[key].shape
        assert rel_error(layer.grads[key], numeric) < 1e-5, key


def test_linear_module_kaiming_init():
    md.manual_seed(0)
    hidden = manual.LinearModule(500, 400)
    first = manual.LinearModule(500, 400, input_layer=True)
    assert abs(hidden.params["weight"].std() - np.sqrt(2 / 500)) < 0.01 * np.sqrt(2 / 500)
    assert abs(first.params["weight"].std() - np.sqrt(1 / 500)) < 0.01 * np.sqrt(1 / 500)


@pytest.mark.parametrize("module", [manual.ReLUModule(), manual.ELUModule(), manual.ELUModule(0.5),
                                    manual.SoftMaxModule()], ids=["relu", "elu", "elu_alpha", "softmax"])
def test_activation_gradients(module):
    x = np.random.default_rng(3).standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink of ReLU
    check_module(module, x)


def test_softmax_max_trick_and_values():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    y = manual.SoftMaxModule().forward(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0)
    np.testing.assert_allclose(y[1], 1 / 3)
    np.testing.assert_allclose(y, F.softmax(md.Tensor(x), 1).data, rtol=1e-12)


def test_elu_matches_autograd_and_does_not_overflow():
    x = np.array([[-30.0, -1.0, 0.0, 1e-9, 700.0, 2.0]])
    module = manual.ELUModule()
    y = module.forward(x)
    assert np.all(np.isfinite(y))
    dout = np.arange(1.0, 7.0)[None]
    t = md.Tensor(x, requires_grad=True)
    F.elu(t).backward(dout)
    np.testing.assert_allclose(y, F.elu(md.Tensor(x)).data, rtol=1e-12)
    np.testing.assert_allclose(module.backward(dout), t.grad, rtol=1e-12, atol=1e-15)


def test_cross_entropy_module():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([0, 3, 1, 1, 2])
    loss_module = manual.CrossEntropyModule()
    loss = loss_module.forward(probs, y)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(5), y])))
    assert loss == pytest.approx(F.cross_entropy(md.Tensor(logits), y).item(), rel=1e-12)
    numeric = numerical_gradient(lambda: loss_module.forward(probs, y), probs, h=H)
    assert rel_error(loss_module.backward(probs, y), numeric) < 1e-5
    one_hot = np.eye(4)[y]
    assert loss_module.forward(probs, one_hot) == pytest.approx(loss)
    with pytest.raises(ValueError, match="labels"):
        loss_module.forward(probs, np.array([0, 1]))


def _twin(mlp):
    """The same network in minidl autograd, carrying the manual MLP's weights."""
    layers = []
    for module in mlp.layers:
        if isinstance(module, manual.LinearModule):
            linear = nn.Linear(module.in_features, module.out_features).double()
            linear.load_state_dict(module.params)
            layers.append(linear)
        elif isinstance(module, manual.ELUModule):
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def test_mlp_gradients_match_numerical_and_autograd():
    md.manual_seed(5)
    mlp = manual.MLP(6, [7, 5], 3)
    assert [type(m).__name__ for m in mlp.layers] == [
        "LinearModule", "ELUModule", "LinearModule", "ELUModule", "LinearModule", "SoftMaxModule"]
    assert mlp.layers[0].input_layer and not mlp.layers[2].input_layer
    rng = np.random.default_rng(6)
    for layer in mlp.linear_modules:  # non-zero biases, so that their gradients matter
        layer.params["bias"] = 0.1 * rng.standard_normal(layer.out_features)
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
    loss_module = manual.CrossEntropyModule()

    probs = mlp.forward(x)
    loss = loss_module.forward(probs, y)
    dx = mlp.backward(loss_module.backward(probs, y))

    # Against central differences on every weight and on the input.
    def loss_fn():
        return loss_module.forward(mlp.forward(x), y)

    for i, layer in enumerate(mlp.linear_modules):
        for key in ("weight", "bias"):
            numeric = numerical_gradient(loss_fn, layer.params[key], h=H)
            assert rel_error(layer.grads[key], numeric) < 1e-5, (i, key)
    assert rel_error(dx, numerical_gradient(loss_fn, x, h=H)) < 1e-5

    # Against autograd on the same weights.
    twin = _twin(mlp)
    xt = md.Tensor(x, requires_grad=True)
    auto_loss = F.cross_entropy(twin(xt), y)
    auto_loss.backward()
    assert auto_loss.item() == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(dx, xt.grad, rtol=1e-9, atol=1e-12)
    linears = [m for m in twin if isinstance(m, nn.Linear)]
    for layer, linear in zip(mlp.linear_modules, linears):
        np.testing.assert_allclose(layer.grads["weight"], linear.weight.grad, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(layer.grads["bias"], linear.bias.grad, rtol=1e-9, atol=1e-12)


def test_forward_reads_params_on_every_call_and_clear_cache():
    md.manual_seed(0)
    mlp = manual.MLP(4, [3], 2)
    x = np.random.default_rng(0).standard_normal((2, 4))
    before = mlp.forward(x)
    mlp.layers[0].params["weight"] = np.zeros((3, 4))  # replaced from outside
    after = mlp.forward(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, mlp.forward(np.zeros((2, 4))))  # the input no longer matters
    mlp.clear_cache()
    assert all(getattr(m, "x", None) is None and getattr(m, "out", None) is None for m in mlp.layers)
    with pytest.raises(RuntimeError, match="forward"):
        mlp.layers[0].backward(np.ones((2, 3)))


def test_mlp_learns_with_plain_sgd():
    # The template's training loop in miniature: loss must fall on a separable problem.
    md.manual_seed(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    mlp, loss_module = manual.MLP(2, [16], 2), manual.CrossEntropyModule()
    losses = []
    for _ in range(100):
        probs = mlp.forward(x)
        losses.append(loss_module.forward(probs, y))
        mlp.backward(loss_module.backward(probs, y))
        for layer in mlp.linear_modules:
            for key in ("weight", "bias"):
                layer.params[key] -= 0.5 * layer.grads[key]
    assert losses[-1] < 0.25 * losses[0]
    assert np.mean(mlp.forward(x).argmax(axis=1) == y) > 0.95
