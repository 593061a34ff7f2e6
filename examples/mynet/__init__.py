"""A user's own small CNN, as a vision engineer would write it: conv/BN/ReLU, a residual
block, a two-branch block whose outputs are concatenated, and a classifier head.

Used by the README's "Your own model" section and tests/test_pyref.py:

    surgery layers py:examples.mynet:MyNet:width=16
    surgery fold py:examples.mynet:make:classes=5
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.b(self.a(x)))  # x: N,c,H,W


class TwoBranch(nn.Module):
    """A 1x1 branch and a 3x3 branch, concatenated (an Inception-style block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.left = conv_bn(cin, cout // 2, 1)
        self.right = conv_bn(cin, cout - cout // 2, 3)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)  # N,cout,H,W


class MyNet(nn.Module):
    input_shape = (3, 32, 32)  # what surgery counts at when --input is not given

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, width)
        self.res1 = Residual(width)
        self.down = conv_bn(width, 2 * width, stride=2)
        self.mix = TwoBranch(2 * width, 2 * width)
        self.res2 = Residual(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.res2(self.mix(self.down(self.res1(self.stem(x)))))  # N,2w,H/2,W/2
        return self.fc(torch.flatten(self.pool(x), 1))  # N,classes


def make(width: int = 16, classes: int = 10) -> MyNet:
    """A factory function, as many codebases have (``build_model(cfg)``)."""
    return MyNet(width=width, classes=classes)
