"""md.nn modules against torch.nn: every layer's forward and gradients in float64
(weights copied over), gradcheck of every layer including its parameters, and the
Module machinery: names, state dicts both ways, load errors, modes, dtypes, init."""
import math
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

import minidl as md
import minidl.nn as nn
import minidl.optim
from minidl.gradcheck import gradcheck

tnn = torch.nn


def to_torch_state(module):
    return {k: torch.from_numpy(v) for k, v in module.state_dict().items()}


def run_both(md_layer, torch_layer, inputs, extra=(), seed=1):
    """Same layer in both engines (float64, torch weights copied from minidl), same
    inputs, same random upstream gradient: outputs and all gradients must agree."""
    md_layer.double()
    torch_layer.double()
    torch_layer.load_state_dict(to_torch_state(md_layer))
    md_in = [md.Tensor(a.copy(), requires_grad=True) for a in inputs]
    th_in = [torch.tensor(a, requires_grad=True) for a in inputs]
    md_out = md_layer(*md_in, *extra)
    th_out = torch_layer(*th_in, *[torch.from_numpy(e) for e in extra])
    assert md_out.dtype == np.float64
    np.testing.assert_allclose(md_out.data, th_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    upstream = np.random.default_rng(seed).standard_normal(th_out.shape)
    md_out.backward(upstream)
    th_out.backward(torch.from_numpy(upstream))
    for m, t in zip(md_in, th_in):
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-9, atol=1e-11)
    th_params = dict(torch_layer.named_parameters())
    for name, p in md_layer.named_parameters():
        np.testing.assert_allclose(p.grad, th_params[name].grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=name)
    return md_out, th_out


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# (name, minidl layer factory, torch layer factory, input shapes)
LAYERS = [
    ("linear", lambda: nn.Linear(5, 3), lambda: tnn.Linear(5, 3), [(4, 5)]),
    ("linear_no_bias", lambda: nn.Linear(5, 3, bias=False), lambda: tnn.Linear(5, 3, bias=False),
     [(4, 5)]),
    ("linear_3d_input", lambda: nn.Linear(5, 3), lambda: tnn.Linear(5, 3), [(2, 4, 5)]),
    ("relu", nn.ReLU, tnn.ReLU, [(4, 6)]),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), lambda: tnn.LeakyReLU(0.2), [(4, 6)]),
    ("elu", lambda: nn.ELU(0.7), lambda: tnn.ELU(0.7), [(4, 6)]),
    ("gelu", nn.GELU, tnn.GELU, [(4, 6)]),
    ("gelu_tanh", lambda: nn.GELU("tanh"), lambda: tnn.GELU("tanh"), [(4, 6)]),
    ("sigmoid", nn.Sigmoid, tnn.Sigmoid, [(4, 6)]),
    ("tanh", nn.Tanh, tnn.Tanh, [(4, 6)]),
    ("softmax", lambda: nn.Softmax(dim=1), lambda: tnn.Softmax(dim=1), [(4, 6)]),
    ("log_softmax", lambda: nn.LogSoftmax(dim=1), lambda: tnn.LogSoftmax(dim=1), [(4, 6)]),
    ("flatten", nn.Flatten, tnn.Flatten, [(2, 3, 2, 2)]),
    ("identity", nn.Identity, tnn.Identity, [(3, 4)]),
    ("batchnorm1d_train", lambda: nn.BatchNorm1d(4), lambda: tnn.BatchNorm1d(4), [(6, 4)]),
    ("batchnorm1d_train_3d", lambda: nn.BatchNorm1d(4), lambda: tnn.BatchNorm1d(4), [(3, 4, 5)]),
    ("batchnorm1d_no_affine", lambda: nn.BatchNorm1d(4, affine=False),
     lambda: tnn.BatchNorm1d(4, affine=False), [(6, 4)]),
    ("batchnorm1d_no_bias", lambda: nn.BatchNorm1d(4, bias=False),
     lambda: tnn.BatchNorm1d(4, bias=False), [(6, 4)]),
    ("sequential_mlp",
     lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)),
     lambda: tnn.Sequential(tnn.Linear(5, 8), tnn.Tanh(), tnn.Linear(8, 3)), [(4, 5)]),
]


