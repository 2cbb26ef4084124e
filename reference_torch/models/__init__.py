"""Models for the PyTorch half of the kit.

    resnet18(num_classes=1000, cifar_stem=False)   torchvision-compatible names
    resnet34(num_classes=1000, cifar_stem=False)
    thin_resnet18(num_classes=10)                  KTH memorisation net, 21 weight layers
    wrn28_2(num_classes=10)                        FixMatch's backbone
    load_torchvision_weights(model, path)          strict load of a torchvision file
    weight_layer_names(model)                      the Conv2d/Linear layers, in order
"""
from __future__ import annotations

import os

from torch import nn

from minidl.errors import BadValueError

from ..checkpoint import read_torch_file

from .resnet import BasicBlock, ResNet, resnet18, resnet34
from .thin import ThinBlock, ThinResNet18, thin_resnet18
from .wrn import WideBlock, WideResNet, wrn28_2

__all__ = [
    "BasicBlock", "ResNet", "resnet18", "resnet34",
    "ThinBlock", "ThinResNet18", "thin_resnet18",
    "WideBlock", "WideResNet", "wrn28_2",
    "load_torchvision_weights", "weight_layer_names",
]


def weight_layer_names(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear modules, in the order they were defined."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def load_torchvision_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a torchvision-format state_dict file into ``model``, strictly.

    The file is read with ``weights_only=True`` (no arbitrary unpickling; a bad file
    raises one line, see ``checkpoint.read_torch_file``). Every key must match by name
    and shape; otherwise a ValueError (``minidl.errors.BadValueError``) lists the first
    missing, unexpected and mis-shaped keys, so a wrong architecture or class count is obvious.
    A ``module.`` prefix (a checkpoint saved from DistributedDataParallel) is removed.
    """
    state = read_torch_file(path, "a weight file (torch.save of a state_dict)")
    if not isinstance(state, dict):
        raise BadValueError(f"{os.fspath(path)!r} holds a {type(state).__name__}, expected a state_dict "
                         "(a dict of parameter name -> tensor); save it with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        def show(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" ... ({len(items)} in all)" if len(items) > 10 else "") or "none"
        raise BadValueError(  # one line: the command line shows it as it is
            f"weights in {os.fspath(path)!r} do not fit {type(model).__name__}: "
            f"missing keys: {show(missing)}; unexpected keys: {show(unexpected)}; "
            f"shape mismatches: {show(mis_shaped)}. "
            "Build the model that wrote the file (same depth, num_classes and stem: a CIFAR "
            "stem has a 3x3 conv1 where ImageNet weights have 7x7).")
    model.load_state_dict(state, strict=True)
    return model
