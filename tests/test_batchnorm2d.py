"""Batch norm of (N, C, H, W) maps against torch in float64: outputs and the
gradients of input, weight and bias in training and in evaluation, the running
statistics over several steps (momentum, cumulative average), the options
(affine, track_running_stats), state dicts and bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import minidl as md
import minidl.nn.functional as F
from minidl.gradcheck import gradcheck
from minidl.nn.conv import BatchNorm2d


def _to_torch_state(layer):
    return {k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_functional_batch_norm2d_matches_torch(training, affine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 6)) * 2 + 5  # a mean far from 0
    w, b = (rng.standard_normal(3), rng.standard_normal(3)) if affine else (None, None)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    md_rm, md_rv, th_rm, th_rv = rm.copy(), rv.copy(), torch.tensor(rm), torch.tensor(rv)
    mx = md.Tensor(x, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    mw, mb = (md.Tensor(w, requires_grad=True), md.Tensor(b, requires_grad=True)) if affine \
        else (None, None)
    tw, tb = (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) \
        if affine else (None, None)
    mo = F.batch_norm(mx, md_rm, md_rv, mw, mb, training=training, momentum=0.3, eps=1e-4)
    to = TF.batch_norm(tx, th_rm, th_rv, tw, tb, training=training, momentum=0.3, eps=1e-4)
    np.testing.assert_allclose(mo.data, to.detach().numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(md_rm, th_rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(md_rv, th_rv.numpy(), rtol=1e-12)
    upstream = rng.standard_normal(x.shape)
    mo.backward(upstream)
    to.backward(torch.from_numpy(upstream))
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    if affine:
        np.testing.assert_allclose(mw.grad, tw.grad.numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(mb.grad, tb.grad.numpy(), rtol=1e-9, atol=1e-10)


def test_gradcheck_train_and_eval():
    rng = np.random.default_rng(1)
    x = md.Tensor(rng.standard_normal((3, 2, 4, 3)), requires_grad=True)
    w = md.Tensor(rng.standard_normal(2), requires_grad=True)
    b = md.Tensor(rng.standard_normal(2), requires_grad=True)
    rm, rv = np.zeros(2), np.ones(2)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                     [x, w, b])
    assert gradcheck(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False), [x, w, b])


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_layer_running_statistics_train_then_eval(momentum):
    rng = np.random.default_rng(2)
    mine = BatchNorm2d(3, momentum=momentum, dtype=np.float64)
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(rng.standard_normal(3)))
        theirs.bias.copy_(torch.tensor(rng.standard_normal(3)))
    mine.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for step in range(4):  # training steps: running statistics move
        x = rng.standard_normal((5, 3, 4, 4)) * (step + 1) + step
        mx, tx = md.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        mo, to = mine(mx), theirs(tx)
        np.testing.assert_allclose(mo.data, to.detach().numpy(), rtol=1e-10, atol=1e-11)
        g = rng.standard_normal(x.shape)
        mo.backward(g)
        to.backward(torch.from_numpy(g))
        np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    for name, value in theirs.state_dict().items():
        np.testing.assert_allclose(mine.state_dict()[name], value.numpy(), rtol=1e-12,
                                   err_msg=name)
    mine.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    mx, tx = md.Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    mo, to = mine(mx), theirs(tx)
    np.testing.assert_allclose(mo.data, to.detach().numpy(), rtol=1e-10, atol=1e-11)
    mo.sum().backward()
    to.sum().backward()
    np.testing.assert_allclose(mx.grad, tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(mine.weight.grad, theirs.weight.grad.numpy(), rtol=1e-9)
    assert int(mine.num_batches_tracked) == 4  # eval does not count


@pytest.mark.parametrize("affine,track", [(False, True), (True, False)])
def test_layer_options_match_torch(affine, track):
    rng = np.random.default_rng(3)
    mine = BatchNorm2d(4, affine=affine, track_running_stats=track, dtype=np.float64)
    theirs = torch.nn.BatchNorm2d(4, affine=affine, track_running_stats=track).double()
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for mode in ("train", "eval"):
        getattr(mine, mode)()
        getattr(theirs, mode)()
        x = rng.standard_normal((3, 4, 2, 5))
        np.testing.assert_allclose(mine(md.Tensor(x)).data,
                                   theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10,
                                   atol=1e-11)


def test_float32_and_torch_state_dict_round_trip():
    rng = np.random.default_rng(4)
    theirs = torch.nn.BatchNorm2d(8)
    theirs.train()
    theirs(torch.tensor(rng.standard_normal((6, 8, 5, 5)), dtype=torch.float32) * 3 + 1)
    mine = BatchNorm2d(8)
    mine.load_state_dict(theirs.state_dict())
    mine.eval()
    theirs.eval()
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    out = mine(md.Tensor(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    back = torch.nn.BatchNorm2d(8)
    back.load_state_dict(_to_torch_state(mine))
    assert torch.equal(back.running_var, theirs.running_var)


def test_bad_input_raises_value_error():
    layer = BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"4 channels.*\(2, 4, 5, 5\)"):
        layer(md.Tensor(np.zeros((2, 4, 5, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        layer(md.Tensor(np.zeros((2, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="more than one value"):
        F.batch_norm(np.zeros((1, 3, 1, 1)), None, None, training=True)
    with pytest.raises(ValueError, match=r"running_mean has shape \(2,\)"):
        F.batch_norm(np.zeros((2, 3, 4, 4)), np.zeros(2), np.ones(2))
