"""reference_torch.twins and reference_torch.interop: twin models have the same state
dict keys and shapes, weights move both ways, and the two engines then compute the
same logits, the same parameter gradients and the same running statistics (float64)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minidl as md  # noqa: E402
import minidl.models  # noqa: E402,F401
import minidl.optim  # noqa: E402,F401
from reference_torch import interop, twins  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def _has_conv():
    return hasattr(md.nn, "Conv2d") and hasattr(md.nn, "MaxPool2d") and hasattr(md.nn, "BatchNorm2d")


needs_conv = pytest.mark.skipif(not _has_conv(), reason="minidl conv layers have not landed")


def _mlp(**kw):
    return md.models.MLP(20, hidden=(16, 12), num_classes=5, batch_norm=True, **kw)


def _cnn():
    return md.models.SmallCNN((3, 12, 12), num_classes=4, widths=(4, 6), batch_norm=True)


def _custom_cnn():
    """Conv with stride and no bias, BatchNorm2d, both poolings, adaptive pooling."""
    nn = md.nn
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(5, 6, 3, padding=1), nn.ELU(), nn.MaxPool2d(2, stride=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def _pair(md_model, seed=0):
    """A float64 minidl model with non-trivial weights and running statistics, and its torch twin."""
    rng = np.random.default_rng(seed)
    md_model.to(np.float64)
    state = md_model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, value.shape)
        elif key.endswith("num_batches_tracked"):
            state[key] = np.array(3)
        else:  # weights, biases, BN affine parameters, running means
            state[key] = rng.normal(0, 0.5, value.shape)
    md_model.load_state_dict(state)
    torch_model = interop.from_minidl(md_model)
    return md_model, torch_model


def _forward_backward(md_model, torch_model, x, weights):
    """Logits of both, and every parameter gradient of a random projection of the logits
    (a plain sum would hide transposed gradients)."""
    md_model.zero_grad()
    torch_model.zero_grad()
    md_logits = md_model(md.tensor(x))
    (md_logits * md.tensor(weights)).sum().backward()
    torch_logits = torch_model(torch.from_numpy(x))
    (torch_logits * torch.from_numpy(weights)).sum().backward()
    md_grads = {k: p.grad for k, p in md_model.named_parameters()}
    torch_grads = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}
    return md_logits.data, torch_logits.detach().numpy(), md_grads, torch_grads


def _assert_same_state(md_model, torch_model):
    md_state = md_model.state_dict()
    torch_state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    assert list(md_state) == list(torch_state)
    for key in md_state:
        np.testing.assert_allclose(md_state[key], torch_state[key], err_msg=key, **TOL)


def _check_agreement(md_model, input_shape, num_classes, seed=0):
    md_model, torch_model = _pair(md_model, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(6,) + input_shape)
    weights = rng.normal(size=(6, num_classes))
    for training in (True, False):
        md_model.train(training)
        torch_model.train(training)
        md_logits, torch_logits, md_grads, torch_grads = _forward_backward(
            md_model, torch_model, x, weights)
        assert md_logits.dtype == np.float64
        np.testing.assert_allclose(md_logits, torch_logits, **TOL)
        assert list(md_grads) == list(torch_grads)
        for key in md_grads:
            assert md_grads[key] is not None, key
            np.testing.assert_allclose(md_grads[key], torch_grads[key], err_msg=f"grad {key}", **TOL)
        # the train-mode forward moved the running statistics the same way in both
        _assert_same_state(md_model, torch_model)

    # one optimiser step in train mode: weights and running statistics stay together
    md_model.train()
    torch_model.train()
    md_opt = md.optim.SGD(md_model.parameters(), lr=0.1, momentum=0.9)
    torch_opt = torch.optim.SGD(torch_model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        _forward_backward(md_model, torch_model, x, weights)
        md_opt.step()
        torch_opt.step()
    _forward_backward(md_model, torch_model, x, weights)
    _assert_same_state(md_model, torch_model)


# ------------------------------------------------------------------ twins
@pytest.mark.parametrize("kwargs", [dict(), dict(batch_norm=True, dropout=(0.1, 0.0)),
                                    dict(activation="gelu", hidden=(8,))])
def test_mlp_twins_have_the_same_state_dict(kwargs):
    kwargs = {"hidden": (16, 12), **kwargs}
    a = md.models.MLP(20, num_classes=5, **kwargs).state_dict()
    b = twins.MLP(20, num_classes=5, **kwargs).state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == tuple(b[k].shape) for k in a)


@needs_conv
def test_cnn_twins_have_the_same_state_dict():
    kwargs = dict(in_shape=(3, 32, 32), widths=(8, 16, 16), kernel_size=5, batch_norm=True, dropout=0.2)
    a = md.models.SmallCNN(**kwargs).state_dict()
    b = twins.SmallCNN(**kwargs).state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == tuple(b[k].shape) for k in a)


# --------------------------------------------------------------- agreement
def test_mlp_logits_gradients_and_running_stats_agree():
    _check_agreement(_mlp(), (4, 5), 5)  # (4, 5) inputs: the Flatten is exercised too


@needs_conv
def test_small_cnn_logits_gradients_and_running_stats_agree():
    _check_agreement(_cnn(), (3, 12, 12), 4, seed=1)


@needs_conv
def test_cnn_with_strides_avg_and_adaptive_pooling_agrees():
    _check_agreement(_custom_cnn(), (3, 16, 16), 3, seed=2)


# ------------------------------------------------------------------ copies
def test_round_trip_keeps_every_parameter_and_buffer_and_the_mode():
    md_model, torch_model = _pair(_mlp())
    assert isinstance(torch_model, twins.MLP)
    assert torch_model.head.weight.dtype == torch.float64
    _assert_same_state(md_model, torch_model)
    md_model.eval()
    back = interop.to_minidl(interop.from_minidl(md_model))
    assert isinstance(back, md.models.MLP) and back is not md_model
    assert not back.training and not any(m.training for m in back.modules())
    for key, value in md_model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=key)
        assert back.state_dict()[key].dtype == value.dtype
    assert int(back.body[2].num_batches_tracked) == 3


def test_copies_into_existing_models_keep_their_dtype():
    torch_model = twins.MLP(20, hidden=(16, 12), num_classes=5, batch_norm=True).double()
    md_model = _mlp()  # float32
    result = interop.to_minidl(torch_model, md_model)
    assert result is md_model
    assert md_model.head.weight.data.dtype == np.float32
    np.testing.assert_allclose(md_model.head.weight.data, torch_model.head.weight.detach().numpy(),
                               rtol=1e-6)
    target = twins.MLP(20, hidden=(16, 12), num_classes=5, batch_norm=True)  # float32
    assert interop.from_minidl(md_model, target) is target
    assert target.head.weight.dtype == torch.float32


def test_torch_model_trained_then_brought_back_predicts_the_same():
    torch.manual_seed(0)
    torch_model = twins.MLP(20, hidden=(16,), num_classes=3, batch_norm=True)
    opt = torch.optim.Adam(torch_model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 20), torch.randint(0, 3, (32,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(torch_model(x), y).backward()
        opt.step()
    torch_model.eval()
    md_model = interop.to_minidl(torch_model)
    with md.no_grad():
        md_logits = md_model(md.tensor(x.numpy())).data
    np.testing.assert_allclose(md_logits, torch_model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@needs_conv
def test_minidl_twin_of_a_torch_cnn_computes_the_same():
    """torch -> minidl with the twin built from the torch layers (strides, groups,
    dilation, a transposed conv), in both modes, and the SmallCNN twin's class."""
    nn = torch.nn
    torch.manual_seed(0)
    torch_model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=2, dilation=2), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False), nn.Tanh(),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.Flatten(),
        nn.Dropout(0.3), nn.Linear(3 * 5 * 5, 2)).double()
    x = torch.randn(3, 2, 11, 11, dtype=torch.float64)
    for training in (True, False):
        torch_model.train(training)
        md_model = interop.to_minidl(torch_model)
        assert md_model.training == training
        torch_model[-2].p = md_model[-2].p = 0.0  # dropout off for the comparison only
        np.testing.assert_allclose(md_model(md.tensor(x.numpy())).data,
                                   torch_model(x).detach().numpy(), **TOL)
        torch_model[-2].p = 0.3
    cnn = interop.to_minidl(twins.SmallCNN((1, 8, 8), num_classes=3, widths=(2,), batch_norm=True))
    assert isinstance(cnn, md.models.SmallCNN) and cnn.head.weight.shape == (3, 2 * 4 * 4)