def _affine_bn(layer):
    """BatchNorm starts at weight 1, bias 0: move them so that their gradients matter."""
    if isinstance(layer, nn.BatchNorm1d) and layer.affine:
        layer.weight.data[...] = np.linspace(0.5, 1.5, layer.num_features)
        if layer.bias is not None:
            layer.bias.data[...] = np.linspace(-0.3, 0.3, layer.num_features)
    return layer


@pytest.mark.parametrize("name, make_md, make_torch, shapes", LAYERS, ids=[r[0] for r in LAYERS])
def test_layer_matches_torch(name, make_md, make_torch, shapes):
    md.manual_seed(0)
    layer = _affine_bn(make_md())
    run_both(layer, make_torch(), [randn(*s, seed=i) for i, s in enumerate(shapes)])


@pytest.mark.parametrize("name, make_md, make_torch, shapes", LAYERS, ids=[r[0] for r in LAYERS])
def test_layer_gradcheck(name, make_md, make_torch, shapes):
    md.manual_seed(0)
    layer = _affine_bn(make_md()).double()
    inputs = [md.Tensor(randn(*s, seed=i), requires_grad=True) for i, s in enumerate(shapes)]
    assert gradcheck(layer, inputs, params=list(layer.parameters()))


def test_batchnorm1d_running_stats_and_eval_match_torch():
    md.manual_seed(0)
    ours = _affine_bn(nn.BatchNorm1d(3, momentum=0.3)).double()
    theirs = tnn.BatchNorm1d(3, momentum=0.3).double()
    theirs.load_state_dict(to_torch_state(ours))
    for step in range(4):
        x = randn(8, 3, seed=step) * (step + 1) + step
        ours(md.Tensor(x))
        theirs(torch.from_numpy(x))
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-12, err_msg=key)
    assert int(ours.num_batches_tracked) == 4
    # Evaluation uses the running statistics: same output as torch, and gradcheck holds.
    ours.eval()
    theirs.eval()
    run_both(ours, theirs, [randn(5, 3, seed=9)])
    assert gradcheck(ours, [md.Tensor(randn(5, 3, seed=9), requires_grad=True)],
                     params=list(ours.parameters()))


def test_batchnorm1d_cumulative_average_and_no_tracking():
    ours, theirs = nn.BatchNorm1d(2, momentum=None).double(), tnn.BatchNorm1d(2, momentum=None).double()
    for step in range(3):
        x = randn(5, 2, seed=step) + step
        ours(md.Tensor(x))
        theirs(torch.from_numpy(x))
    np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
    # Without running statistics, evaluation still normalises with the batch's.
    plain, plain_t = nn.BatchNorm1d(2, track_running_stats=False).double().eval(), \
        tnn.BatchNorm1d(2, track_running_stats=False).double().eval()
    assert "running_mean" not in plain.state_dict()
    run_both(plain, plain_t, [randn(5, 2, seed=4)])


def test_batchnorm1d_rejects_wrong_shapes():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="3 channels|channels"):
        bn(md.randn(4, 5))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        bn(md.randn(2, 3, 4, 4))


# ----------------------------------------------------------------------- losses
TARGET = np.array([0, 2, 1, 3, 2, 0])
LOSSES = [
    ("cross_entropy", lambda: nn.CrossEntropyLoss(), lambda: tnn.CrossEntropyLoss(), (6, 4), TARGET),
    ("cross_entropy_weighted_smoothed",
     lambda: nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5, 1.5]), label_smoothing=0.1),
     lambda: tnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64),
                                  label_smoothing=0.1), (6, 4), TARGET),
    ("cross_entropy_sum_ignore", lambda: nn.CrossEntropyLoss(reduction="sum", ignore_index=2),
     lambda: tnn.CrossEntropyLoss(reduction="sum", ignore_index=2), (6, 4), TARGET),
    ("nll", lambda: nn.NLLLoss(), lambda: tnn.NLLLoss(), (6, 4), TARGET),
    ("mse", lambda: nn.MSELoss(), lambda: tnn.MSELoss(), (3, 4), randn(3, 4, seed=5)),
    ("mse_sum", lambda: nn.MSELoss(reduction="sum"), lambda: tnn.MSELoss(reduction="sum"), (3, 4),
     randn(3, 4, seed=5)),
    ("l1", lambda: nn.L1Loss(), lambda: tnn.L1Loss(), (3, 4), randn(3, 4, seed=5)),
    ("bce_with_logits", lambda: nn.BCEWithLogitsLoss(pos_weight=np.array([1.0, 3.0, 0.5, 2.0])),
     lambda: tnn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)),
     (3, 4), np.random.default_rng(6).uniform(0, 1, (3, 4))),
]


