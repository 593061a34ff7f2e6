"""The BatchNorm fold (kind ``bn``): an eval-mode BatchNorm folded into the conv or linear that
feeds it.

The maths is ``torch.nn.utils.fusion.fuse_conv_bn_weights`` / ``fuse_linear_bn_weights``
(evaluated in float64, then cast back to the layer's dtype), with the BatchNorm's own ``eps``
and running statistics. Which BN folds into which layer is read from the traced data flow: a
``call_module`` BatchNorm whose single input is a ``call_module`` conv/linear whose only user
is that BatchNorm. A producer whose output is also read elsewhere cannot absorb the BN (the
other reader would see normalised values) and is reported as skipped.

A module that is not a torch conv/linear may absorb a BN by implementing
``fuse_affine(scale, shift) -> nn.Module`` (the Dirac conv keeps its parameterisation:
``diag(s)(diag(a) I + diag(b) W_norm) = diag(sa) I + diag(sb) W_norm``); it is used when the
``dirac`` fold is not run.

A BatchNorm1d after a Linear is folded on the assumption that the Linear's output is 2-d
(N, C); on a 3-d output BatchNorm1d normalises another axis, and the verification that
:func:`surgery.fold.fold` runs would catch the mismatch.

Networks whose layers are opaque units (Darknet's ``[convolutional] batch_normalize=1``) fold
themselves: see :func:`fuse_network`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from surgery.fold.context import FoldAction, FoldSkip, FoldContext
from surgery.fold.registry import register

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TCONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}  # spatial dims of the conv before it


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


def fused_weights(layer: nn.Module, bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of conv/transposed conv/linear ``layer`` with ``bn`` folded in, in the
    layer's dtype (computed in float64)."""
    w = layer.weight.detach()
    b64 = layer.bias.detach().double() if layer.bias is not None else None
    mean, var, gamma, beta = _bn64(bn)
    if isinstance(layer, nn.Linear):
        fw, fb = fuse_linear_bn_weights(w.double(), b64, mean, var, bn.eps, gamma, beta)
    else:
        fw, fb = fuse_conv_bn_weights(w.double(), b64, mean, var, bn.eps, gamma, beta,
                                      transpose=isinstance(layer, _TCONVS))
    return fw.detach().to(w.dtype), fb.detach().to(w.dtype)


def fold_bn_into(layer: nn.Module, bn: _BatchNorm) -> nn.Module:
    """A copy of ``layer`` (conv, transposed conv, linear, or a module with ``fuse_affine``)
    with ``bn`` folded in."""
    if not isinstance(layer, (nn.Linear, *_CONVS, *_TCONVS)):
        return layer.fuse_affine(*bn_scale_shift(bn))
    fw, fb = fused_weights(layer, bn)
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(fw, requires_grad=layer.weight.requires_grad)
    new.bias = nn.Parameter(fb, requires_grad=layer.weight.requires_grad)
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
    elif type(layer) in _CONVS + _TCONVS or callable(getattr(layer, "fuse_affine", None)):
        conv_dims = len(getattr(layer, "kernel_size", ()))
        if _BN_DIMS.get(kind) != conv_dims:
            return f"{kind.__name__} after a {conv_dims}-d {type(layer).__name__}"
        channels = layer.out_channels
    else:
        return f"its input comes from a {type(layer).__name__}, not a conv or linear"
    if bn.num_features != channels:
        return f"it has {bn.num_features} features but its input has {channels} channels"
    return None


# ------------------------------------------------------------------ graph pass


@register("bn", order=2, summary="BatchNorm into the conv/linear feeding it (Darknet: batch_normalize=1 layers)")
def run(ctx: FoldContext, kinds: tuple[str, ...]) -> None:
    """Fold every eligible BN into its producer. A module with ``fuse_affine`` (a Dirac conv) may
    absorb a BN only when the ``dirac`` fold is not run (else it was replaced already)."""
    into_affine = "dirac" not in kinds
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
        if not isinstance(layer, (nn.Linear, *_CONVS, *_TCONVS)) and callable(getattr(layer, "fuse_affine", None)) \
                and not into_affine:
            ctx.skip("bn", name, f"its input {src.target} is a {type(layer).__name__}")
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


# ------------------------------------------------------------------ self-fusing networks


def self_fusing(module: nn.Module) -> bool:
    """A network that folds its own BatchNorms (``fuse()``, as timm's modules do) because its
    layers are opaque units of its own format (Darknet: :meth:`zoo.darknet.DarknetNet.fuse`)."""
    return callable(getattr(module, "fuse", None))


@torch.no_grad()
def fuse_network(module: nn.Module) -> tuple[nn.Module, list[FoldAction], list[FoldSkip]]:
    """(``module.fuse()``, one ``bn`` action per BatchNorm it no longer has: the layer that
    holds it absorbed it, one skip per BatchNorm it kept, with the reason the network gives
    through ``fuse_skip_reason(name)`` when it has one)."""
    fused = module.fuse().eval()
    left = {name for name, m in fused.named_modules() if isinstance(m, _BatchNorm)}
    reason = getattr(module, "fuse_skip_reason", None)
    actions, skips = [], []
    for name, m in module.named_modules():
        if not isinstance(m, _BatchNorm):
            continue
        owner = name.rpartition(".")[0]
        if name not in left:
            actions.append(FoldAction("bn", owner, (name,), f"eps={m.eps:g}"))
        else:
            skips.append(FoldSkip("bn", owner, (reason(name) if reason else None) or "the network keeps it"))
    return fused, actions, skips
