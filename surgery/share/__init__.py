"""``surgery share``: one network that runs a shared backbone once and every task's head.

Semantics (DESIGN.md, "Share at k"; Bailer & Fassold, shared-backbone-yolov3): layers
``0..k`` inclusive are the shared backbone, taken from BASE; each TASK contributes its layers
``k+1..end``; task layers that read below ``k+1`` (YOLOv3's routes 86→61 and 98→36) read
the shared layers. The combined model returns BASE's outputs followed by each task's.

**Valid cut.** A cut at ``k`` is valid when

1. ``k`` is a layer of BASE other than its last;
2. no output of BASE or of any TASK is produced at or below ``k`` (else ``k`` is *inside a
   head*: part of a head would be shared);
3. every TASK has the same layers ``0..k`` as BASE: same index, type, name and kind, the
   same parameter shapes (else "the backbones differ in width") and the same configuration
   (stride, padding, groups, the layers a Darknet route/shortcut reads, ...).

Then every edge of a task's data-flow graph (``LayerGraph.nx``) that crosses the cut — a
layer ``i <= k`` read by a layer ``j > k``, e.g. YOLOv3's 74→75, 61→86, 36→98 at k=74 — reads
a shared layer that computes what the task's own layer ``i`` computed (bit for bit when the
weights are equal, see below), which is all the combined net needs. Where the edges go is
free: a head may reach back to any shared layer, and several edges may cross the cut.

**Two representations.**

- Darknet detectors (built from a cfg or the zoo, no earlier surgery, outputs from
  yolo/region/detection layers — so the combined cfg outputs every head): the combined net is a
  Darknet cfg (:mod:`surgery.share.build_darknet`) built by :func:`zoo.darknet.build_darknet`, the
  weights copied layer by layer. Its checkpoint needs no replay (``ArchSpec("darknet")``), and
  it can be written as ``.cfg`` + ``.weights``.
- Any other traceable model (Darknet classifiers included; :mod:`surgery.share.build_fx`): a
  ``torch.fx.GraphModule`` ("SharedBackbone") whose graph is
  BASE's graph (submodules under ``base.``) followed, per task, by the task's nodes after the
  cut (submodules under ``heads.<t>.``) reading BASE's nodes where the task read its own
  layers ``0..k``. Recorded as the replayable step ``share`` whose arguments hold each task's
  arch spec and recipe, so loading rebuilds it structurally.

**Checks.** Each task's layers ``0..k`` are compared with BASE's. Equal: every head must
reproduce its source model on probe inputs (max relative difference ≤ ``rtol``). Different
(a task trained end to end): :class:`DivergedError` with the per-layer relative weight
differences, unless ``allow_diverged`` — then the heads are reported with how far they moved.

**Modules.** :mod:`~surgery.share.plan` (cut checks, layer equality), :mod:`~surgery.share.build_fx`
and :mod:`~surgery.share.build_darknet` (the two representations), :mod:`~surgery.share.report`
(the reports); this module orchestrates and checks the heads.

**Savings** (per extra task, DESIGN.md): the fraction of BASE's params and MACs in layers
``0..k`` (:func:`analyzers.cost.analyze` ``.upto(k)`` over its totals).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch
from torch import nn

from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError
from surgery.core.safety import check_finite_nonneg
from surgery.core.graph import layer_graph
from surgery.core.net import ArchSpec, Net
from surgery.core.probe import Probe, check_shape, probe_json
from surgery.core.verify import compare
from surgery.share.build_darknet import build_combined, combined_blocks, darknet_eligible
from surgery.share.build_fx import build_shared, share_step
from surgery.share.plan import compare_layers, plan_cut
from surgery.share.report import (Cut, DivergedError, Fraction, Head, LayerDiff, Pair, ShareReport, SweepReport,
                                  SweepRow)

__all__ = ["DEFAULT_RTOL", "Cut", "DivergedError", "Fraction", "Head", "LayerDiff", "Pair", "ShareReport",
           "SweepReport", "SweepRow", "build_shared", "combined_blocks", "compare_layers", "darknet_eligible",
           "plan_cut", "share", "sweep"]

DEFAULT_RTOL = 1e-5
# Probe inputs for the head check: batch 1, two draws (YOLOv3-416 costs ~1 s per image on CPU).
PROBES, PROBE_BATCH = 2, 1


class _Memo(nn.Module):
    """Runs the combined model once per probe input although every head is compared against
    it (verify.compare draws the same probes for each head)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self._seen: list[tuple[torch.Tensor, object]] = []

    def forward(self, x):
        for seen, y in self._seen:
            if seen.shape == x.shape and seen.dtype == x.dtype and torch.equal(seen, x):
                return y
        y = self.module(x)
        self._seen.append((x.clone(), y))
        return y


