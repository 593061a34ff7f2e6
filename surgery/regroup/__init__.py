"""``surgery regroup``: turn a trained network's dense spatial convolutions into filter-group
("root") convolutions, keeping as much of the trained function as possible (Deep Roots,
Ioannou et al. 2016; DESIGN.md "Root topologies").

What it does, in three steps (plan → search → apply):

1. **Selection.** By default every spatial conv (a kernel dimension > 1) with ``groups=1``
   that does not read the network input; ``layers=`` narrows it to a selector of
   :func:`surgery.core.graph.select`. The group count comes from the schedule:
   ``deep-roots`` gives ``root`` groups to the selected convs at the highest output
   resolution and halves it at each lower resolution ("stage"), never below 1 (ResNet-50
   root-8 = 8/4/2/1 in res2..res5, exactly :func:`zoo.resnet.root_groups`); ``constant`` gives
   ``root`` everywhere. A conv whose channels the count does not divide, a module called more
   than once, or one left with 1 group is listed in ``skipped`` with the reason.
2. **Search.** A grouped conv keeps the diagonal blocks ``W[out_g, in_g]``. Which channels
   share a group is free as long as the permutation is absorbed by the neighbours, so for each
   regrouped conv the balanced partition that maximises the retained energy
   ``Σ_g ‖W[out_g, in_g]‖² / ‖W‖²`` is searched (:mod:`surgery.partition`). A side is free when
   the tensor it touches (an *interface*) runs from one producer conv through per-channel ops
   (BatchNorm, activations, pooling) to consumer convs only; a residual add, a concat, a
   reshape, the network input or output fix it (the reason is reported). Two regrouped convs
   on one interface (a ResNet basic block's conv1 → conv2) are searched together as a chain.
3. **Apply.** Interface permutations go into the producer's output channels (weight rows,
   bias, its BatchNorm's parameters and running statistics), every per-channel op's
   parameters, and the consumers' input channels; the regrouped conv keeps its diagonal blocks
   in the permuted order. Everything outside the regrouped convs computes exactly what it did
   before (a network that is block-diagonal under a hidden permutation is reproduced exactly).

The structure is recorded so a checkpoint rebuilds without pickle: a replayable recipe step
``regroup`` (``{"convs": {module name: groups}}``), or for a Darknet model the cfg itself
(``groups=`` on the convolutional sections; layer indices unchanged), as ``retarget`` does.

The surgery is lossy: the report says how far the function moved on probe inputs (relative
output difference and, for classifiers, top-1 agreement with the source) and points to
``surgery heal`` to recover accuracy.

**Modules.** :mod:`~surgery.regroup.interfaces` (the interfaces of the traced graph, from the
core's channel-op registry), :mod:`~surgery.regroup.plan` (selection, schedule, free sides),
:mod:`~surgery.regroup.search` (the partition search), :mod:`~surgery.regroup.apply` (the
permutations, the grouped convs, the recipe replay), :mod:`~surgery.regroup.report` (the
report, how far it moved); this module orchestrates.
"""

from __future__ import annotations

import copy
import time

from analyzers.cost import analyze
from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError
from surgery.core.graph import is_darknet
from surgery.core.net import ArchSpec, Net, Step
from surgery.core.probe import Probe, check_shape
from surgery.regroup.apply import apply_groups, permuted_sides, regroup_structure
from surgery.regroup.interfaces import Graph
from surgery.regroup.plan import plan_sides, select_targets
from surgery.regroup.report import HEAL_NOTE, Moved, RegroupLayer, RegroupReport, RegroupSkip, measure_moved
from surgery.regroup.search import search_groups

__all__ = ["HEAL_NOTE", "PERMUTES", "SCHEDULES", "Moved", "RegroupLayer", "RegroupReport", "RegroupSkip",
           "measure_moved", "regroup", "regroup_structure"]

SCHEDULES = ("deep-roots", "constant")
PERMUTES = ("best", "none")