def test_subclasses_of_the_twins_are_translated_too():
    from reference_torch.mlp_twin import MLP as CourseMLP  # twins.MLP with ELU and its own init

    torch_model = CourseMLP(12, [8, 6], 3, use_batch_norm=True).eval()
    md_model = interop.to_minidl(torch_model)
    assert isinstance(md_model, md.models.MLP)
    assert type(md_model.body[3]).__name__ == "ELU"
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_allclose(md_model(md.tensor(x)).data,
                               torch_model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ errors
def test_mismatched_shapes_are_named():
    md_model = md.models.MLP(20, hidden=(16,), num_classes=5)
    with pytest.raises(ValueError, match=r"body\.1\.weight: minidl \(16, 20\) vs torch \(8, 20\)"):
        interop.from_minidl(md_model, twins.MLP(20, hidden=(8,), num_classes=5))


def test_mismatched_names_are_listed():
    md_model = md.models.MLP(20, hidden=(16,), num_classes=5, batch_norm=True)
    with pytest.raises(ValueError, match=r"only in the torch model: .*body\.2\.running_mean"):
        interop.to_minidl(twins.MLP(20, hidden=(16,), num_classes=5, batch_norm=True),
                          md.models.MLP(20, hidden=(16,), num_classes=5))
    with pytest.raises(ValueError, match=r"only in the minidl model: .*body\.2\.weight"):
        interop.from_minidl(md_model, twins.MLP(20, hidden=(16,), num_classes=5))


def test_a_model_without_a_known_twin_says_what_to_do():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(4, 4)

    with pytest.raises(ValueError, match=r"cannot build a twin of Custom: .*pass it"):
        interop.to_minidl(Custom())
    with pytest.raises(ValueError, match=r"cannot build a twin of Sequential\.1 \(GRU\)"):
        interop.to_minidl(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GRU(4, 4)))
