"""Layers, losses and the Module machinery, with torch.nn's names:

    import minidl as md
    model = md.nn.Sequential(md.nn.Linear(64, 128), md.nn.ReLU(), md.nn.Linear(128, 10))
    loss = md.nn.CrossEntropyLoss()(model(x), y)

``md.nn.functional`` holds the functions the layers call, ``md.nn.init`` the
initialisers, ``md.nn.utils`` gradient clipping (clip_grad_norm_).
"""
from . import functional, init, utils
from .module import Module, ModuleList, Parameter, Sequential
from .layers import *  # noqa: F401,F403  (Linear, activations, BatchNorm1d, losses)
from .conv import *  # noqa: F401,F403  (Conv2d, BatchNorm2d, pooling)