@pytest.mark.parametrize("name, make_md, make_torch, shape, target", LOSSES, ids=[r[0] for r in LOSSES])
def test_loss_matches_torch_and_gradchecks(name, make_md, make_torch, shape, target):
    x = randn(*shape, seed=3)
    if name == "nll":
        x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))  # log-probabilities
    run_both(make_md(), make_torch(), [x], extra=(target,))
    loss = make_md()
    assert gradcheck(lambda z: loss(z, target), [md.Tensor(x, requires_grad=True)])


def test_bce_loss_on_probabilities():
    p = np.random.default_rng(0).uniform(0.05, 0.95, (4, 3))
    t = np.random.default_rng(1).uniform(0, 1, (4, 3))
    run_both(nn.BCELoss(), tnn.BCELoss(), [p], extra=(t,))


def test_loss_weight_is_a_buffer_like_torch():
    w = np.array([1.0, 2.0, 3.0])
    assert list(nn.CrossEntropyLoss(weight=w).state_dict()) == \
        list(tnn.CrossEntropyLoss(weight=torch.from_numpy(w)).state_dict()) == ["weight"]
    assert list(nn.CrossEntropyLoss().state_dict()) == []
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="average")


# ----------------------------------------------------------------------- dropout
def test_dropout_masks_scales_and_is_identity_in_eval():
    md.manual_seed(0)
    drop = nn.Dropout(0.25)
    x = md.Tensor(np.ones((400, 50)), requires_grad=True)
    y = drop(x)
    kept = y.data != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y.data[kept], 1 / 0.75)
    y.backward(np.full(y.shape, 2.0))
    np.testing.assert_allclose(x.grad, 2.0 * y.data)  # same mask, same scale
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="probability"):
        nn.Dropout(1.5)


def test_dropout_is_repeatable_with_manual_seed():
    outs = []
    for _ in range(2):
        md.manual_seed(42)
        outs.append(nn.Dropout(0.5)(md.ones(10, 10)).data)
    np.testing.assert_array_equal(*outs)


# --------------------------------------------------------------- state dicts
def net_class(lib):
    """The same network written once for ``minidl.nn`` and ``torch.nn``: the same code runs on both."""
    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.features = lib.Sequential(lib.Linear(6, 8), lib.BatchNorm1d(8), lib.ReLU())
            self.blocks = lib.ModuleList([lib.Linear(8, 8), lib.Linear(8, 8)])
            self.head = lib.Linear(8, 3)

        def forward(self, x):
            x = self.features(x)
            for block in self.blocks:
                x = block(x).tanh()
            return self.head(x)
    return Net


Net, TorchNet = net_class(nn), net_class(tnn)


def test_names_order_and_shapes_match_torch():
    ours, theirs = Net(), TorchNet()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in theirs.named_modules()]
    assert [k for k, _ in ours.named_children()] == [k for k, _ in theirs.named_children()]
    assert ours.state_dict()["features.1.num_batches_tracked"].dtype == np.int64


