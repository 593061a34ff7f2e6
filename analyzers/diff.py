"""Weight differences between two models (shared-backbone-yolov3.txt, Fig. 1-4).

Where did fine-tuning change a network, and where is a natural layer to cut a shared
backbone? :func:`diff` compares every tensor that two models both have and summarises, per
layer and parameter kind, the distribution of

    d_i = |B_i - A_i| / mean_j |A_j|            (element-wise, over one tensor of model A)

i.e. the difference as a fraction of model A (the base model), as box-plot statistics:
mean, quartiles (numpy's default "linear" interpolation), whiskers at 1.5 IQR (the most
extreme values within ``q1 - 1.5 IQR`` and ``q3 + 1.5 IQR``, as matplotlib draws them) and
the number of outliers beyond the whiskers. The statistics are exact, computed in float32
without sorting (a radix histogram over the float bits; see :mod:`analyzers.diff_stats`).

**Matching** (:mod:`analyzers.diff_match`). Tensors are matched by state_dict name, and each
is reported at the index of the *layer* that owns it: for Darknet models Darknet's own layer index (``layers.N``), for
other models the index in the layer table of :func:`surgery.core.graph.layer_graph` (leaf modules
in execution order; parameters read through ``get_attr`` go to the first layer using them;
if the model cannot be traced, the order in which parameter-owning modules appear in the
state_dict). Tensors whose names appear in one model only are then paired by (layer index,
kind) when exactly one candidate of each model is left there, so models with different
module names but the same layout still compare. Tensors in both models with different
shapes, and tensors in only one model, are listed as *skipped* with both shapes; integer
buffers (``num_batches_tracked``) are not parameters and are ignored.

**Kinds.**

=================  =====================================================================
``weight``         a layer's weight (conv/linear kernel)
``bias``           a layer's bias. For Darknet models this is what Darknet calls
                   "biases": the conv bias without batch_normalize, the BatchNorm beta
                   (``bn.bias``) with it (such a conv has no bias of its own)
``bn_weight``      normalisation scale gamma (Darknet "scales")
``bn_bias``        normalisation shift beta (non-Darknet models only; Darknet reports
                   it as ``bias``, see above)
``running_mean``   BatchNorm running statistics (Darknet "rolling_mean")
``running_var``    (Darknet "rolling_variance")
other              any other tensor is reported under its own attribute name
=================  =====================================================================

"Norm" means BatchNorm/InstanceNorm (anything with running statistics or a
``_NormBase``), GroupNorm and LayerNorm.

**Zero base.** If mean |A| of a tensor is 0 (e.g. a freshly initialised bias), the relative
difference is undefined: the row has ``relative = False`` and its statistics are the
absolute differences |B - A|. Non-finite statistics (a NaN in a model) are reported as
``None`` (JSON ``null``).

**Suggested split** (:data:`analyzers.diff_report.SPLIT_RULE`, :mod:`analyzers.diff_split`): a least-squares change point on the per-layer
medians of the relative *weight* differences (kind ``weight`` with mean |A| > 0), taken in
layer order. For every candidate
position s the medians are fitted by one constant before s and another from s on; the s
with the smallest squared error wins (ties: the earliest). It is accepted only when the
later segment's mean is at least ``MIN_RISE`` times the earlier's and the fit explains
at least ``MIN_R2`` of the variance; otherwise there is no suggested split. The result
names ``first_changed`` (the index of the first layer of the high segment, the
``split.first_changed`` of the JSON) and ``share_at = first_changed - 1``: share layers
``0..share_at`` (``surgery share --at share_at``). With the cost analyzer available the
split carries the fractions of model A's params and MACs in layers ``0..share_at`` - what
every extra task model sharing the backbone saves.

**JSON** (:meth:`DiffReport.to_json`, schema in docs/JSON.md "diff"): ``{"models": [A, B],
"index_source", "split": {"first_changed", "share_at", "low_mean", "high_mean", "r2",
"savings"} | null, "rule", "layers": [one row per layer: its primary tensor's statistics],
"tensors": [one row per compared tensor], "skipped": [...]}``. ``name`` is the layer's module
name, ``param`` the tensor's state_dict key (``param_b`` too when B's differs).

**Unrelated models.** Two models with no tensor in common with equal shapes are not two
versions of one network: :func:`diff` raises a :class:`SurgeryError` saying so.

**Cost.** Per tensor a handful of vectorised passes in float32 and two work arrays reused
across tensors (no copy of a state_dict); tensors are spread over ``workers`` threads.
Two YOLOv3 checkpoints (62 M parameters each) take well under a second on two cores.
"""

from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Collection

import torch
from torch import nn

from analyzers.diff_match import Filter, check_filters, entries_of, module_of, plan_pairs
from analyzers.diff_report import DiffReport, LayerDiff
from analyzers.diff_split import cost_report_of, savings_fractions, suggest_split
from analyzers.diff_stats import _SMALL, _Scratch, relative_diff_stats
from surgery.core.errors import SurgeryError
from surgery.core.net import Net