def regroup(net: Net, root: int, *, schedule: str = "deep-roots", layers: str | None = None,
            permute: str = "best", probes: int = 2, batch: int = 4, cost: bool = True,
            seed: int = 0, probe: Probe | None = None) -> tuple[Net, RegroupReport]:
    """Regroup ``net``'s dense spatial convs into ``root`` filter groups (see the module doc).

    ``probes`` probe batches of ``batch`` inputs measure how far the function moved (0: skip);
    ``probe`` (real images, :func:`surgery.evaluate.image_probe`) replaces them;
    ``cost=False`` skips the before/after cost analysis (faster, for tests and sweeps).
    """
    if not isinstance(net, Net):
        raise SurgeryError("regroup takes a surgery Net (surgery.core.io.load gives one)")
    net.require_editable("regroup")
    if isinstance(root, bool) or not isinstance(root, int) or root < 1:
        raise SurgeryError(f"--root {root!r}: give a positive number of groups (1, 2, 4, ..., 64)")
    if schedule not in SCHEDULES:
        raise SurgeryError(f"unknown schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    if permute not in PERMUTES:
        raise SurgeryError(f"unknown --permute {permute!r}; use best or none")
    module = net.module
    g = Graph(module)
    targets, skipped = select_targets(g, net, root, schedule, layers)
    t0 = time.perf_counter()
    search_groups(targets, plan_sides(g, targets, permute), seed)  # --permute none: every side is fixed
    search_s = time.perf_counter() - t0

    new_module = copy.deepcopy(module)
    apply_groups(new_module, g, targets)
    meta = {**dict(net.metadata), "regroup": {"root": root, "schedule": schedule, "permute": permute}}
    if is_darknet(new_module):
        how = "darknet-cfg"
        new_module.record_groups({t.index: t.groups for t in targets})  # groups= in the cfg, same indices
        stem = (net.arch.name.rsplit("/", 1)[-1] if net.arch else "model").removesuffix(".cfg")
        arch = ArchSpec("darknet", f"{stem}-root{root}.cfg", {}, cfg=new_module.cfg_text())
        result = net.evolve(new_module, None, arch=arch, metadata=meta)
    else:
        how = "replay"
        convs = {t.unit.conv_name: t.groups for t in targets}
        result = net.evolve(new_module, Step("regroup", {"convs": convs, "root": root, "schedule": schedule}),
                            metadata=meta)

    before = after = None
    lc_before, lc_after = {}, {}
    if cost:
        rb, ra = analyze(net), analyze(result)
        before, after = rb.totals, ra.totals
        lc_before, lc_after = {l.index: l for l in rb.layers}, {l.index: l for l in ra.layers}
    check_shape(probe, net.input_shape, net.source or "the model")
    moved = measure_moved(module, new_module, net.input_shape, probes=probes, batch=batch,
                          seed=seed, probe=probe) if probes > 0 else None

    rows = []
    for t in targets:
        c = t.unit.conv
        lb, la = lc_before.get(t.index), lc_after.get(t.index)
        bias = c.bias.numel() if c.bias is not None else 0
        rows.append(RegroupLayer(
            index=t.index, name=t.unit.conv_name if not g.darknet else t.unit.name, groups=t.groups,
            in_channels=c.in_channels, out_channels=c.out_channels, kernel=tuple(c.kernel_size), stage=t.stage,
            retained=t.retained, contiguous=t.contiguous, expected=1.0 / t.groups, permuted=permuted_sides(t),
            fixed=dict(t.fixed), params_before=c.weight.numel() + bias, params_after=c.weight.numel() // t.groups + bias,
            macs_before=lb.macs if lb else None, macs_after=la.macs if la else None))
    report = RegroupReport(
        model=net.source or (net.arch.describe() if net.arch else ""), root=root, schedule=schedule, permute=permute,
        how=how, layers=tuple(rows), skipped=tuple(skipped), before=before, after=after, moved=moved,
        search_s=search_s, input_shape=tuple(net.input_shape))
    return result, report


make_callable(__name__, regroup)  # surgery.regroup(...) calls regroup() (the public API)
