"""The BatchNorm fold: an eval-mode BatchNorm folded into the conv or linear that feeds it.

The maths is ``torch.nn.utils.fusion.fuse_conv_bn_weights`` / ``fuse_linear_bn_weights``
(evaluated in float64, then cast back to the layer's dtype), with the BatchNorm's own ``eps``
and running statistics. Which BN folds into which layer is read from the traced data flow: a
``call_module`` BatchNorm whose single input is a ``call_module`` conv/linear whose only user
is that BatchNorm. A producer whose output is also read elsewhere cannot absorb the BN (the
other reader would see normalised values) and is reported as skipped.

A BatchNorm1d after a Linear is folded on the assumption that the Linear's output is 2-d
(N, C); on a 3-d output BatchNorm1d normalises another axis, and the verification that
:func:`surgery.fold.fold` runs would catch the mismatch.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from surgery.fold_dirac import dirac_with_bn, is_dirac_conv

if TYPE_CHECKING:
    from surgery.fold import FoldContext

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TCONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_DIMS = {nn.BatchNorm1d: (1, 3), nn.BatchNorm2d: (2, 4), nn.BatchNorm3d: (3, 5)}  # conv dims, linear: 1d only


# ------------------------------------------------------------------ pure maths


def bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval BN as ``y = x * scale + shift`` per channel (float64, shape (C,))."""
    mean, var, gamma, beta = _bn64(bn)
    scale = gamma * torch.rsqrt(var + bn.eps)
    return scale, beta - mean * scale


def _bn64(bn: _BatchNorm):
    """(running mean, running var, gamma, beta) in float64; gamma/beta default to 1/0."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    return mean, var, gamma, beta


def fold_bn_into(layer: nn.Module, bn: _BatchNorm) -> nn.Module:
    """A copy of ``layer`` (conv, transposed conv, linear or Dirac conv) with ``bn`` folded in."""
    if is_dirac_conv(layer):
        return dirac_with_bn(layer, *bn_scale_shift(bn))
    w = layer.weight.detach()
    dt = w.dtype
    b64 = layer.bias.detach().double() if layer.bias is not None else None
    mean, var, gamma, beta = _bn64(bn)
    if isinstance(layer, nn.Linear):
        fw, fb = fuse_linear_bn_weights(w.double(), b64, mean, var, bn.eps, gamma, beta)
    else:
        fw, fb = fuse_conv_bn_weights(w.double(), b64, mean, var, bn.eps, gamma, beta,
                                      transpose=isinstance(layer, _TCONVS))
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(fw.detach().to(dt), requires_grad=layer.weight.requires_grad)
    new.bias = nn.Parameter(fb.detach().to(dt), requires_grad=layer.weight.requires_grad)
    return new


def bn_fold_problem(layer: nn.Module, bn: _BatchNorm) -> str | None:
    """Why ``bn`` cannot fold into ``layer`` (structure only), or None."""
    if bn.running_mean is None or bn.running_var is None:
        return "it has no running statistics (track_running_stats=False), so its eval output depends on the batch"
    kind = type(bn)
    if type(layer) is nn.Linear:
        if kind is not nn.BatchNorm1d:
            return f"{kind.__name__} after a Linear"
        channels = layer.out_features
    elif type(layer) in _CONVS + _TCONVS:
        conv_dims = len(layer.kernel_size)
        if kind not in _BN_DIMS or _BN_DIMS[kind][0] != conv_dims:
            return f"{kind.__name__} after a {conv_dims}-d conv"
        channels = layer.out_channels
    elif is_dirac_conv(layer):
        if kind is not nn.BatchNorm2d:
            return f"{kind.__name__} after a Dirac conv"
        channels = layer.out_channels
    else:
        return f"its input comes from a {type(layer).__name__}, not a conv or linear"
    if bn.num_features != channels:
        return f"it has {bn.num_features} features but its input has {channels} channels"
    return None


# ------------------------------------------------------------------ graph pass


def run(ctx: "FoldContext", *, into_dirac: bool = False) -> None:
    """Fold every eligible BN into its producer; ``into_dirac``: Dirac convs may absorb BN too."""
    for node in list(ctx.graph.nodes):
        bn = ctx.module(node)
        if not isinstance(bn, _BatchNorm):
            continue
        name = str(node.target)
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        layer = ctx.module(src)
        if layer is None:
            what = getattr(src, "name", "its arguments")
            ctx.skip("bn", name, f"reads {what}, which is not the output of a conv or linear module")
            continue
        if is_dirac_conv(layer) and not into_dirac:
            ctx.skip("bn", name, f"its input {src.target} is a Dirac conv")
            continue
        problem = bn_fold_problem(layer, bn)
        if problem:
            ctx.skip("bn", name, f"cannot fold into {src.target}: {problem}")
            continue
        others = [u.name for u in src.users if u is not node]
        if others:
            ctx.skip("bn", str(src.target), f"its output also feeds {', '.join(others)} besides {name}; "
                                            f"folding {name} into it would change what they read")
            continue
        if ctx.references(str(src.target)) > 1 or ctx.references(name) > 1:
            ctx.skip("bn", name, f"{src.target} or {name} is called more than once (shared weights)")
            continue
        ctx.replace_module(str(src.target), fold_bn_into(layer, bn))
        node.replace_all_uses_with(src)
        ctx.remove_node(node)
        ctx.note(src, kind="bn", bn=name)
        ctx.done("bn", str(src.target), (name,), f"eps={bn.eps:g}")
    ctx.commit()