__all__ = ["diff", "parse_layer_range"]


# ----------------------------------------------------------------------------- the analysis


def diff(
    a: Net | nn.Module,
    b: Net | nn.Module,
    *,
    layers: Collection[int] | None = None,
    kinds: Collection[str] | None = None,
    savings: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DiffReport:
    """Relative weight differences of ``b`` against the base model ``a``.

    ``layers``: only these layer indices (rows and skipped entries). ``kinds``: only these
    parameter kinds in the rows (the suggested split always uses the weights).
    ``savings``: attach the cost-model savings of the suggested split (needs
    :mod:`analyzers.cost` and a :class:`Net`). ``workers``: threads for the statistics
    (default: torch's intra-op thread count). ``progress(done, total)`` is called after each
    compared tensor.
    """
    ma, name_a = module_of(a)
    mb, name_b = module_of(b)
    ea, darknet_a, source = entries_of(ma)
    eb, darknet_b, _ = entries_of(mb)
    check_filters(ea + eb, layers, kinds)
    wanted = Filter(None if layers is None else frozenset(layers), None if kinds is None else frozenset(kinds))
    todo, skipped = plan_pairs(ea, eb, wanted)
    if not todo and layers is None and kinds is None:
        only_a = sum(s.reason == "only in A" for s in skipped)
        only_b = sum(s.reason == "only in B" for s in skipped)
        raise SurgeryError(f"{name_a} and {name_b} have no tensor in common with equal shapes ({only_a} only in A, "
                           f"{only_b} only in B, {len(skipped) - only_a - only_b} with other shapes): they are not "
                           "two versions of one network; diff compares a model with a retrained or edited copy")

    cost_job = (lambda: cost_report_of(a)) if savings and isinstance(a, Net) else None
    rows, cost_report = _compute(todo, workers, progress, cost_job)
    order = {e.key: i for i, e in enumerate(ea)}
    rows.sort(key=lambda r: (r.index, order.get(r.param, 0)))

    split = suggest_split([(r.index, r.stats.median) for r in rows if r.kind == "weight" and r.relative])
    if split is not None and cost_report is not None:
        split = replace(split, savings=savings_fractions(cost_report, split.share_at))
    rows = [r for r in rows if wanted.kind(r.kind)]  # weights were computed for the split either way
    return DiffReport(name_a, name_b, darknet_a and darknet_b, tuple(rows), tuple(skipped), split,
                      index_source=source if darknet_a == darknet_b else "mixed")


def _compute(todo, workers, progress, side_job: Callable[[], object] | None = None):
    """The rows for ``todo`` (in no particular order), and the result of ``side_job`` run
    on its own thread meanwhile (the cost analysis, which is mostly Python and overlaps
    well with the numpy work)."""
    total = len(todo)
    largest = max((e.tensor.numel() for e, _ in todo), default=0)
    workers = workers or max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    # work arrays allocated here, on the calling thread: worker threads get malloc arenas of
    # their own, and large buffers there would add to the process's memory
    free = queue.SimpleQueue()
    for _ in range(workers):
        free.put(_Scratch(largest if largest > _SMALL else 0))

    def one(pair):
        e, f = pair
        scratch = free.get()
        try:
            stats, scale, rel = relative_diff_stats(e.tensor, f.tensor, scratch)
        finally:
            free.put(scratch)
        return LayerDiff(e.index, e.layer, e.key, e.kind, tuple(e.tensor.shape), rel, scale, stats,
                         param_b=f.key if f.key != e.key else "")

    # largest first so the pool stays busy; the caller sorts the rows
    ordered = sorted(todo, key=lambda p: -p[0].tensor.numel())
    rows: list[LayerDiff] = []
    with ThreadPoolExecutor(max_workers=workers + (side_job is not None)) as pool:
        side = pool.submit(side_job) if side_job is not None else None
        if workers <= 1:
            results = map(one, ordered)
        else:
            results = _bounded_map(pool, one, ordered, workers)
        for row in results:
            rows.append(row)
            if progress:
                progress(len(rows), total)
        return rows, (side.result() if side is not None else None)


def _bounded_map(pool, fn, items, width):
    """``pool.map`` with at most ``width`` items in flight (the pool has one extra thread)."""
    from collections import deque

    it = iter(items)
    pending = deque()
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= width:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------- parsing


def parse_layer_range(text: str) -> list[int]:
    """``"0-80"``, ``"3,5,7"``, ``"0-10,74-106"`` -> sorted layer indices (inclusive ranges)."""
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise SurgeryError(f"bad layer range {text!r}; write it like 0-80 or 0-10,74-106") from None
        if a < 0 or b < a:
            raise SurgeryError(f"bad layer range {part!r} in {text!r}; write LOW-HIGH with 0 <= LOW <= HIGH")
        out.update(range(a, b + 1))
    if not out:
        raise SurgeryError(f"bad layer range {text!r}: empty")
    return sorted(out)
