"""ShuffleNet v2 (Ma et al. 2018), torchvision's ``ShuffleNetV2`` module for module.

Same attribute names (``conv1.0/.1``, ``maxpool``, ``stage2..4`` of ``InvertedResidual``
with ``branch1``/``branch2`` Sequentials, ``conv5.0/.1``, ``fc``), so torchvision
``shufflenet_v2_x*`` state_dicts load strictly. ``channel_shuffle`` is a module-level
function, written without tuple-unpacking ``x.size()`` so torch.fx traces it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.registry import register


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g*c, H, W) -> (N, c*g, H, W): channel ``i*c + j`` moves to ``j*g + i``."""
    n, h, w = x.size(0), x.size(2), x.size(3)
    x = x.view(n, groups, -1, h, w)  # (N, g, c, H, W)
    x = torch.transpose(x, 1, 2).contiguous()  # (N, c, g, H, W)
    return x.view(n, -1, h, w)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        if not 1 <= stride <= 3:
            raise SurgeryError(f"ShuffleNet v2 unit: stride={stride} must be 1, 2 or 3")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise SurgeryError(f"ShuffleNet v2 unit: with stride 1 the input ({inp}) must equal the output ({oup})")
        if stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(),
            self.depthwise_conv(branch_features, branch_features, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(),
        )

    @staticmethod
    def depthwise_conv(i: int, o: int, kernel_size: int, stride: int = 1, padding: int = 0,
                       bias: bool = False) -> nn.Conv2d:
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)  # channel split
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int], num_classes: int = 1000):
        super().__init__()
        if len(stages_repeats) != 3 or len(stages_out_channels) != 5:
            raise SurgeryError("ShuffleNetV2 takes 3 stage repeats and 5 output channel counts")
        self._stage_out_channels = stages_out_channels
        input_channels = 3
        output_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage2: nn.Sequential
        self.stage3: nn.Sequential
        self.stage4: nn.Sequential
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"), stages_repeats,
                                                  stages_out_channels[1:]):
            seq = [InvertedResidual(input_channels, output_channels, 2)]
            seq += [InvertedResidual(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))  # (24, H/4, W/4)
        x = self.stage4(self.stage3(self.stage2(x)))  # (c4, H/32, W/32)
        x = self.conv5(x)
        x = x.mean([2, 3])  # global average pool -> (c5,)
        return self.fc(x)


# width -> (stage repeats, channels: conv1, stage2, stage3, stage4, conv5), torchvision
_CONFIGS = {
    "x0_5": ([4, 8, 4], [24, 48, 96, 192, 1024]),
    "x1_0": ([4, 8, 4], [24, 116, 232, 464, 1024]),
    "x1_5": ([4, 8, 4], [24, 176, 352, 704, 1024]),
    "x2_0": ([4, 8, 4], [24, 244, 488, 976, 2048]),
}
# torchvision's exact counts (the thesis Table 3.2 / ShuffleNet v2 paper round them to
# 1.4M / 2.3M / 3.5M / 7.4M) and the paper's MACs ("FLOPs" = multiply-adds) at 224x224.
_PUBLISHED = {
    "x0_5": (1_366_792, 41e6),
    "x1_0": (2_278_604, 146e6),
    "x1_5": (3_503_624, 299e6),
    "x2_0": (7_393_996, 591e6),
}


def _make_entry(width: str):
    repeats, channels = _CONFIGS[width]

    def builder(num_classes: int = 1000) -> ShuffleNetV2:
        if num_classes < 1:
            raise SurgeryError(f"zoo:shufflenet_v2_{width}: num_classes={num_classes} must be at least 1")
        return ShuffleNetV2(repeats, channels, num_classes=num_classes)

    params, macs = _PUBLISHED[width]
    builder.__name__ = builder.__qualname__ = f"shufflenet_v2_{width}"
    return register(
        f"shufflenet_v2_{width}",
        family="shufflenet",
        input_shape=(3, 224, 224),
        description=f"ShuffleNet v2 {width.replace('_', '.')}, ImageNet 3x224x224 (torchvision layout and keys)",
        published_params=params,
        params_rtol=0.001,
        source="shufflenetv2-lighthead thesis, Table 3.2 (FLOPs = MACs, # weights); exact counts from torchvision",
        extra={"macs": macs},
    )(builder)


shufflenet_v2_x0_5 = _make_entry("x0_5")
shufflenet_v2_x1_0 = _make_entry("x1_0")
shufflenet_v2_x1_5 = _make_entry("x1_5")
shufflenet_v2_x2_0 = _make_entry("x2_0")