def test_torch_state_dict_loads_into_minidl_and_back():
    torch.manual_seed(0)
    theirs = TorchNet().double()
    theirs.train()
    theirs(torch.randn(16, 6, dtype=torch.float64))  # non-trivial running statistics
    theirs.eval()
    ours = Net().double()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.eval()
    x = randn(5, 6, seed=2)
    np.testing.assert_allclose(ours(md.Tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-14)
    # Torch tensors load directly too (anything with .numpy()), and so does the way back.
    ours.load_state_dict(theirs.state_dict())
    for p in ours.parameters():
        p.data[...] += 1.0  # change minidl's weights, then copy them to a fresh torch model
    back = TorchNet().double().eval()
    back.load_state_dict(to_torch_state(ours))
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(), ours(md.Tensor(x)).data,
                               rtol=1e-12, atol=1e-14)


def test_torch_linear_float32_loads_and_gives_same_outputs():
    torch.manual_seed(1)
    theirs = tnn.Linear(7, 4)
    ours = nn.Linear(7, 4)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = randn(3, 7).astype(np.float32)
    np.testing.assert_allclose(ours(md.Tensor(x)).data, theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    assert ours.weight.dtype == np.float32


def test_load_state_dict_errors_name_missing_unexpected_and_shapes():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    good = model.state_dict()
    bad = OrderedDict(good)
    del bad["2.bias"]
    bad["3.weight"] = np.zeros((2, 4), np.float32)
    bad["0.weight"] = np.zeros((5, 3), np.float32)
    before = model.state_dict()
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(bad)
    message = str(info.value)
    assert "Missing key(s)" in message and "'2.bias'" in message
    assert "Unexpected key(s)" in message and "'3.weight'" in message
    assert "size mismatch for 0.weight" in message and "(5, 3)" in message and "(4, 3)" in message
    for key, value in model.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, before[key])
    # strict=False accepts missing and unexpected keys but still refuses a wrong shape.
    del bad["0.weight"]
    bad["2.weight"] = np.zeros((2, 4), np.float32)
    result = model.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["0.weight", "2.bias"] and result.unexpected_keys == ["3.weight"]
    np.testing.assert_array_equal(model[2].weight.data, 0)
    bad["0.weight"] = np.zeros((5, 3))
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(bad, strict=False)


def test_load_state_dict_is_in_place_and_keeps_dtype():
    model = nn.Linear(3, 2)
    weight, array = model.weight, model.weight.data
    opt = minidl.optim.SGD(model.parameters(), lr=0.1)
    model.load_state_dict({"weight": np.ones((2, 3), np.float64), "bias": np.arange(2.0)})
    assert model.weight is weight and model.weight.data is array
    assert model.weight.dtype == np.float32
    np.testing.assert_array_equal(model.weight.data, 1)
    assert opt.param_groups[0]["params"][0] is weight  # the optimiser still holds it


def test_state_dict_returns_copies():
    model = nn.Linear(2, 2)
    state = model.state_dict()
    state["weight"][...] = 123
    assert not np.any(model.weight.data == 123)


# ------------------------------------------------------------ module machinery
def test_parameters_are_registered_once_and_shared_ones_deduplicated():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2
    assert [k for k, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(list(ml.parameters())) == 6 and len(ml) == 3
    ml.append(nn.Linear(2, 1))
    assert [k for k, _ in ml.named_parameters()][-1] == "3.bias"


def test_setattr_sorts_parameters_modules_and_buffers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.zeros(3))
            self.sub = nn.Linear(2, 2)
            self.register_buffer("count", np.zeros((), np.int64))
            self.plain = 5

    m = M()
    assert list(m._parameters) == ["w"] and list(m._modules) == ["sub"] and list(m._buffers) == ["count"]
    m.count = np.array(3)
    assert m.state_dict()["count"] == 3
    with pytest.raises(TypeError, match="Parameter"):
        m.w = np.ones(3)
    m.w = None
    assert "w" not in m.state_dict()
    del m.sub
    assert [k for k, _ in m.named_parameters()] == []

    class Forgot(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match=re.escape("call super().__init__() first")):
        Forgot()


