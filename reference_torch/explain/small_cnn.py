"""The model the interpretability drivers explain, and what they need to know of it.

``build_model`` is ``Sequential(normalize=Normalize(mean, std), net=SmallCNN(...))``: it
takes images in [0, 1], so attributions, deletion substrates, attack budgets and feature
visualisations all live in pixel space. ``blocks`` names its conv-BN-ReLU-pool blocks,
``attribution_methods`` sets up the practical's five methods for it, and ``read_model``
rebuilds it from a model.pt (its weights and an 'arch' entry), saying what is wrong with
a file that is not one.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from minidl.errors import InputError

from ..checkpoint import load_checkpoint
from ..twins import SmallCNN
from .adversarial import Normalize
from .attribution import GradCAM, InputXGradient, IntegratedGradients, Occlusion, Saliency

WIDTHS = (16, 32, 64)


def build_model(in_shape, num_classes, mean, std, widths=WIDTHS):
    """Normalisation + ``reference_torch.twins.SmallCNN`` (conv-BN-ReLU-pool blocks, linear head)."""
    return nn.Sequential(OrderedDict(
        normalize=Normalize(mean, std),
        net=SmallCNN(tuple(in_shape), num_classes=num_classes, widths=tuple(widths), batch_norm=True)))


@dataclass(frozen=True)
class Block:
    """One conv-BN-ReLU-pool block of the SmallCNN: its number (1 for the first), the
    module names of its conv and of its ReLU (after batch norm, before pooling), its
    channels and the side of its maps (the image's, halved by each block before it)."""
    number: int
    conv: str
    relu: str
    channels: int
    size: int

    @property
    def name(self):
        return f"block{self.number}"

    @property
    def conv_name(self):
        return f"conv{self.number}"


def blocks(model, height):
    """The Blocks of the SmallCNN inside ``model`` for images ``height`` pixels high, in order."""
    modules = list(model.named_modules())
    convs = [(name, m) for name, m in modules if isinstance(m, nn.Conv2d)]
    relus = [name for name, m in modules if isinstance(m, nn.ReLU)]
    return [Block(i + 1, conv, relu, m.out_channels, height >> i)
            for i, ((conv, m), relu) in enumerate(zip(convs, relus))]


def attribution_methods(model, height, ig_steps=32):
    """The five methods of the practical by key, all explaining pixels in [0, 1]: occlusion
    with a grey patch (0.5) a quarter of the image wide (half-overlapping), Grad-CAM at the
    last conv block (after its ReLU, before pooling), integrated gradients from a black
    image in ``ig_steps`` steps."""
    patch = max(2, height // 4)  # 8 px on 32-pixel images: about the size of a small shape
    return {
        "occlusion": Occlusion(model, patch=patch, stride=patch // 2, baseline=0.5),
        "saliency": Saliency(model),
        "input_x_gradient": InputXGradient(model),
        "gradcam": GradCAM(model, layer=blocks(model, height)[-1].relu),
        "integrated_gradients": IntegratedGradients(model, n_steps=ig_steps, baseline=0.0),
    }


def _first(items, count=3):
    return ", ".join(items[:count]) + (f" ... ({len(items)} in all)" if len(items) > count else "")


def read_model(path, state=None):
    """(model on the CPU, its 'arch' entry) of a model.pt (``state``: its contents when
    already read). A ValueError naming the file says what is wrong with one that is not a
    model.pt: not a torch file of tensors and plain data, no 'model' and 'arch' entries, an
    'arch' that describes no model, or weights that do not fit it (the first keys at fault)."""
    try:
        state = load_checkpoint(path) if state is None else state
    except InputError as error:
        raise ValueError(f"cannot be read as a model.pt: {error}") from None
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise ValueError(f"{path} is not a model.pt of the interpretability drivers (it needs 'model' and 'arch' "
                         "entries); pass a file written by `python -m assignments run explanations`")
    arch, saved = state["arch"], state["model"]
    try:
        model = build_model(arch["in_shape"], arch["num_classes"], arch["mean"], arch["std"], arch["widths"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: its 'arch' entry does not describe a model ({type(error).__name__}: {error})") \
            from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)]
    faults = [f"{what}: {_first(keys)}" for what, keys in
              (("missing keys", missing), ("unexpected keys", unexpected), ("shapes", shapes)) if keys]
    if faults:
        raise ValueError(f"{path}: the weights do not fit the model its 'arch' describes ({'; '.join(faults)})")
    model.load_state_dict(saved)
    return model, arch
