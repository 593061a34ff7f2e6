"""MobileNet v2 (Sandler et al. 2018), torchvision's ``MobileNetV2`` module for module.

Same attribute names (``features.N`` of ``Conv2dNormActivation``-style Sequentials
``(conv, BN, ReLU6)`` and ``InvertedResidual`` blocks with a ``conv`` Sequential,
``classifier = (Dropout, Linear)``), so torchvision ``mobilenet_v2`` state_dicts load strictly.
The inverted bottleneck (1×1 expand ×t → 3×3 depthwise → 1×1 project, residual add when the
shape is kept) is the block the ShuffleNet v2 thesis (§3.1.1) names as violating its guideline
P1 (a 1×1 conv with c1 ≠ c2).
"""

from __future__ import annotations

from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.registry import register


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping below 90 % of it
    (the reference implementation's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_act(inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(oup)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise SurgeryError(f"MobileNet v2 block: stride={stride} must be 1 or 2")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(inp, hidden, kernel=1))  # 1x1 expand
        layers += [
            conv_bn_act(hidden, hidden, stride=stride, groups=hidden),  # 3x3 depthwise
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # 1x1 project (linear bottleneck)
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# (expansion t, output channels c, repeats n, first stride s): the paper's Table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        if width_mult <= 0:
            raise SurgeryError(f"MobileNet v2: width_mult={width_mult} must be positive")
        input_channel = _make_divisible(32 * width_mult)
        last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_act(3, input_channel, stride=2)]
        for t, c, n, s in SETTINGS:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, out, s if i == 0 else 1, t))
                input_channel = out
        features.append(conv_bn_act(input_channel, last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes))
        self.last_channel = last_channel

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (1280, H/32, W/32)
        x = x.mean([2, 3])  # global average pool -> (1280,)
        return self.classifier(x)


@register(
    "mobilenet_v2",
    family="mobilenet",
    input_shape=(3, 224, 224),
    description="MobileNet v2 1.0, ImageNet 3x224x224 (torchvision layout and keys)",
    published_params=3_504_872,
    params_rtol=0.001,
    source="Sandler et al. 2018, Table 4 (3.4M); exact count of torchvision's mobilenet_v2 (3,504,872)",
    extra={"macs": 300e6},
)
def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNet v2 (inverted residuals, linear bottlenecks), torchvision layout."""
    if num_classes < 1:
        raise SurgeryError(f"zoo:mobilenet_v2: num_classes={num_classes} must be at least 1")
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult)
