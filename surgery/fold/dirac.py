"""The reparameterisation fold (kind ``dirac``): every module that implements
``reparameterize()`` becomes the plain module it returns, as timm's ``reparameterize_model``
does. The Dirac-parameterised conv of DiracNets (``zoo.diracnet.DiracConv2d``,
``W_hat = diag(a) I + diag(b) W_norm``, thesis §5.3 eq. 5.5) is the one in the zoo: it returns
an ``nn.Conv2d`` holding ``W_hat``.

The protocol a module implements (the fold imports no model family):

- ``reparameterize() -> nn.Module``: the equivalent plain module (same dtype and device);
- ``reparameterize_problem() -> str | None``: why that would not be exact (a Dirac conv:
  stride, even kernel or padding other than "same"), checked for every candidate before
  anything changes; any problem refuses the whole fold with the layer named.
"""

from __future__ import annotations

from torch import nn

from surgery.core.errors import SurgeryError
from surgery.fold.context import FoldContext
from surgery.fold.registry import register


def reparameterizable(m: nn.Module | None) -> bool:
    return m is not None and callable(getattr(m, "reparameterize", None))


@register("dirac", order=1, summary="Dirac-parameterised convs (any module with reparameterize()) become nn.Conv2d")
def run(ctx: FoldContext, kinds: tuple[str, ...]) -> None:
    """Replace every reparameterisable module called in the graph (plan, check all, then apply)."""
    nodes = [n for n in ctx.graph.nodes if n.op == "call_module" and reparameterizable(ctx.module(n))]
    problems = [(str(n.target), _problem(ctx.module(n))) for n in nodes]
    problems = [(t, p) for t, p in problems if p]
    if problems:
        target, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SurgeryError(
            f"cannot fold the Dirac conv {target!r}{more}: {why}; the Dirac fold is exact only for stride 1, "
            f"odd kernels and 'same' padding. Leave it parameterised with --only bn,branches"
        )
    done = set()
    for n in nodes:
        target = str(n.target)
        if target in done:  # one module called twice: replaced once, both calls see it
            continue
        ctx.replace_module(target, ctx.module(n).reparameterize())
        ctx.note(n, kind="dirac")
        ctx.done("dirac", target, (), "W = diag(a) I + diag(b) W_norm")
        done.add(target)
    ctx.commit()


def _problem(m: nn.Module) -> str | None:
    check = getattr(m, "reparameterize_problem", None)
    return check() if callable(check) else None
