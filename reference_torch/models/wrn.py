"""Wide ResNet WRN-28-2 as used by FixMatch (and MixMatch before it).

Pre-activation blocks (BN -> LeakyReLU(0.1) -> conv), batch-norm momentum 0.001
and the initialisation of FixMatch's reference code. The block follows the
original TensorFlow code: the convolutions always see the pre-activated input;
the shortcut sees it too only in the first group ("activate before residual"),
elsewhere it projects the raw input.
"""
from __future__ import annotations

from torch import Tensor, nn

from .resnet import init_conv_bn


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum)


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activate_before_residual: bool,
                 bn_momentum: float, leaky_slope: float, dropout: float) -> None:
        super().__init__()
        self.bn1 = _bn(in_planes, bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes, bn_momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(leaky_slope, inplace=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.activate_before_residual = activate_before_residual
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.act(self.bn2(out))))
        skip = pre if self.activate_before_residual else x
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        return skip + out


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 2, num_classes: int = 10,
                 bn_momentum: float = 0.001, leaky_slope: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (e.g. 16, 22, 28, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        common = dict(bn_momentum=bn_momentum, leaky_slope=leaky_slope, dropout=dropout)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        groups, in_planes = [], widths[0]
        for g, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [WideBlock(in_planes, planes, stride, activate_before_residual=(g == 0), **common)]
            blocks += [WideBlock(planes, planes, 1, False, **common) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            in_planes = planes
        self.block1, self.block2, self.block3 = groups
        self.bn = _bn(widths[-1], bn_momentum)
        self.act = nn.LeakyReLU(leaky_slope)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        self.out_features = widths[-1]

        init_conv_bn(self, "leaky_relu")
        for m in self.modules():  # FixMatch's code also gives the classifier Glorot weights
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.avgpool(self.act(self.bn(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def wrn28_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-2 (about 1.47 M parameters with 10 classes)."""
    return WideResNet(28, 2, num_classes, dropout=dropout)
