"""Darknet activations (activations.h, pjreddie's and AlexeyAB's): a standard torch module where
one is exact, else :class:`DarknetActivation` with Darknet's formula."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from surgery.core.errors import SurgeryError, suggest
from surgery.core.channel_ops import PASS, ChannelOp, channel_op


def _stair(x):
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


# Formulas from Darknet's activations.h (pjreddie + AlexeyAB additions), constants as there.
_CUSTOM_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "loggy": lambda x: 2.0 / (1.0 + torch.exp(-x)) - 1.0,
    "relie": lambda x: torch.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "plse": lambda x: torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "stair": _stair,
    "hardtan": lambda x: torch.clamp(x, -1.0, 1.0),
    "lhtan": lambda x: torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "selu": lambda x: torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (torch.exp(x) - 1)),
    "gelu": lambda x: 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x.pow(3))),
    "hard_mish": lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x))),
}
# Exact torch equivalents (kept as standard modules so other tools recognise them).
_TORCH_ACTS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu6": nn.ReLU6,
    "mish": nn.Mish,
    "swish": nn.SiLU,
}
ACTIVATIONS = tuple(sorted({*_TORCH_ACTS, *_CUSTOM_ACTS}))


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.channel_ops)
class DarknetActivation(nn.Module):
    """A Darknet activation with no exact torch module (formula from activations.h)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        return _CUSTOM_ACTS[self.name](x)

    def extra_repr(self) -> str:
        return self.name


def make_activation(name: str, where: str = "") -> nn.Module:
    if name in _TORCH_ACTS:
        return _TORCH_ACTS[name]()
    if name in _CUSTOM_ACTS:
        return DarknetActivation(name)
    raise SurgeryError(f"{where}activation={name!r} is not supported{suggest(name, ACTIVATIONS)}; use one of: {', '.join(ACTIVATIONS)}")
