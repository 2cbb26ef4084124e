"""ResNet-18/34 laid out exactly like torchvision's, so its weight files load.

Module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc`` ...) and parameter shapes match ``torchvision.models.resnet18/34``; a
torchvision state_dict therefore loads with ``strict=True``. torchvision itself is
not needed: this is the same architecture written out in ~100 lines.
"""
from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the batch norm that follows has its own shift, a bias would be redundant.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def init_conv_bn(model: nn.Module, nonlinearity: str = "relu") -> None:
    """torchvision's initialisation, shared with the wide ResNet: He-normal convolutions
    (fan_out, for the ``nonlinearity`` that follows them), batch norms as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection: relu(F(x) + shortcut(x))."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        # 1x1 conv + BN where the shape changes, None (identity) where it does not.
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with basic blocks.

    ``cifar_stem=True`` swaps the ImageNet stem (7x7 stride-2 conv + 3x3 max-pool,
    which shrinks 224 px to 56 px) for a 3x3 stride-1 conv and no pooling, so 32x32
    images keep enough resolution for four stages. The parameter names do not change
    (``maxpool`` becomes an Identity), only the shape of ``conv1.weight``.
    """

    def __init__(self, layers: list[int], num_classes: int = 1000, cifar_stem: bool = False,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.in_planes = 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)

        # The same initialisation as torchvision, so from-scratch runs behave alike.
        init_conv_bn(self, "relu")
        if zero_init_residual:
            # Each block then starts as the identity, which helps very deep/large-batch runs.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(conv1x1(self.in_planes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """The pooled 512-d representation (what linear probes and SimCLR heads use)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def resnet18(num_classes: int = 1000, cifar_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: 11,689,512 parameters with 1,000 classes and the ImageNet stem."""
    return ResNet([2, 2, 2, 2], num_classes, cifar_stem, zero_init_residual)


def resnet34(num_classes: int = 1000, cifar_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34: 21,797,672 parameters with 1,000 classes and the ImageNet stem."""
    return ResNet([3, 4, 6, 3], num_classes, cifar_stem, zero_init_residual)
