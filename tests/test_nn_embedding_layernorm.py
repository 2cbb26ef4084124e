"""md.nn.Embedding and md.nn.LayerNorm (the pieces of a transformer) against torch.nn in
float64: outputs and gradients under a random upstream gradient (a plain sum hides a
transposed or mis-summed gradient), repeated ids summing their gradients, normalising
over several trailing dimensions, no affine parameters, finite differences, bad input."""
import numpy as np
import pytest
import torch

import minidl as md
import minidl.nn as nn
from minidl.gradcheck import gradcheck


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def copy_to_torch(md_layer, torch_layer):
    torch_layer.double().load_state_dict({k: torch.from_numpy(v) for k, v in md_layer.state_dict().items()})
    return torch_layer


def backward_both(md_out, torch_out, seed=1):
    upstream = randn(*torch_out.shape, seed=seed)
    md_out.backward(upstream)
    torch_out.backward(torch.from_numpy(upstream))


def test_embedding_matches_torch_and_sums_repeated_ids():
    layer = nn.Embedding(7, 5).double()
    twin = copy_to_torch(layer, torch.nn.Embedding(7, 5))
    ids = np.array([[0, 3, 3, 6], [3, 1, 0, 0]])  # 3 three times, 0 three times, 2, 4 and 5 never
    out, expected = layer(ids), twin(torch.from_numpy(ids))
    np.testing.assert_array_equal(out.data, expected.detach().numpy())
    backward_both(out, expected)
    np.testing.assert_allclose(layer.weight.grad, twin.weight.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert not layer.weight.grad[[2, 4, 5]].any()  # rows nobody picked get no gradient


def test_embedding_init_and_bad_ids():
    md.manual_seed(0)
    weight = nn.Embedding(1000, 64).weight.data
    assert abs(weight.std() - 1.0) < 0.02 and abs(weight.mean()) < 0.02  # torch's N(0, 1)
    with pytest.raises(IndexError, match="0..6"):
        nn.Embedding(7, 5)(np.array([1, 7]))
    with pytest.raises(ValueError, match="integers"):
        nn.Embedding(7, 5)(np.array([1.0, 2.0]))


@pytest.mark.parametrize("shape, normalized", [((3, 4, 6), 6), ((2, 3, 4, 5), (4, 5))])
def test_layer_norm_matches_torch(shape, normalized):
    layer = nn.LayerNorm(normalized).double()
    layer.weight.data[...] = 1 + 0.3 * randn(*layer.weight.shape, seed=2)  # not the identity
    layer.bias.data[...] = randn(*layer.bias.shape, seed=3)
    twin = copy_to_torch(layer, torch.nn.LayerNorm(normalized))
    x = 3 + 2 * randn(*shape)
    md_x, torch_x = md.Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    out, expected = layer(md_x), twin(torch_x)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    backward_both(out, expected)
    np.testing.assert_allclose(md_x.grad, torch_x.grad.numpy(), rtol=1e-9, atol=1e-11)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(layer, name).grad, getattr(twin, name).grad.numpy(),
                                   rtol=1e-9, atol=1e-11, err_msg=name)


def test_layer_norm_without_affine_and_by_finite_differences():
    x = randn(2, 3, 8)
    plain = nn.LayerNorm(8, elementwise_affine=False)
    assert list(plain.parameters()) == []
    expected = torch.nn.functional.layer_norm(torch.from_numpy(x), (8,))
    np.testing.assert_allclose(plain(md.Tensor(x)).data, expected.numpy(), rtol=1e-10, atol=1e-12)
    layer = nn.LayerNorm(8).double()
    layer.weight.data[...] = randn(8, seed=4)
    assert gradcheck(layer, [md.Tensor(x, requires_grad=True)], params=list(layer.parameters()))
    with pytest.raises(ValueError, match="normalized_shape"):
        layer(md.Tensor(randn(2, 7)))