def share(
    base: Net,
    tasks: Sequence[Net],
    at: int | str,
    *,
    allow_diverged: bool = False,
    rtol: float = DEFAULT_RTOL,
    darknet: bool | None = None,
    verify: bool = True,
    probe: Probe | None = None,
) -> tuple[Net, ShareReport]:
    """Combine ``base`` and ``tasks`` at layer ``at`` (index or name). ``darknet``: force
    (True) or refuse (False) the Darknet representation; default: Darknet when every model is
    one. ``probe``: the inputs every head is checked on (default: seeded random normal; real
    images with ``--data``). Never mutates its inputs."""
    rtol = check_finite_nonneg(rtol, "rtol")  # -1 or nan would pass or fail every head
    if not tasks:
        raise SurgeryError("share needs at least one TASK model besides BASE")
    for n in (base, *tasks):
        n.require_editable("share")
    cut = plan_cut(base, tasks, at)
    k = cut.at

    heads = [Head(base.source, 0, True, 0.0, 0.0)]
    for t in tasks:
        equal, diffs = compare_layers(base, t, k)
        heads.append(Head(t.source, 0, equal, 0.0, 0.0, diffs))
    diverged = [h for h in heads if not h.layers_equal]
    if diverged and not allow_diverged:
        h = diverged[0]
        worst = max(h.diverged_layers, key=lambda d: d.weight_rel)
        raise DivergedError(
            f"{h.model}: {len(h.diverged_layers)} of its layers 0..{k} differ from {base.source}'s (largest median "
            f"|Δw|/mean|w| {worst.weight_rel:.3g} at layer {worst.index}); a model trained end to end does not fit "
            f"the shared backbone — retrain it from layer {k + 1} (surgery retarget), or allow diverged backbones "
            f"(--allow-diverged) to share anyway and report how far each head moves", heads)

    eligible = darknet_eligible([base, *tasks])
    use_darknet = eligible if darknet is None else darknet
    if use_darknet and not eligible:
        raise SurgeryError("the Darknet representation needs Darknet detectors (a .cfg or zoo:yolov3..., outputs "
                           "from yolo/region/detection layers) without earlier surgeries; this share is a torch.fx "
                           "graph (write it as a .pt checkpoint or ONNX)")
    sources = {}
    for n in (base, *tasks):
        sources.update(dict(n.metadata.get("sources", {})))
    meta = {"share": {"at": k, "base": base.source, "tasks": [t.source for t in tasks], "outputs": list(cut.outputs)},
            "sources": sources}
    if use_darknet:
        module, text = build_combined(base, tasks, k)
        arch = ArchSpec("darknet", f"shared-k{k}.cfg", {}, cfg=text)
        result = base.evolve(module, None, arch=arch, format="darknet",  # recipe is empty here
                             metadata={**dict(base.metadata), **meta})
    else:
        module = build_shared(copy.deepcopy(base.module), [copy.deepcopy(t.module) for t in tasks], k)
        result = base.evolve(module, share_step(tasks, k), metadata={**dict(base.metadata), **meta})
    module.eval()

    check_shape(probe, base.input_shape, base.source or "BASE")
    heads = _check_heads(base, tasks, result, heads, cut.outputs, rtol, verify, probe)
    report = _report(base, tasks, result, cut, heads, rtol, "darknet" if use_darknet else "fx")
    if verify:
        unit = result.batch_unit
        images = probe.images if probe is not None else PROBES * (-(-PROBE_BATCH // unit) * unit)
        report = dataclasses.replace(report, probe=probe_json(probe, images))
    return result, report


def _check_heads(base, tasks, result, heads, sizes, rtol, verify, probe=None) -> list[Head]:
    """Each head of ``result`` against its source model on the same probe inputs."""
    memo = _Memo(result.module)
    out, start = [], 0
    for n, h, size in zip((base, *tasks), heads, sizes):
        stop = start + size
        if verify:
            rep = compare(n.module, memo, base.input_shape, probes=PROBES, batch=PROBE_BATCH,
                          select=lambda outs, a=start, b=stop: outs[a:b], probe=probe)
            h = Head(h.model, size, h.layers_equal, rep.max_abs, rep.max_rel, h.diverged_layers, rep.top1_agreement)
            if h.layers_equal and not rep.ok(rtol):
                raise SurgeryError(
                    f"share: the combined model's head for {h.model} differs from it by {rep.max_rel:.3g} (relative; "
                    f"max abs {rep.max_abs:.3g}) although the layers are equal; nothing written (a bug: please report)")
        else:
            h = Head(h.model, size, h.layers_equal, float("nan"), float("nan"), h.diverged_layers)
        out.append(h)
        start = stop
    return out


def _cost(net: Net):
    from analyzers.cost import analyze

    return analyze(net)


def _totals(rep) -> tuple[int, int]:
    return int(rep.totals.params), int(rep.totals.macs)


def _report(base, tasks, result, cut, heads, rtol, representation) -> ShareReport:
    base_cost = _cost(base)
    bp, bm = _totals(base_cost)
    up = base_cost.upto(cut.at)
    frac = base_cost.shared_fraction(cut.at)
    sep_p, sep_m = bp, bm
    for t in tasks:
        tp, tm = _totals(_cost(t))
        sep_p, sep_m = sep_p + tp, sep_m + tm
    cp, cm = _totals(_cost(result))
    return ShareReport(
        at=cut.at,
        at_name=cut.name,
        representation=representation,
        layers=len(layer_graph(result.module).layers),
        heads=tuple(heads),
        params=Pair(cp, sep_p),
        macs=Pair(cm, sep_m),
        saved_fraction=Fraction(frac["params"], frac["macs"]),
        shared={"params": int(up.params), "macs": int(up.macs)},
        cut_edges=cut.edges,
        rtol=rtol,
        input_shape=tuple(base.input_shape),
    )


def sweep(base: Net, tasks: Sequence[Net], ats: Sequence[int | str]) -> SweepReport:
    """The savings per extra task at each cut in ``ats`` (each checked against every task);
    nothing is built."""
    rep = _cost(base)
    bp, bm = _totals(rep)
    rows = []
    for at in ats:
        cut = plan_cut(base, tasks, at)
        up, frac = rep.upto(cut.at), rep.shared_fraction(cut.at)
        rows.append(SweepRow(cut.at, cut.name, Fraction(frac["params"], frac["macs"]),
                             {"params": int(up.params), "macs": int(up.macs)}))
    return SweepReport((base.source, *(t.source for t in tasks)), {"params": bp, "macs": bm}, tuple(rows))


make_callable(__name__, share)  # surgery.share(...) calls share() (the public API)
