"""The "thin" ResNet-18 of the KTH memorisation study: no batch norm, biases on.

Layout (32x32 input):
    conv1 3x3x16 -> ReLU -> 2x2 max-pool                      16 x 16 x 16
    layer1: 2 basic blocks, 16 filters                        16 x 16 x 16
    layer2: 2 basic blocks, 32 filters, stride 2 + projection  8 x  8 x 32
    layer3: 2 basic blocks, 64 filters, stride 2 + projection  4 x  4 x 64
    layer4: 2 basic blocks, 128 filters, stride 2 + projection 2 x  2 x 128
    global average pool -> fc to 10 classes
That is 1 + 8*2 + 3 + 1 = 21 weight layers, each a plain Conv2d/Linear with a bias,
so a layer can be re-initialised or reset to an earlier checkpoint on its own
(the layer-criticality experiment) without batch-norm statistics getting in the way.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ThinBlock(nn.Module):
    """relu(conv2(relu(conv1(x))) + shortcut(x)), with biases and no normalisation."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=True)
        # A 1x1 projection only where the shape changes; otherwise the skip is the identity.
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + identity)


class ThinResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=True)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(ThinBlock(in_planes, planes, stride), ThinBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        # PyTorch's default initialisation is kept on purpose: without batch norm its
        # small residual branches leave the skip paths dominant at the start, which
        # keeps activations bounded through 8 blocks.

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def thin_resnet18(num_classes: int = 10) -> ThinResNet18:
    """The KTH memorisation network (21 weight layers, see the module docstring)."""
    return ThinResNet18(num_classes)
