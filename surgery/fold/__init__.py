"""``surgery fold``: fold Dirac parameterisation, BatchNorm and linear branches into plain convs.

Three folds (registered in :mod:`surgery.fold.registry`, one module each), always applied in
this order (each is optional, ``only=``):

- ``dirac`` (:mod:`surgery.fold.dirac`): every module implementing ``reparameterize()`` -- the
  Dirac-parameterised conv (``W_hat = diag(a) I + diag(b) W_norm``, thesis §5.3) -- becomes the
  ``nn.Conv2d`` it returns. Refused, with the layer named, unless exact (stride 1, odd kernels,
  "same" padding).
- ``bn`` (:mod:`surgery.fold.bn`): every BatchNorm whose single input is a conv or linear
  module whose only user is that BatchNorm is folded into it (the module's own eps and running
  statistics, ``torch.nn.utils.fusion``'s maths). The pairing follows the traced data flow,
  never module registration order; a conv whose output has other users is skipped and reported.
  A network that implements ``fuse()`` folds itself: a Darknet network becomes the same cfg
  with ``batch_normalize=0`` and the BatchNorm folded into each conv's weights and bias (its
  own eps: :data:`zoo.darknet.BN_EPS`), so it can still be written as ``.cfg`` + ``.weights``.
- ``branches`` (:mod:`surgery.fold.branches`): a sum of parallel branches that read the same
  tensor -- convs, an eval BatchNorm, the identity -- becomes one conv (smaller kernels are
  zero-padded and centred, the identity is a Dirac delta, biases are summed).

Afterwards ``nn.Identity`` modules are dropped. Folding is eval semantics only. The result is
a ``torch.fx.GraphModule`` whose submodules keep the qualified names of the modules they
replace (a BN folded into ``group0.block0.conv`` leaves ``group0.block0.conv.{weight,bias}``),
so that the structural replay of a checkpoint (the same fold on the freshly built arch)
rebuilds the same state_dict keys. A self-fused Darknet network needs no replay: its
checkpoint carries the new cfg.

Before the result is returned, :func:`fold` compares it with the original on probe inputs
(:func:`surgery.core.verify.compare`) and raises :class:`SurgeryError` if the maximum relative
difference exceeds ``rtol``. A model with nothing to fold gives a report whose ``folds`` is
empty and whose ``nothing_to_fold`` says why; the caller writes nothing.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import fx, nn

from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError, suggest
from surgery.core.safety import check_finite_nonneg
from surgery.core.graph import is_darknet, trace
from surgery.core.net import ArchSpec, Net, Step, count_params
from surgery.core.recipe import replayable
from surgery.core.probe import Probe, check_shape, probe_json
from surgery.core.verify import VerifyReport, compare
from surgery.fold import bn as _bn, branches as _branches, dirac as _dirac  # noqa: F401  (registers the kinds)
from surgery.fold.context import FoldAction, FoldContext, FoldSkip, drop_identities, prune_empty
from surgery.fold.registry import kinds as _registered

KINDS = tuple(k.name for k in _registered())  # the order the folds run in: dirac, bn, branches
DEFAULT_RTOL = 1e-5
# Modules that only group others; never counted as layers.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, fx.GraphModule)

__all__ = ["KINDS", "DEFAULT_RTOL", "FoldAction", "FoldSkip", "FoldReport", "fold", "fold_module", "module_counts",
           "check_kinds"]


@dataclass(frozen=True)
class FoldReport:
    model: str
    only: tuple[str, ...]
    folds: tuple[FoldAction, ...]
    skips: tuple[FoldSkip, ...]
    modules_before: Mapping[str, int]  # leaf module type -> count
    modules_after: Mapping[str, int]
    params_before: int
    params_after: int
    verify: VerifyReport | None  # None when verify=False or nothing was folded
    rtol: float
    representation: str = "fx"  # "fx" (a GraphModule replayed from the recipe) | "darknet" (a new cfg)
    nothing_to_fold: str | None = None  # why nothing changed; None when something was folded
    output: str | None = None  # set by the caller that writes the model
    probe: Mapping | None = None  # what verify ran on (surgery.core.probe.probe_json); None without verify

    @property
    def fold_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.folds))

    def to_json(self) -> dict:
        v = self.verify
        return {
            "model": self.model,
            "output": self.output,
            "only": list(self.only),
            "representation": self.representation,
            "nothing_to_fold": self.nothing_to_fold,
            "fold_counts": self.fold_counts,
            "folds": [vars(f) | {"merged": list(f.merged)} for f in self.folds],
            "skips": [vars(s) for s in self.skips],
            "modules_before": dict(self.modules_before),
            "modules_after": dict(self.modules_after),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "verify": None if v is None else {"max_abs": v.max_abs, "max_rel": v.max_rel, "probes": v.probes,
                                              "batch": v.batch, "dtype": v.dtype, "rtol": self.rtol},
            "probe": None if self.probe is None else dict(self.probe),
        }


# ------------------------------------------------------------------ public API


def check_kinds(only: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"bn"`` or ``["bn", "dirac"]`` -> ``("dirac", "bn")`` (run order); checks the names."""
    if only is None:
        return KINDS
    items = [only] if isinstance(only, str) else list(only)
    if not items:
        raise SurgeryError(f"--only is empty; choose from {','.join(KINDS)}")
    for p in items:
        if p not in KINDS:
            raise SurgeryError(f"unknown fold {p!r}{suggest(p, KINDS)}; choose from {','.join(KINDS)}")
    return tuple(k for k in KINDS if k in items)


