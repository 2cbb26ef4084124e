"""reference_torch.mlp_twin: the course's PyTorch MLP against minidl's two MLPs."""
import math

import numpy as np
import pytest
import torch

import minidl as md
import minidl.manual  # noqa: F401
import minidl.models  # noqa: F401
from reference_torch import interop
from reference_torch.mlp_twin import MLP


def _manual_pairs(manual):
    return [(m.params["weight"], m.params["bias"]) for m in manual.linear_modules]


def test_layout_and_state_dict_keys_match_minidl():
    for bn in (False, True):
        twin = MLP(12, [20, 8], 5, use_batch_norm=bn)
        ours = md.models.MLP(12, [20, 8], 5, activation="elu", batch_norm=bn)
        assert list(twin.state_dict()) == list(ours.state_dict())
        kinds = [type(m).__name__ for m in twin.body]
        expected = ["Flatten"] + (["Linear", "BatchNorm1d", "ELU"] if bn else ["Linear", "ELU"]) * 2
        assert kinds == expected
    assert MLP(4, 3, 2).n_hidden == [3]  # one int is one hidden layer


def test_kaiming_initialisation():
    torch.manual_seed(0)
    twin = MLP(400, [300, 300], 10)
    first, second, head = twin.linear_layers()
    # the input layer sees raw (normalised) data: std sqrt(1/fan_in); after an ELU sqrt(2/fan_in)
    assert first.weight.std().item() == pytest.approx(math.sqrt(1 / 400), rel=0.03)
    assert second.weight.std().item() == pytest.approx(math.sqrt(2 / 300), rel=0.03)
    assert head.weight.std().item() == pytest.approx(math.sqrt(2 / 300), rel=0.1)
    assert all((layer.bias == 0).all() for layer in (first, second, head))


def test_same_logits_as_manual_mlp_with_copied_weights():
    md.manual_seed(0)
    manual = md.manual.MLP(12, [20, 8], 5)
    twin = MLP(12, [20, 8], 5).double().load_linear_weights(_manual_pairs(manual))
    x = np.random.default_rng(0).normal(size=(7, 12))
    with torch.no_grad():
        logits = twin(torch.from_numpy(x)).numpy()
    probs = manual.forward(x)  # the manual MLP ends in a softmax
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probs, atol=1e-12)
    # and the same logits as the autograd MLP given the same weights by state dict
    ours = md.models.MLP(12, [20, 8], 5, activation="elu").double()
    ours.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    np.testing.assert_allclose(ours(md.tensor(x)).numpy(), logits, atol=1e-12)


def test_batch_norm_twin_matches_minidl_in_both_modes():
    torch.manual_seed(1)
    twin = MLP(6, [10], 3, use_batch_norm=True).double()
    ours = md.models.MLP(6, [10], 3, activation="elu", batch_norm=True).double()
    x = np.random.default_rng(1).normal(size=(16, 6))
    with torch.no_grad():  # some running statistics and affine weights that are not 0/1
        twin(torch.from_numpy(x))
        twin.body[2].weight.uniform_(0.5, 1.5)
        twin.body[2].bias.uniform_(-0.5, 0.5)
    interop.to_minidl(twin, ours)
    for mode in ("train", "eval"):
        getattr(twin, mode)()
        getattr(ours, mode)()
        with torch.no_grad():
            expected = twin(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours(md.tensor(x)).numpy(), expected, atol=1e-10, err_msg=mode)


def test_bad_weights_say_what_is_wrong():
    twin = MLP(4, [3], 2)
    with pytest.raises(ValueError, match="2 linear layers, got 1"):
        twin.load_linear_weights([(np.zeros((3, 4)), np.zeros(3))])
    with pytest.raises(ValueError, match="pass its transpose"):
        twin.load_linear_weights([(np.zeros((4, 3)), np.zeros(3)), (np.zeros((2, 3)), np.zeros(2))])
    with pytest.raises(ValueError, match="sizes must be positive"):
        MLP(0, [3], 2)
