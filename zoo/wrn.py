"""Wide residual networks (Zagoruyko & Komodakis 2016; weight-parameterizations thesis §5.2).

CIFAR WRN-d-k (thesis Table 5.1): a 3x3 conv to 16 channels, three groups of
``N = (d - 4) / 6`` pre-activation basic blocks ``BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3``
of widths 16k, 32k, 64k (the first conv of groups 2 and 3 has stride 2; a 1x1 ``convdim``
projects the shortcut when the width or resolution changes, fed from the block's first
BN-ReLU as in the official code), then BN-ReLU, 8x8 average pooling and the classifier.
Convs have no bias. Module names follow the official PyTorch code's parameter names
(``conv0``, ``group{g}.block{i}.{bn0,conv0,bn1,conv1,convdim}``, ``bn``, ``fc``).

ImageNet ``wrn50_2`` is torchvision's ``wide_resnet50_2``: :mod:`zoo.resnet`'s ResNet-50
with ``width_per_group=128`` (same keys, 68,883,240 parameters).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.registry import register
from zoo.resnet import ResNet, build_resnet


class WideBasic(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.convdim = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False) \
            if (in_ch != out_ch or stride != 1) else None

    def forward(self, x: Tensor) -> Tensor:
        o1 = self.relu(self.bn0(x))
        y = self.conv0(o1)
        z = self.conv1(self.dropout(self.relu(self.bn1(y))))
        if self.convdim is not None:
            return z + self.convdim(o1)
        return z + x


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        prev = 16
        for g, w in enumerate(widths):
            blocks = OrderedDict(
                (f"block{i}", WideBasic(prev if i == 0 else w, w, (1 if g == 0 else 2) if i == 0 else 1, dropout))
                for i in range(n))
            setattr(self, f"group{g}", nn.Sequential(blocks))
            prev = w
        self.bn = nn.BatchNorm2d(prev)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # = the 8x8 average pool at 32x32 input
        self.fc = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv0(x)  # (16, 32, 32)
        x = self.group2(self.group1(self.group0(x)))  # (64k, 8, 8)
        x = torch.flatten(self.avgpool(self.relu(self.bn(x))), 1)
        return self.fc(x)


def build_wrn(name: str, depth: int, width: int, num_classes: int, dropout: float) -> WideResNet:
    if (depth - 4) % 6 or depth < 10:
        raise SurgeryError(f"zoo:{name}: depth={depth} must be 6N+4 (10, 16, 22, 28, 40, ...)")
    if width < 1:
        raise SurgeryError(f"zoo:{name}: width={width} must be a positive integer")
    if num_classes < 1:
        raise SurgeryError(f"zoo:{name}: num_classes={num_classes} must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise SurgeryError(f"zoo:{name}: dropout={dropout} must be in [0, 1)")
    return WideResNet(depth, width, num_classes, dropout)


@register("wrn28_10", family="wrn", input_shape=(3, 32, 32),
          description="WRN-28-10, CIFAR 3x32x32 (pre-activation basic blocks)",
          published_params=36_500_000, params_rtol=0.01,
          source="weight-parameterizations thesis, Tables 5.4/5.10 (36.5M; exact 36,479,194 for 10 classes)")
def wrn28_10(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10 (CIFAR)."""
    return build_wrn("wrn28_10", 28, 10, num_classes, dropout)


@register("wrn40_4", family="wrn", input_shape=(3, 32, 32),
          description="WRN-40-4, CIFAR 3x32x32 (pre-activation basic blocks)",
          published_params=8_900_000, params_rtol=0.01,
          source="weight-parameterizations thesis, Table 5.4 (8.9M; Table 5.5 prints 8.7M)")
def wrn40_4(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-40-4 (CIFAR)."""
    return build_wrn("wrn40_4", 40, 4, num_classes, dropout)


@register("wrn50_2", family="wrn", input_shape=(3, 224, 224),
          description="WRN-50-2 (torchvision wide_resnet50_2 layout and keys), ImageNet 3x224x224",
          published_params=68_883_240, params_rtol=0.001,
          source="weight-parameterizations thesis, Table 5.8 (68.9M); exact count from torchvision wide_resnet50_2",
          slow=True, extra={"macs": 11.4e9})
def wrn50_2(variant: str = "v1.5", root: int = 1, num_classes: int = 1000) -> ResNet:
    """WRN-50-2 = ResNet-50 with 128 channels per bottleneck group."""
    return build_resnet(50, variant=variant, root=root, num_classes=num_classes, width_per_group=128,
                        name="wrn50_2")
