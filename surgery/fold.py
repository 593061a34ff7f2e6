"""``surgery fold``: fold Dirac parameterisation, BatchNorm and linear branches into plain convs.

Three folds, always applied in this order (each is optional, ``only=``):

- ``dirac`` (:mod:`surgery.fold_dirac`): every Dirac-parameterised conv
  (``W_hat = diag(a) I + diag(b) W_norm``, thesis §5.3) becomes an ``nn.Conv2d`` holding
  ``W_hat``. Refused, with the layer named, unless stride 1, odd kernels and "same" padding.
- ``bn`` (:mod:`surgery.fold_bn`): every BatchNorm whose single input is a conv or linear
  module whose only user is that BatchNorm is folded into it (the module's own eps and running
  statistics, ``torch.nn.utils.fusion``'s maths). The pairing follows the traced data flow,
  never module registration order; a conv whose output has other users is skipped and reported.
- ``branches`` (:mod:`surgery.fold_branches`): a sum of parallel branches that read the same
  tensor -- convs, an eval BatchNorm, the identity -- becomes one conv (smaller kernels are
  zero-padded and centred, the identity is a Dirac delta, biases are summed).

Afterwards ``nn.Identity`` modules are dropped. Folding is eval semantics only. The result is
a ``torch.fx.GraphModule`` whose submodules keep the qualified names of the modules they
replace (a BN folded into ``group0.block0.conv`` leaves ``group0.block0.conv.{weight,bias}``),
so that the structural replay of a checkpoint (the same fold on the freshly built arch)
rebuilds the same state_dict keys. Every graph edit ends in ``graph.lint()`` and
``gm.recompile()``; per-node data lives in ``node.meta["surgery.fold"]``.

Before the result is returned, :func:`fold` compares it with the original on probe inputs
(:func:`surgery.verify.compare`) and raises :class:`SurgeryError` if the maximum relative
difference exceeds ``rtol``.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import fx, nn

from surgery.errors import SurgeryError, suggest
from surgery.graph import SurgeryTracer
from surgery.net import Net, Step, count_params
from surgery.recipe import replayable
from surgery.verify import VerifyReport, compare

KINDS = ("dirac", "bn", "branches")  # the order the folds run in
DEFAULT_RTOL = 1e-5
# Modules that only group others; never counted as layers.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, fx.GraphModule)


@dataclass(frozen=True)
class FoldAction:
    """One fold done: ``target`` holds the result; ``merged`` were folded into it and removed."""

    kind: str  # "dirac" | "bn" | "branches" | "identity"
    target: str
    merged: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class FoldSkip:
    """A candidate left as it was, and why."""

    kind: str
    target: str
    reason: str


@dataclass(frozen=True)
class FoldReport:
    source: str
    only: tuple[str, ...]
    folds: tuple[FoldAction, ...]
    skips: tuple[FoldSkip, ...]
    modules_before: Mapping[str, int]  # leaf module type -> count
    modules_after: Mapping[str, int]
    params_before: int
    params_after: int
    verify: VerifyReport | None  # None when verify=False
    rtol: float

    @property
    def fold_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.folds))


# ------------------------------------------------------------------ public API


def parse_only(only: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"bn,dirac"`` or ``["bn", "dirac"]`` -> ``("dirac", "bn")`` (run order); checks names."""
    if only is None:
        return KINDS
    items = [p.strip() for p in (only.split(",") if isinstance(only, str) else only)]
    items = [p for p in items if p]
    if not items:
        raise SurgeryError(f"--only is empty; choose from {','.join(KINDS)}")
    for p in items:
        if p not in KINDS:
            raise SurgeryError(f"unknown fold {p!r}{suggest(p, KINDS)}; choose from {','.join(KINDS)}")
    return tuple(k for k in KINDS if k in items)


def fold(
    net: Net,
    *,
    only: str | Iterable[str] | None = KINDS,
    dtype: torch.dtype = torch.float32,
    rtol: float = DEFAULT_RTOL,
    verify: bool = True,
) -> tuple[Net, FoldReport]:
    """Fold ``net`` (never mutated); verify on probe inputs in ``dtype``; return the new Net."""
    net.require_editable("fold")
    kinds = parse_only(only)
    module, folds, skips = fold_module(net.module, only=kinds)
    report_v = None
    if verify:
        report_v = compare(net.module, module, net.input_shape, dtype=dtype)
        if not report_v.ok(rtol):
            raise SurgeryError(
                f"fold of {net.source or 'the model'} changed its outputs: max relative difference "
                f"{report_v.max_rel:.3g} > {rtol:g} (max abs {report_v.max_abs:.3g}, {report_v.dtype}); nothing written. "
                f"Try --dtype float64 to tell rounding from a real mismatch, or --only to leave a fold out"
            )
    report = FoldReport(
        source=net.source,
        only=kinds,
        folds=tuple(folds),
        skips=tuple(skips),
        modules_before=module_counts(net.module),
        modules_after=module_counts(module),
        params_before=count_params(net.module),
        params_after=count_params(module),
        verify=report_v,
        rtol=rtol,
    )
    return net.evolve(module, Step("fold", {"only": list(kinds)})), report


