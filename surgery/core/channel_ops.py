"""The channel ops: per module class, function or method, what an op does to the channels
(dim 1) of the tensor it reads — passes them through one to one, absorbs a permutation into its
weights, or (no entry) couples them. The knowledge a surgery needs to move channels around
(regroup's permutations), kept per op type as Torch-Pruning's DependencyGraph keeps it for
pruning. torch's own are registered here; the layers above the core register theirs (the
Darknet sections in zoo/darknet, a model's own per-channel modules through
:func:`register_channel_op`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

PASS, ABSORB = "pass", "absorb"


@dataclass(frozen=True)
class ChannelOp:
    """What an op does to the channels (dim 1) of the tensor it reads: the knowledge a surgery
    needs to move channels around (regroup's permutations), kept per op type as Torch-Pruning's
    DependencyGraph keeps it for pruning.

    - ``pass``: output channel c depends on input channel c only (BatchNorm, activations,
      pooling, dropout), so a permutation passes through. ``params`` are its per-channel tensors
      (dim 0 = channels) that follow one; an op without any may be called at several places.
    - ``absorb``: a weighted op that takes a permutation of its input or output channels into
      its weights: ``weight`` is the path of the ``nn.Conv2d``/``nn.Linear`` inside it ("" = the
      op itself), ``norm`` that of a per-output-channel norm after it, inside it (Darknet's
      convolutional section: conv → bn → activation).

    An op without an entry couples or mixes channels (an add, a concat, a reshape): a
    permutation cannot cross it. ``when(module)`` narrows a module entry (a Darknet route is a
    pass only with one input).
    """

    kind: str
    params: tuple[str, ...] = ()
    weight: str = ""
    norm: str = ""
    when: Callable[[nn.Module], bool] | None = None


_CHANNEL_OPS: dict[object, ChannelOp] = {}  # module class, function, or method name -> op


def register_channel_op(op: ChannelOp, *targets) -> None:
    """Declare what module classes, functions or tensor methods (by name) do to channels. The
    layers above the core register their own modules (the Darknet sections: zoo/darknet)."""
    if op.kind not in (PASS, ABSORB):
        raise ValueError(f"channel op kind {op.kind!r}: use {PASS!r} or {ABSORB!r}")
    for t in targets:
        _CHANNEL_OPS[t] = op


def channel_op(op: ChannelOp) -> Callable:
    """Class decorator form of :func:`register_channel_op`: ``@channel_op(ChannelOp(PASS))``."""
    def deco(cls):
        register_channel_op(op, cls)
        return cls

    return deco


def module_channel_op(module: nn.Module) -> ChannelOp | None:
    """The entry of ``module``'s class (or the nearest base class that has one)."""
    for cls in type(module).__mro__:
        op = _CHANNEL_OPS.get(cls)
        if op is not None:
            return op if op.when is None or op.when(module) else None
    return None


def node_channel_op(node: fx.Node, root: nn.Module) -> ChannelOp | None:
    """The entry of an fx node's module (in ``root``), function or method."""
    if node.op == "call_module":
        return module_channel_op(root.get_submodule(str(node.target)))
    if node.op in ("call_function", "call_method"):  # a function, or a method by its name
        return _CHANNEL_OPS.get(node.target)
    return None


_BN = ("weight", "bias", "running_mean", "running_var")
register_channel_op(ChannelOp(PASS, _BN), nn.BatchNorm2d)
register_channel_op(ChannelOp(PASS, ("weight",)), nn.PReLU)
register_channel_op(ChannelOp(PASS), nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
                    nn.Dropout, nn.Dropout2d, nn.Mish, nn.ELU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.MaxPool2d,
                    nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
register_channel_op(ChannelOp(PASS), F.relu, torch.relu, F.relu6, F.leaky_relu, torch.sigmoid, F.silu, torch.tanh,
                    F.gelu, F.max_pool2d, F.avg_pool2d, F.dropout, F.hardswish, F.mish,
                    "relu", "sigmoid", "tanh", "contiguous")
register_channel_op(ChannelOp(ABSORB), nn.Conv2d, nn.Linear)