def fold(
    net: Net,
    *,
    only: str | Iterable[str] | None = KINDS,  # one kind, or several
    dtype: torch.dtype = torch.float32,
    rtol: float = DEFAULT_RTOL,
    verify: bool = True,
    probe: Probe | None = None,
) -> tuple[Net, FoldReport]:
    """Fold ``net`` (never mutated); verify on probe inputs in ``dtype`` (seeded random normal,
    or ``probe``: real images from ``--data``); return the new Net.

    Nothing to fold: the input Net itself and a report whose ``nothing_to_fold`` says why."""
    net.require_editable("fold")
    rtol = check_finite_nonneg(rtol, "rtol")
    kinds = check_kinds(only)
    darknet = "bn" in kinds and not net.recipe and _bn.self_fusing(net.module)
    if darknet:
        module, folds, skips = _bn.fuse_network(net.module)
    else:
        module, folds, skips = fold_module(net.module, only=kinds)
    why = None if any(f.kind != "identity" for f in folds) else _why_nothing(net, kinds, skips)
    report_v = None
    if verify and why is None:
        check_shape(probe, net.input_shape, net.source or "the model")
        report_v = compare(net.module, module, net.input_shape, dtype=dtype, probe=probe)
        if not report_v.ok(rtol):
            raise SurgeryError(
                f"fold of {net.source or 'the model'} changed its outputs: max relative difference "
                f"{report_v.max_rel:.3g} > {rtol:g} (max abs {report_v.max_abs:.3g}, {report_v.dtype}); nothing written. "
                f"Try --dtype float64 to tell rounding from a real mismatch, or --only to leave a fold out"
            )
    report = FoldReport(
        model=net.source,
        only=kinds,
        folds=tuple(folds),
        skips=tuple(skips),
        modules_before=module_counts(net.module),
        modules_after=module_counts(module),
        params_before=count_params(net.module),
        params_after=count_params(module),
        verify=report_v,
        rtol=rtol,
        representation="darknet" if darknet else "fx",
        nothing_to_fold=why,
        probe=probe_json(probe, report_v.probes * report_v.batch) if report_v is not None else None,
    )
    if why is not None:
        return net, report
    if darknet:
        stem = Path(net.arch.name).stem if net.arch.kind == "darknet" else net.arch.name
        arch = ArchSpec("darknet", f"{stem}-folded.cfg", {}, cfg=module.cfg_text())
        meta = {**dict(net.metadata), "fold": {"from": net.source, "only": list(kinds)}}
        return net.evolve(module, None, arch=arch, format="darknet", metadata=meta), report
    return net.evolve(module, Step("fold", {"only": list(kinds)})), report


def _why_nothing(net: Net, kinds: tuple[str, ...], skips: list[FoldSkip]) -> str:
    if skips:
        s = skips[0]
        more = f" (and {len(skips) - 1} more)" if len(skips) > 1 else ""
        return f"every candidate was skipped: {s.target}: {s.reason}{more}"
    if is_darknet(net.module) and net.recipe and "bn" in kinds:
        return ("a Darknet network with earlier surgeries in its recipe is folded only as a cfg; fold it before "
                "the other surgeries")
    what = {"dirac": "no Dirac-parameterised conv (no module with reparameterize())",
            "bn": "no BatchNorm after a conv or linear", "branches": "no parallel conv branches summed"}
    return f"{net.source or 'the model'} has " + ", ".join(what[k] for k in kinds)


@torch.no_grad()
def fold_module(module: nn.Module, *, only: Iterable[str] = KINDS) -> tuple[fx.GraphModule, list, list]:
    """The folds on a copy of ``module``: (folded GraphModule in eval mode, actions, skips).

    Decisions depend only on structure (module types, attributes, data flow), never on
    values, so running this on a freshly built architecture rebuilds the same modules.
    """
    kinds = check_kinds(only)
    gm = trace(copy.deepcopy(module))
    ctx = FoldContext(gm)
    for kind in _registered():
        if kind.name in kinds:
            kind.run(ctx, kinds)
    drop_identities(ctx)
    gm.delete_all_unused_submodules()
    prune_empty(gm)
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
    return fold_module(module, only=check_kinds(args.get("only", KINDS)))[0]


make_callable(__name__, fold)  # surgery.fold(...) calls fold() (the public API)
