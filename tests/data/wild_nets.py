"""Networks written the way ONNX-to-torch converters write them (onnx2torch's style, issue 21),
for the tests of the graph core, the counter and onion split: modules that branch on
``x.is_floating_point()`` (fx cannot enter them), shape arithmetic on host int64 tensors, an
integer shape buffer read with ``torch.any``/``tolist`` (meta cannot run it), and hardswish
spelled out as ``x * clamp(x + 3, 0, 6) / 6``. Used as ``py:wild_nets:make`` with
``PYTHONPATH=tests/data``."""

from __future__ import annotations

import torch
from torch import nn


class CastLike(nn.Module):
    """Branches on the dtype of a traced value: fx cannot trace into it."""

    def forward(self, x):
        if x.is_floating_point():
            return x
        return x.float()


class HostReshape(nn.Module):
    """``Reshape`` with the target built on the host (``cat`` of CPU int64 tensors) and a
    shape buffer whose zeros mean "copy this dimension"."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shape", torch.tensor([0, -1], dtype=torch.int64))

    def forward(self, x):
        shape = self.shape
        if torch.any(shape == 0):
            shape = torch.where(shape == 0, torch.tensor(x.shape[: len(shape)]), shape)
        target = torch.cat([shape[:1], torch.tensor([-1])])
        return torch.reshape(x, torch.Size(target.tolist()))


def hardswish(x):
    return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class Wild(nn.Module):
    input_shape = (3, 16, 16)

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.cast = CastLike()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reshape = HostReshape()
        self.fc = nn.Linear(16, classes)
        with torch.no_grad():  # non-trivial BN statistics, so a fold has something to do
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        x = hardswish(self.bn1(self.conv1(self.cast(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.reshape(self.pool(x)))


class Chain(nn.Module):
    """A chain network with decomposed hardswish activations (onion split's input)."""

    input_shape = (3, 16, 16)

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = hardswish(self.conv1(x))
        x = hardswish(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def make(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return Wild(int(classes))


def chain(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return Chain(int(classes))
