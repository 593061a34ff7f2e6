"""The Dirac fold: a Dirac-parameterised conv becomes a plain ``nn.Conv2d`` holding its
effective weight ``W_hat = diag(a) I + diag(b) W_norm`` (thesis §5.3, eq. 5.5).

The maths is :func:`zoo.diracnet.dirac_effective_weight`, evaluated in the parameters' own
dtype exactly as the training form's forward evaluates it, so the folded conv computes the
same convolution with the same weight tensor. The fold is accepted only where the thesis
calls it exact: stride 1, odd kernels and "same" padding (``dilation * (k - 1) / 2``), i.e.
where the delta term is the identity on the feature map (the implicit skip connection).
Anything else is refused with the layer named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from surgery.errors import SurgeryError

if TYPE_CHECKING:
    from surgery.fold import FoldContext


def _dirac_class():
    from zoo.diracnet import DiracConv2d

    return DiracConv2d


def is_dirac_conv(m: nn.Module) -> bool:
    return isinstance(m, _dirac_class())


# ------------------------------------------------------------------ pure maths


def dirac_fold_problem(m: nn.Module) -> str | None:
    """Why the Dirac conv ``m`` cannot be folded exactly, or None."""
    k, s, p, d = (tuple(getattr(m, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
    if any(v != 1 for v in s):
        return f"stride {s} (only stride 1 folds exactly)"
    if any(v % 2 == 0 for v in k):
        return f"even kernel {k} (only odd kernels have a centre tap)"
    same = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
    if p != same:
        return f"padding {p} is not 'same' padding {same} for kernel {k}"
    return None


def folded_dirac_conv(m: nn.Module) -> nn.Conv2d:
    """The ``nn.Conv2d`` equivalent of Dirac conv ``m`` (same dtype, device, bias)."""
    from zoo.diracnet import dirac_effective_weight

    weight = dirac_effective_weight(m.weight, m.alpha, m.beta, m.groups)  # (out, in/groups, kh, kw)
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                     dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                     device=m.weight.device, dtype=m.weight.dtype)
    conv.weight.copy_(weight.detach())
    if m.bias is not None:
        conv.bias.copy_(m.bias.detach())
    conv.weight.requires_grad_(m.weight.requires_grad)
    return conv


def dirac_with_bn(m: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """Dirac conv ``m`` followed by the per-channel affine ``y * scale + shift``, as one Dirac conv.

    ``diag(s) (diag(a) I + diag(b) W_norm) = diag(s a) I + diag(s b) W_norm`` (``W_norm`` is
    unchanged, so the parameterisation survives); the bias becomes ``s * bias + shift``.
    ``scale``/``shift`` are float64 (out,).
    """
    import copy

    new = copy.deepcopy(m)
    dt = m.alpha.dtype
    new.alpha = nn.Parameter((m.alpha.detach().double() * scale).to(dt))
    new.beta = nn.Parameter((m.beta.detach().double() * scale).to(dt))
    bias = m.bias.detach().double() if m.bias is not None else torch.zeros_like(scale)
    new.bias = nn.Parameter((bias * scale + shift).to(dt))
    return new


# ------------------------------------------------------------------ graph pass


def run(ctx: "FoldContext") -> None:
    """Replace every Dirac conv called in the graph (plan, check all, then apply)."""
    nodes = [n for n in ctx.graph.nodes if n.op == "call_module" and is_dirac_conv(ctx.module(n))]
    problems = [(str(n.target), dirac_fold_problem(ctx.module(n))) for n in nodes]
    problems = [(t, p) for t, p in problems if p]
    if problems:
        target, why = problems[0]
        more = f" (and {len(problems) - 1} more Dirac convs)" if len(problems) > 1 else ""
        raise SurgeryError(
            f"cannot fold the Dirac conv {target!r}{more}: {why}; the Dirac fold is exact only for stride 1, "
            f"odd kernels and 'same' padding. Leave it parameterised with --only bn,branches"
        )
    done = set()
    for n in nodes:
        target = str(n.target)
        if target in done:  # one module called twice: replaced once, both calls see it
            continue
        ctx.replace_module(target, folded_dirac_conv(ctx.module(n)))
        ctx.note(n, kind="dirac")
        ctx.done("dirac", target, (), "W = diag(a) I + diag(b) W_norm")
        done.add(target)
    ctx.commit()