@torch.no_grad()
def fold_module(module: nn.Module, *, only: Iterable[str] = KINDS) -> tuple[fx.GraphModule, list, list]:
    """The folds on a copy of ``module``: (folded GraphModule in eval mode, actions, skips).

    Decisions depend only on structure (module types, attributes, data flow), never on
    values, so running this on a freshly built architecture rebuilds the same modules.
    """
    from surgery import fold_bn, fold_branches, fold_dirac

    kinds = parse_only(only)
    gm = _trace(copy.deepcopy(module))
    ctx = FoldContext(gm)
    if "dirac" in kinds:
        fold_dirac.run(ctx)
    if "bn" in kinds:
        fold_bn.run(ctx, into_dirac="dirac" not in kinds)
    if "branches" in kinds:
        fold_branches.run(ctx)
    _drop_identities(ctx)
    gm.delete_all_unused_submodules()
    _prune_empty(gm)
    gm.graph.lint()
    gm.recompile()
    gm.eval()
    gone = {m for a in ctx.folds for m in a.merged}
    skips = [s for s in ctx.skips if s.target not in gone]
    return gm, ctx.folds, skips


def module_counts(module: nn.Module) -> dict[str, int]:
    """Leaf module types (containers excluded) -> count, in first-seen order."""
    counts: Counter = Counter()
    for m in module.modules():
        if isinstance(m, _CONTAINERS) or type(m) is nn.Module or next(m.children(), None) is not None:
            continue
        counts[type(m).__name__] += 1
    return dict(counts)


@replayable("fold")
def _replay(module: nn.Module, args: Mapping) -> nn.Module:
    """Structural replay: the same folds on the freshly built module (values are loaded after)."""
    return fold_module(module, only=parse_only(args.get("only", KINDS)))[0]


# ------------------------------------------------------------------ graph plumbing


class FoldTracer(SurgeryTracer):
    """SurgeryTracer that also keeps Dirac convs whole (they are the unit the dirac fold replaces)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from surgery.fold_dirac import is_dirac_conv

        return is_dirac_conv(m) or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module) -> fx.GraphModule:
    try:
        graph = FoldTracer().trace(module)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError...
        first = str(e).splitlines()[0] if str(e) else ""
        raise SurgeryError(
            f"cannot fold {type(module).__name__}: torch.fx cannot trace it ({type(e).__name__}: {first}); "
            "data-dependent control flow in forward() is not supported"
        ) from None
    return fx.GraphModule(module, graph, class_name=type(module).__name__)


@dataclass
class FoldContext:
    """A GraphModule being folded, with the record of what was done and skipped."""

    gm: fx.GraphModule
    folds: list[FoldAction] = field(default_factory=list)
    skips: list[FoldSkip] = field(default_factory=list)

    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def module(self, node) -> nn.Module | None:
        if isinstance(node, fx.Node) and node.op == "call_module":
            return self.gm.get_submodule(str(node.target))
        return None

    def references(self, target: str) -> int:
        """How many graph nodes call ``target`` or read one of its attributes."""
        n = 0
        for node in self.graph.nodes:
            t = str(node.target)
            if (node.op == "call_module" and t == target) or (node.op == "get_attr" and t.startswith(target + ".")):
                n += 1
        return n

    def replace_module(self, target: str, new: nn.Module) -> None:
        """Install ``new`` under ``target`` (same qualified name, same position)."""
        if not self.gm.add_submodule(target, new):
            raise RuntimeError(f"fold: cannot install a module at {target!r}")

    def remove_node(self, node: fx.Node) -> None:
        """Erase a call_module node that has no users left, and its module if nothing else uses it."""
        target = str(node.target) if node.op == "call_module" else None
        self.graph.erase_node(node)
        if target is not None and self.references(target) == 0:
            self.gm.delete_submodule(target)

    def note(self, node: fx.Node, **data) -> None:
        node.meta.setdefault("surgery.fold", []).append(data)

    def done(self, kind: str, target: str, merged: Iterable[str] = (), detail: str = "") -> None:
        self.folds.append(FoldAction(kind, target, tuple(merged), detail))

    def skip(self, kind: str, target: str, reason: str) -> None:
        self.skips.append(FoldSkip(kind, target, reason))

    def commit(self) -> None:
        self.graph.lint()
        self.gm.recompile()


def _drop_identities(ctx: FoldContext) -> None:
    for node in list(ctx.graph.nodes):
        if isinstance(ctx.module(node), nn.Identity) and len(node.args) == 1 and not node.kwargs:
            src = node.args[0]
            node.replace_all_uses_with(src)
            target = str(node.target)
            ctx.remove_node(node)
            ctx.done("identity", target, (target,), "nn.Identity removed")
    ctx.commit()


def _prune_empty(gm: nn.Module) -> None:
    """Delete plain containers left with no children, parameters or buffers."""
    changed = True
    while changed:
        changed = False
        for name, m in list(gm.named_modules()):
            if not name or next(m.children(), None) is not None or m._parameters or m._buffers:
                continue
            if type(m) in (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict):
                parent, _, leaf = name.rpartition(".")
                delattr(gm.get_submodule(parent) if parent else gm, leaf)
                changed = True
