"""ResNet-18/34/50/101/152 with torchvision's module layout and state_dict keys.

Two extras over torchvision:

- ``variant``: ``"v1.5"`` (torchvision: the stride of a downsampling bottleneck sits in its
  3x3 conv) or ``"v1"`` (He et al. 2016 and the Caffe model of Deep Roots: the stride sits
  in the first 1x1 conv). Basic blocks (18/34) are the same in both.
- ``root``: the "root" filter-group topology of Deep Roots (Ioannou et al. 2016, Table 2).
  Only the spatial 3x3 convs of the residual blocks are grouped; ``layer1..4`` get
  ``root, root/2, root/4, root/8`` groups, never below 1. Filter counts are unchanged.

A torchvision ``resnet50`` state_dict loads strictly into ``zoo:resnet50`` (same keys, same
shapes); ``wide_resnet50_2`` is ``width_per_group=128`` (see :mod:`zoo.wrn`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.registry import register

VARIANTS = ("v1", "v1.5")

# Deep Roots (Ioannou et al., EMDNN 2016) Table 1, ResNet-50 (the original v1 layout) on
# 224x224 ImageNet crops. "FLOPS" in the paper are multiply-adds (MACs). The parameter
# column matches conv+fc weights and biases (BatchNorm/Scale layers not counted), rounded
# to three significant figures; with BN the original is 25,557,032 (torchvision).
# root -> (MACs, params)
DEEP_ROOTS_TABLE1: dict[int, tuple[float, float]] = {
    1: (3.86e9, 2.55e7),
    2: (3.68e9, 2.54e7),
    4: (3.37e9, 2.51e7),
    8: (2.86e9, 2.32e7),
    16: (2.43e9, 1.87e7),
    32: (2.22e9, 1.64e7),
    64: (2.11e9, 1.53e7),
}

# blocks per stage
_DEPTHS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, variant: str = "v1.5"):
        super().__init__()
        # both 3x3 convs are "spatial" and so both are grouped in a root topology
        self.conv1 = conv3x3(inplanes, planes, stride, groups)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()  # not inplace: hooks that keep a BN output must see it unchanged
        self.conv2 = conv3x3(planes, planes, 1, groups)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, variant: str = "v1.5"):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        s1, s3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3, groups)  # the only spatial conv: root groups here
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


def root_groups(root: int, stage: int) -> int:
    """Groups of the 3x3 convs in stage ``stage`` (0 = layer1) of a root-``root`` net."""
    return max(1, root >> stage)


class ResNet(nn.Module):
    """torchvision's ResNet (same attribute names, so the same state_dict keys)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int = 1000,
                 width_per_group: int = 64, root: int = 1, variant: str = "v1.5"):
        super().__init__()
        self.inplanes = 64
        self.base_width = width_per_group
        self.variant = variant
        self.root = root
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, root_groups(root, 0))
        self.layer2 = self._make_layer(block, 128, layers[1], 2, root_groups(root, 1))
        self.layer3 = self._make_layer(block, 256, layers[2], 2, root_groups(root, 2))
        self.layer4 = self._make_layer(block, 512, layers[3], 2, root_groups(root, 3))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, groups: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        kw = dict(groups=groups, base_width=self.base_width, variant=self.variant)
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (512*exp, H/32, W/32)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def build_resnet(depth: int, *, variant: str = "v1.5", root: int = 1, num_classes: int = 1000,
                 width_per_group: int = 64, name: str | None = None) -> ResNet:
    """Validate the zoo arguments (one-line SurgeryError) and build the net."""
    name = name or f"resnet{depth}"
    kind, layers = _DEPTHS[depth]
    if variant not in VARIANTS:
        raise SurgeryError(f"zoo:{name}: unknown variant={variant!r}; use variant=v1 (stride in the first 1x1) "
                           f"or variant=v1.5 (torchvision, stride in the 3x3)")
    if root < 1 or root & (root - 1):
        raise SurgeryError(f"zoo:{name}: root={root} is not a power of two; use root=1, 2, 4, ..., 64")
    if num_classes < 1:
        raise SurgeryError(f"zoo:{name}: num_classes={num_classes} must be at least 1")
    block = BasicBlock if kind == "basic" else Bottleneck
    if kind == "basic" and width_per_group != 64:
        raise SurgeryError(f"zoo:{name}: basic-block ResNets take only width_per_group=64 "
                           f"(use resnet50/101/152 for wider bottlenecks)")
    if width_per_group < 1:
        raise SurgeryError(f"zoo:{name}: width_per_group={width_per_group} must be positive")
    for stage, planes in enumerate((64, 128, 256, 512)):
        width = int(planes * width_per_group / 64) if kind == "bottleneck" else planes
        g = root_groups(root, stage)
        if width % g:
            raise SurgeryError(f"zoo:{name}: root={root} puts {g} groups on layer{stage + 1}'s {width}-channel "
                               f"3x3 convs, which do not divide; use a smaller root")
    return ResNet(block, layers, num_classes=num_classes, width_per_group=width_per_group, root=root, variant=variant)


_PUBLISHED = {  # torchvision's counts (He et al. 2016 architectures)
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}


# MACs (conv + linear) of the default build (v1.5, root-1) at 224x224, torchvision's model
# card "GFLOPS" (which are multiply-accumulates); resnet50 also carries the v1 figure of
# Deep Roots Table 1. tests/test_zoo.py recounts them in closed form.
_EXTRA = {
    18: {"macs": 1.81e9},
    34: {"macs": 3.66e9},
    50: {"macs": 4.09e9, "macs_v1": DEEP_ROOTS_TABLE1[1][0]},
    101: {"macs": 7.80e9},
    152: {"macs": 11.51e9},
}


def _make_entry(depth: int) -> Callable[..., ResNet]:
    def builder(variant: str = "v1.5", root: int = 1, num_classes: int = 1000, width_per_group: int = 64) -> ResNet:
        return build_resnet(depth, variant=variant, root=root, num_classes=num_classes,
                            width_per_group=width_per_group)

    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} (torchvision layout and keys; variant=v1|v1.5, root=n filter groups)."
    return register(
        f"resnet{depth}",
        family="resnet",
        input_shape=(3, 224, 224),
        description=f"ResNet-{depth}, ImageNet 3x224x224; variant=v1|v1.5, root=n (Deep Roots), width_per_group",
        published_params=_PUBLISHED[depth],
        params_rtol=0.001,
        source="He et al. 2016 / torchvision model card" + (
            "; Deep Roots Table 1 (root-n, v1)" if depth == 50 else ""),
        slow=depth >= 101,
        extra=_EXTRA[depth],
    )(builder)


resnet18 = _make_entry(18)
resnet34 = _make_entry(34)
resnet50 = _make_entry(50)
resnet101 = _make_entry(101)
resnet152 = _make_entry(152)
