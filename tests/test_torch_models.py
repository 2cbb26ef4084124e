"""Models: torchvision-compatible names and sizes, the KTH thin ResNet, WRN-28-2."""
import pickle

import pytest
import torch
from torch import nn

from reference_torch.models import (load_torchvision_weights, resnet18, resnet34, thin_resnet18,
                                    weight_layer_names, wrn28_2)


def torchvision_resnet_shapes(blocks_per_stage, num_classes=1000):
    """torchvision's documented ResNet (basic-block) state_dict layout, written out by hand.

    conv1, bn1, then layer{1..4}.{i}.conv1/bn1/conv2/bn2, a downsample.0 (1x1 conv) and
    downsample.1 (BN) in the first block of layers 2-4, and fc. Every BN has weight, bias,
    running_mean, running_var and num_batches_tracked.
    """
    shapes = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    in_c = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            shapes[f"{p}.conv1.weight"] = (width, in_c if i == 0 else width, 3, 3)
            bn(f"{p}.bn1", width)
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            if i == 0 and stage > 1:
                shapes[f"{p}.downsample.0.weight"] = (width, in_c, 1, 1)
                bn(f"{p}.downsample.1", width)
        in_c = width
    shapes["fc.weight"] = (num_classes, 512)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet_parameter_counts_match_torchvision():
    assert n_params(resnet18()) == 11_689_512
    assert n_params(resnet34()) == 21_797_672
    # The CIFAR stem only shrinks conv1 from 7x7 to 3x3 (64*3*(49-9) fewer weights).
    assert n_params(resnet18(cifar_stem=True)) == 11_689_512 - 64 * 3 * 40


@pytest.mark.parametrize("factory, blocks", [(resnet18, (2, 2, 2, 2)), (resnet34, (3, 4, 6, 3))])
def test_state_dict_has_torchvision_keys_and_shapes(factory, blocks):
    expected = torchvision_resnet_shapes(blocks)
    got = {k: tuple(v.shape) for k, v in factory().state_dict().items()}
    assert list(got) == list(expected)  # same names, same order
    assert got == expected


def test_torchvision_format_file_loads_strictly(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=gen) if s else torch.tensor(7))
             for k, s in torchvision_resnet_shapes((2, 2, 2, 2)).items()}
    for k in state:  # integer counters; positive variances (else the forward pass gives NaN)
        if k.endswith("num_batches_tracked"):
            state[k] = state[k].long()
        elif k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(state, path)

    model = load_torchvision_weights(resnet18(), path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    # Round trip: our own state_dict written to a file loads into a fresh model.
    model.eval()
    torch.save(model.state_dict(), tmp_path / "again.pth")
    other = load_torchvision_weights(resnet18(), tmp_path / "again.pth").eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        out = model(x)
        assert torch.isfinite(out).all() and torch.equal(out, other(x))


def test_load_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = resnet18(num_classes=10).state_dict()
    del state["layer3.1.bn2.running_var"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_torchvision_weights(resnet18(num_classes=10, cifar_stem=True), path)
    msg = str(err.value)
    assert "layer3.1.bn2.running_var" in msg and "head.weight" in msg
    assert "conv1.weight: file (64, 3, 7, 7) vs model (64, 3, 3, 3)" in msg


class NotAStateDict:
    pass


def test_load_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": NotAStateDict()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_torchvision_weights(resnet18(), path)


def test_ddp_prefix_is_stripped(tmp_path):
    src = resnet18(num_classes=4, cifar_stem=True)
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "ddp.pth")
    dst = load_torchvision_weights(resnet18(num_classes=4, cifar_stem=True), tmp_path / "ddp.pth")
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_resnet_forward_shapes():
    with torch.no_grad():
        assert resnet18(num_classes=10, cifar_stem=True).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert resnet18().eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        feats = resnet18(cifar_stem=True).eval().forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 512)
    with pytest.raises(ValueError, match="num_classes"):
        resnet18(num_classes=0)


THIN_LAYERS = [  # (name, weight shape) of the KTH thin ResNet-18's 21 weight layers
    ("conv1", (16, 3, 3, 3)),
    ("layer1.0.conv1", (16, 16, 3, 3)), ("layer1.0.conv2", (16, 16, 3, 3)),
    ("layer1.1.conv1", (16, 16, 3, 3)), ("layer1.1.conv2", (16, 16, 3, 3)),
    ("layer2.0.conv1", (32, 16, 3, 3)), ("layer2.0.conv2", (32, 32, 3, 3)),
    ("layer2.0.downsample", (32, 16, 1, 1)),
    ("layer2.1.conv1", (32, 32, 3, 3)), ("layer2.1.conv2", (32, 32, 3, 3)),
    ("layer3.0.conv1", (64, 32, 3, 3)), ("layer3.0.conv2", (64, 64, 3, 3)),
    ("layer3.0.downsample", (64, 32, 1, 1)),
    ("layer3.1.conv1", (64, 64, 3, 3)), ("layer3.1.conv2", (64, 64, 3, 3)),
    ("layer4.0.conv1", (128, 64, 3, 3)), ("layer4.0.conv2", (128, 128, 3, 3)),
    ("layer4.0.downsample", (128, 64, 1, 1)),
    ("layer4.1.conv1", (128, 128, 3, 3)), ("layer4.1.conv2", (128, 128, 3, 3)),
    ("fc", (10, 128)),
]


def test_thin_resnet18_has_the_21_named_weight_layers():
    model = thin_resnet18()
    modules = dict(model.named_modules())
    assert weight_layer_names(model) == [name for name, _ in THIN_LAYERS]
    for name, shape in THIN_LAYERS:
        assert tuple(modules[name].weight.shape) == shape, name
        assert modules[name].bias is not None, f"{name} must have a bias"
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # Parameters are exactly those layers' weights and biases.
    expected = sum(torch.Size(s).numel() + s[0] for _, s in THIN_LAYERS)
    assert n_params(model) == expected


def test_thin_resnet18_shapes_through_the_stages():
    model = thin_resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape[1:]))
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    assert seen == {"maxpool": (16, 16, 16), "layer1": (16, 16, 16), "layer2": (32, 8, 8),
                    "layer3": (64, 4, 4), "layer4": (128, 2, 2)}


def test_wrn28_2_layout():
    model = wrn28_2()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 25      # 1 stem + 12 blocks x 2
    assert sum(c.kernel_size == (1, 1) for c in convs) == 3       # one projection per group
    assert [g[0].conv1.out_channels for g in (model.block1, model.block2, model.block3)] == [32, 64, 128]
    assert n_params(model) == 1_467_610
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+4"):
        from reference_torch.models import WideResNet
        WideResNet(depth=27)
