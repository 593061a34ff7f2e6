"""Apply: permute the neighbours, replace the regrouped convs; and the structural replay.

Interface permutations go into the producer's output channels (weight rows, bias, the norm
inside it), every per-channel op's tensors (:class:`surgery.core.channel_ops.ChannelOp` ``params``)
and the consumers' input channels; the regrouped conv keeps its diagonal blocks in the
permuted order. Everything outside the regrouped convs computes exactly what it did before.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from surgery import partition
from surgery.core.errors import SurgeryError
from surgery.core.channel_ops import module_channel_op
from surgery.core.recipe import replayable
from surgery.regroup.interfaces import Graph
from surgery.regroup.plan import Target


def _permute_rows(module: nn.Module, perm: torch.Tensor, names: Sequence[str] | None = None) -> None:
    """Permute ``module``'s per-channel tensors ``names`` (default: the ``params`` its channel op
    names: a BatchNorm's weight, bias and running statistics)."""
    if names is None:
        op = module_channel_op(module)
        names = op.params if op is not None else ()
    for n in names:
        t = getattr(module, n, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == len(perm):
            t.data = t.data[perm].clone()


def empty_grouped(conv: nn.Conv2d, groups: int) -> nn.Conv2d:
    """A conv like ``conv`` with ``groups`` groups, its tensors uninitialised."""
    with torch.device("meta"):
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    return new.to_empty(device=conv.weight.device).to(conv.weight.dtype)


def grouped(conv: nn.Conv2d, groups: int, perm_out: torch.Tensor | None, perm_in: torch.Tensor | None) -> nn.Conv2d:
    """A grouped copy of ``conv`` keeping the diagonal blocks in the permuted channel order."""
    w = conv.weight.detach()
    if perm_out is not None:
        w = w[perm_out]
    if perm_in is not None:
        w = w[:, perm_in]
    o, i = conv.out_channels // groups, conv.in_channels // groups
    blocks = [w[g * o:(g + 1) * o, g * i:(g + 1) * i] for g in range(groups)]
    new = empty_grouped(conv, groups)
    new.weight.data = torch.cat(blocks, 0).clone()
    if conv.bias is not None:
        b = conv.bias.detach()
        new.bias.data = (b[perm_out] if perm_out is not None else b).clone()
    return new.train(conv.training)


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _perm_of(groups: Sequence[int]) -> torch.Tensor | None:
    p = partition.permutation(groups)
    return None if p == list(range(len(p))) else torch.tensor(p, dtype=torch.long)


@torch.no_grad()
def apply_groups(module: nn.Module, g: Graph, targets: list[Target]) -> None:
    """Permute neighbours and replace the regrouped convs in ``module`` (a private copy)."""
    by_name = {t.unit.name: t for t in targets}
    done: set[str] = set()  # interfaces (by producer) already permuted: a chain's interior is shared
    for t in targets:
        for side in ("in", "out"):
            iface = t.in_iface if side == "in" else t.out_iface
            if side in t.fixed or iface.producer is None or iface.producer.name in done:
                continue
            perm = _perm_of(t.in_groups if side == "in" else t.out_groups)
            if perm is None:
                continue
            done.add(iface.producer.name)
            prod = iface.producer
            if prod.name not in by_name:  # a regrouped producer permutes its rows in grouped()
                _permute_rows(module.get_submodule(prod.conv_name), perm, ("weight", "bias"))
            if prod.inner_bn:
                _permute_rows(module.get_submodule(prod.inner_bn), perm)
            for p in iface.passes:
                if p.op == "call_module":
                    _permute_rows(module.get_submodule(str(p.target)), perm)
            for u in iface.consumers:
                if u.name not in by_name:  # a regrouped consumer permutes its columns in grouped()
                    conv = module.get_submodule(u.conv_name)
                    conv.weight.data = conv.weight.data[:, perm].clone()
    for t in targets:
        conv = module.get_submodule(t.unit.conv_name)
        perm_out = None if "out" in t.fixed else _perm_of(t.out_groups)
        perm_in = None if "in" in t.fixed else _perm_of(t.in_groups)
        set_submodule(module, t.unit.conv_name, grouped(conv, t.groups, perm_out, perm_in))


def permuted_sides(t: Target) -> tuple[str, ...]:
    """The sides of ``t`` whose channels moved: "in", "out"."""
    return tuple(s for s in ("in", "out") if s not in t.fixed
                 and _perm_of(t.in_groups if s == "in" else t.out_groups) is not None)


# ----------------------------------------------------------------------------- replay

def regroup_structure(module: nn.Module, convs: Mapping[str, int]) -> nn.Module:
    """``module`` with the convs named in ``convs`` made grouped (empty): what a checkpoint's
    ``regroup`` recipe step rebuilds before its weights load."""
    for name, groups in convs.items():
        try:
            conv = module.get_submodule(name)
        except AttributeError:
            raise SurgeryError(f"regroup replay: the model has no module {name!r}; the checkpoint does not match "
                               f"its architecture") from None
        if not isinstance(conv, nn.Conv2d):
            raise SurgeryError(f"regroup replay: {name} is a {type(conv).__name__}, not a Conv2d")
        if conv.groups != int(groups):
            set_submodule(module, name, empty_grouped(conv, int(groups)))
    return module


@replayable("regroup")
def _replay_regroup(module: nn.Module, args: Mapping) -> nn.Module:
    return regroup_structure(module, dict(args.get("convs", {})))