def test_train_eval_and_zero_grad_reach_every_module():
    model = Net()
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model(md.randn(4, 6)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_repr_reads_like_torch():
    ours = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2, bias=False))
    theirs = tnn.Sequential(tnn.Linear(4, 8), tnn.ReLU(), tnn.BatchNorm1d(8), tnn.Linear(8, 2, bias=False))
    assert repr(ours) == repr(theirs)
    assert repr(nn.BatchNorm1d(3, affine=False)) == repr(tnn.BatchNorm1d(3, affine=False))
    assert repr(Net()).startswith("Net(\n  (features): Sequential(\n    (0): Linear(in_features=6")


def test_sequential_indexing_and_errors():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert isinstance(model[-1], nn.Linear) and len(model[:2]) == 2
    with pytest.raises(IndexError, match="out of range"):
        model[3]
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_double_and_float_keep_identity_and_cast_buffers():
    model = Net()
    params = list(model.parameters())
    model.double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    assert model.features[1].running_mean.dtype == np.float64
    assert model.features[1].num_batches_tracked.dtype == np.int64
    assert model(md.Tensor(randn(3, 6))).dtype == np.float64
    model.float()
    assert model(md.Tensor(randn(3, 6).astype(np.float32))).dtype == np.float32
    with pytest.raises(TypeError, match="floating"):
        model.to(np.int32)


# ------------------------------------------------------------------------ init
def test_linear_default_init_follows_torch():
    md.manual_seed(0)
    layer = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    w, b = layer.weight.data, layer.bias.data
    assert layer.weight.shape == (300, 400) and w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound  # uniform on [-b, b]
    md.manual_seed(0)
    np.testing.assert_array_equal(nn.Linear(400, 300).weight.data, w)


@pytest.mark.parametrize("shape", [(30, 20), (8, 4, 3, 3)])
def test_fans_and_gains_equal_torch(shape):
    ours = nn.init.calculate_fan_in_and_fan_out(np.zeros(shape))
    theirs = tnn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))
    assert ours == theirs
    for name, param in [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("sigmoid", None),
                        ("linear", None), ("selu", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(tnn.init.calculate_gain(name, param))


@pytest.mark.parametrize("fn, expected_std", [
    (lambda t: nn.init.kaiming_normal_(t), math.sqrt(2 / 500)),
    (lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / 400)),
    (lambda t: nn.init.kaiming_uniform_(t), math.sqrt(2 / 500)),
    (lambda t: nn.init.xavier_normal_(t), math.sqrt(2 / 900)),
    (lambda t: nn.init.xavier_uniform_(t, gain=2.0), 2 * math.sqrt(2 / 900)),
    (lambda t: nn.init.normal_(t, 1.0, 0.1), 0.1),
])
def test_init_statistics(fn, expected_std):
    md.manual_seed(3)
    p = nn.Parameter(np.zeros((400, 500), np.float32))
    assert fn(p) is p
    assert p.dtype == np.float32
    assert abs(p.data.std() - expected_std) < 0.02 * expected_std


def test_uniform_bounds_and_zeros():
    p = nn.Parameter(np.zeros((50, 60)))
    nn.init.xavier_uniform_(p)
    assert np.abs(p.data).max() <= math.sqrt(6 / 110)
    nn.init.zeros_(p)
    assert not p.data.any()
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.kaiming_uniform_(np.zeros(5))


def test_forward_hooks_record_replace_and_come_off():
    """register_forward_hook as in torch: called with (module, inputs, output) after
    forward; a returned value replaces the output; remove() (or leaving the with
    block) takes the hook off."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = md.tensor(np.arange(6.0).reshape(2, 3))
    seen = []
    handle = model[1].register_forward_hook(lambda m, inputs, out: seen.append((m, inputs[0].shape, out.data)))
    plain = model(x).data
    assert len(seen) == 1 and seen[0][0] is model[1] and seen[0][1] == (2, 4)
    np.testing.assert_array_equal(seen[0][2], np.maximum(model[0](x).data, 0))
    handle.remove()
    model(x)
    assert len(seen) == 1
    with model[1].register_forward_hook(lambda m, inputs, out: out * 0):
        np.testing.assert_array_equal(model(x).data, np.broadcast_to(model[2].bias.data, (2, 2)))
    np.testing.assert_array_equal(model(x).data, plain)
