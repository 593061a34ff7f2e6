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

**Matching.** Tensors are matched by state_dict name, and each is reported at the index of
the *layer* that owns it: for Darknet models Darknet's own layer index (``layers.N``), for
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

**Suggested split** (:data:`SPLIT_RULE`): a least-squares change point on the per-layer
medians of the relative *weight* differences (kind ``weight`` with mean |A| > 0), taken in
layer order. For every candidate
position s the medians are fitted by one constant before s and another from s on; the s
with the smallest squared error wins (ties: the earliest). It is accepted only when the
later segment's mean is at least :data:`MIN_RISE` times the earlier's and the fit explains
at least :data:`MIN_R2` of the variance; otherwise there is no suggested split. The result
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

import math
import os
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from analyzers.diff_stats import (  # noqa: F401 (re-exported)
    _SMALL,
    WHIS,
    BoxStats,
    _Scratch,
    box_stats,
    relative_diff_stats,
)
from surgery.core.errors import SurgeryError, suggest
from surgery.core.net import Net

__all__ = [
    "BoxStats",
    "LayerDiff",
    "Skipped",
    "Split",
    "DiffReport",
    "SPLIT_RULE",
    "diff",
    "box_stats",
    "relative_diff_stats",
    "suggest_split",
    "parse_layer_range",
]

MIN_RISE = 2.0  # later segment's mean / earlier segment's mean needed to suggest a split
MIN_R2 = 0.5  # fraction of the medians' variance the two-segment fit must explain

SPLIT_RULE = (
    "least-squares change point on the per-layer medians of the relative weight differences "
    "(layer order): the position s minimising the squared error of a two-segment constant fit, "
    f"accepted when the later segment's mean is >= {MIN_RISE:g}x the earlier's and the fit explains "
    f">= {MIN_R2:.0%} of the variance; first_changed = layer s, share_at = s - 1 (share layers 0..s-1)"
)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LayerDiff:
    """One tensor present in both models with equal shapes."""

    index: int  # layer index (Darknet index for Darknet models)
    name: str  # the layer's module name, e.g. "layers.12" or "layer1.0.conv1"
    param: str  # state_dict key in model A, e.g. "layers.12.bn.bias"
    kind: str  # weight | bias | bn_weight | bn_bias | running_mean | running_var | other name
    shape: tuple[int, ...]
    relative: bool  # False when mean|A| == 0: the statistics are then absolute |B - A|
    scale: float  # mean |A|
    stats: BoxStats
    param_b: str = ""  # state_dict key in model B when it differs (index matching)

    def to_json(self) -> dict:
        s = self.stats
        out = {
            "index": self.index, "name": self.name, "param": self.param, "kind": self.kind,
            "shape": list(self.shape), "numel": s.n, "relative": self.relative, "scale": _num(self.scale),
            "mean": _num(s.mean), "q1": _num(s.q1), "median": _num(s.median), "q3": _num(s.q3),
            "whisker_low": _num(s.whisker_low), "whisker_high": _num(s.whisker_high), "outliers": s.outliers,
            "min": _num(s.min), "max": _num(s.max),
        }
        if self.param_b and self.param_b != self.param:
            out["param_b"] = self.param_b
        return out


@dataclass(frozen=True)
class Skipped:
    """A tensor not compared: shapes differ, or it exists in one model only."""

    index: int
    name: str
    param: str
    kind: str
    reason: str
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "param": self.param, "kind": self.kind,
                "reason": self.reason, "shape_a": _shape(self.shape_a), "shape_b": _shape(self.shape_b)}


@dataclass(frozen=True)
class Split:
    """The suggested split: layers ``0..share_at`` are the shared backbone."""

    first_changed: int  # index of the first layer of the high-difference segment
    share_at: int  # first_changed - 1
    low_mean: float  # mean of the per-layer medians before first_changed
    high_mean: float  # ... from first_changed on
    r2: float  # variance of the medians explained by the two-segment fit
    rule: str = SPLIT_RULE
    savings: Mapping[str, float] | None = None  # fractions of A's params/macs in layers 0..share_at

    def to_json(self) -> dict:
        return {"first_changed": self.first_changed, "share_at": self.share_at, "low_mean": _num(self.low_mean),
                "high_mean": _num(self.high_mean), "r2": _num(self.r2),
                "savings": dict(self.savings) if self.savings is not None else None}


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    darknet: bool
    layers: tuple[LayerDiff, ...]
    skipped: tuple[Skipped, ...]
    split: Split | None
    rule: str = SPLIT_RULE
    index_source: str = "darknet"  # darknet | layer_table | module_order

    @property
    def suggested_split(self) -> int | None:
        return self.split.first_changed if self.split else None

    def of_kind(self, *kinds: str) -> tuple[LayerDiff, ...]:
        return tuple(r for r in self.layers if r.kind in kinds)

    def per_layer(self) -> tuple[LayerDiff, ...]:
        """One row per layer: its primary tensor (the ``weight``, else ``bn_weight``, else the
        first compared), the tensor the split and the default table use."""
        by_layer: dict[int, list[LayerDiff]] = {}
        for r in self.layers:
            by_layer.setdefault(r.index, []).append(r)
        rank = {"weight": 0, "bn_weight": 1}
        return tuple(min(rs, key=lambda r: rank.get(r.kind, 2)) for rs in by_layer.values())

    def to_json(self) -> dict:
        counts: dict[int, int] = {}
        for r in self.layers:
            counts[r.index] = counts.get(r.index, 0) + 1
        return {
            "models": [self.a, self.b],
            "index_source": self.index_source,
            "split": self.split.to_json() if self.split else None,
            "rule": self.rule,
            "layers": [{**r.to_json(), "tensors": counts[r.index]} for r in self.per_layer()],
            "tensors": [r.to_json() for r in self.layers],
            "skipped": [s.to_json() for s in self.skipped],
        }


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _shape(s) -> list[int] | None:
    return list(s) if s is not None else None


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class _Entry:
    key: str
    index: int
    layer: str
    kind: str
    tensor: torch.Tensor = field(repr=False)


def _is_norm(owner: nn.Module | None, owner_keys: set[str]) -> bool:
    if owner is not None and isinstance(owner, _NORM_TYPES):
        return True
    return "running_mean" in owner_keys  # TorchScript and other wrappers of a BatchNorm


def _kind(attr: str, norm: bool, darknet: bool) -> str:
    if attr in ("running_mean", "running_var"):
        return attr
    if norm and attr == "weight":
        return "bn_weight"
    if norm and attr == "bias":
        return "bias" if darknet else "bn_bias"
    return attr


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Floating tensors of the state_dict (views, no copies)."""
    return {k: v for k, v in module.state_dict(keep_vars=False).items()
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())}


def _owner_indices(module: nn.Module, owners: list[str]) -> tuple[dict[str, tuple[int, str]], str]:
    """owner module name -> (layer index, layer name), and where the indices come from."""
    from surgery.core.graph import is_darknet, layer_graph

    if is_darknet(module):
        out = {}
        for o in owners:
            parts = o.split(".")
            if len(parts) >= 2 and parts[0] == "layers" and parts[1].isdigit():
                out[o] = (int(parts[1]), f"layers.{parts[1]}")
            else:
                out[o] = (-1, o)
        return out, "darknet"
    try:
        lg = layer_graph(module)
    except (SurgeryError, RuntimeError, TypeError, AttributeError):
        order = {o: i for i, o in enumerate(dict.fromkeys(owners))}
        return {o: (order[o], o) for o in owners}, "module_order"
    by_name = {l.name: (l.index, l.name) for l in lg.layers if l.kind == "module"}
    # parameters read through get_attr belong to the first layer that uses them
    for node in lg.gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner = str(node.target).rpartition(".")[0]
        users = [lg.layer_of(u) for u in node.users]
        users = [u for u in users if u is not None]
        if users and owner not in by_name:
            first = min(users, key=lambda l: l.index)
            by_name[owner] = (first.index, first.name)
    out = {}
    for o in owners:
        hit = by_name.get(o)
        probe = o
        while hit is None and probe:  # a parameter inside a leaf layer (e.g. a composite leaf)
            probe = probe.rpartition(".")[0]
            hit = by_name.get(probe)
        if hit is None:  # a container whose children are the layers
            below = [v for k, v in by_name.items() if k.startswith(o + ".") or not o]
            hit = min(below) if below else (-1, o)
        out[o] = hit
    return out, "layer_table"


def _entries(module: nn.Module) -> tuple[list[_Entry], bool, str]:
    from surgery.core.graph import is_darknet

    darknet = is_darknet(module)
    state = _state(module)
    owners = [k.rpartition(".")[0] for k in state]
    keys_by_owner: dict[str, set[str]] = {}
    for k in state:
        o, _, attr = k.rpartition(".")
        keys_by_owner.setdefault(o, set()).add(attr)
    index, source = _owner_indices(module, owners)
    entries = []
    for k, t in state.items():
        o, _, attr = k.rpartition(".")
        try:
            owner = module.get_submodule(o) if o else module
        except AttributeError:
            owner = None
        idx, lname = index[o]
        entries.append(_Entry(k, idx, lname, _kind(attr, _is_norm(owner, keys_by_owner[o]), darknet), t))
    return entries, darknet, source


def _module_of(m: Net | nn.Module) -> tuple[nn.Module, str]:
    if isinstance(m, Net):
        return m.module, m.source or type(m.module).__name__
    if isinstance(m, nn.Module):
        return m, type(m).__name__
    raise SurgeryError(f"cannot diff a {type(m).__name__}; pass a Net or an nn.Module")


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
    ma, name_a = _module_of(a)
    mb, name_b = _module_of(b)
    ea, darknet_a, source = _entries(ma)
    eb, darknet_b, _ = _entries(mb)
    _check_filters(ea + eb, layers, kinds)
    wanted = _Filter(None if layers is None else frozenset(layers), None if kinds is None else frozenset(kinds))
    todo, skipped = _plan(ea, eb, wanted)
    if not todo and layers is None and kinds is None:
        only_a = sum(s.reason == "only in A" for s in skipped)
        only_b = sum(s.reason == "only in B" for s in skipped)
        raise SurgeryError(f"{name_a} and {name_b} have no tensor in common with equal shapes ({only_a} only in A, "
                           f"{only_b} only in B, {len(skipped) - only_a - only_b} with other shapes): they are not "
                           "two versions of one network; diff compares a model with a retrained or edited copy")

    cost_job = (lambda: _cost_report(a)) if savings and isinstance(a, Net) else None
    rows, cost_report = _compute(todo, workers, progress, cost_job)
    order = {e.key: i for i, e in enumerate(ea)}
    rows.sort(key=lambda r: (r.index, order.get(r.param, 0)))

    split = suggest_split([(r.index, r.stats.median) for r in rows if r.kind == "weight" and r.relative])
    if split is not None and cost_report is not None:
        split = replace(split, savings=_fractions(cost_report, split.share_at))
    rows = [r for r in rows if wanted.kind(r.kind)]  # weights were computed for the split either way
    return DiffReport(name_a, name_b, darknet_a and darknet_b, tuple(rows), tuple(skipped), split,
                      index_source=source if darknet_a == darknet_b else "mixed")


@dataclass(frozen=True)
class _Filter:
    layers: Collection[int] | None
    kinds: Collection[str] | None

    def layer(self, i: int) -> bool:
        return self.layers is None or i in self.layers

    def kind(self, k: str) -> bool:
        return self.kinds is None or k in self.kinds

    def compute(self, e: _Entry) -> bool:
        """Weights are always computed (the split uses them), filtered out of the rows later."""
        return self.layer(e.index) and (self.kind(e.kind) or e.kind == "weight")


def _plan(ea: list[_Entry], eb: list[_Entry], wanted: _Filter) -> tuple[list, list[Skipped]]:
    """Pairs to compare (by name, then by layer index and kind), and the skipped tensors."""
    by_key_b = {e.key: e for e in eb}
    keys_a = {e.key for e in ea}
    pairs = [(e, by_key_b[e.key]) for e in ea if e.key in by_key_b]
    pairs += _pair_by_index([e for e in ea if e.key not in by_key_b], [f for f in eb if f.key not in keys_a])
    paired_a, paired_b = {e.key for e, _ in pairs}, {f.key for _, f in pairs}

    todo, skipped = [], []
    for e, f in pairs:
        sa, sb = tuple(e.tensor.shape), tuple(f.tensor.shape)
        if sa == sb:
            if wanted.compute(e):
                todo.append((e, f))
        elif wanted.layer(e.index) and wanted.kind(e.kind):
            skipped.append(Skipped(e.index, e.layer, e.key, e.kind, f"shapes differ: A {list(sa)} vs B {list(sb)}",
                                   sa, sb))
    for e in ea:
        if e.key not in paired_a and wanted.layer(e.index) and wanted.kind(e.kind):
            skipped.append(Skipped(e.index, e.layer, e.key, e.kind, "only in A", tuple(e.tensor.shape), None))
    for f in eb:
        if f.key not in paired_b and wanted.layer(f.index) and wanted.kind(f.kind):
            skipped.append(Skipped(f.index, f.layer, f.key, f.kind, "only in B", None, tuple(f.tensor.shape)))
    skipped.sort(key=lambda s: (s.index, s.param))
    return todo, skipped


def _check_filters(entries: list[_Entry], layers, kinds) -> None:
    """A filter that selects nothing is a mistake worth one clear line."""
    if layers is not None:
        have = sorted({e.index for e in entries if e.index >= 0})
        if not set(layers) & set(have):
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise SurgeryError(f"no layer with parameters among the requested layers; these models have layers {span}")
    if kinds is not None:
        present = sorted({e.kind for e in entries})
        for k in kinds:
            if k not in present:
                raise SurgeryError(f"no tensor of kind {k!r}{suggest(k, present)}; kinds here: {', '.join(present)}")


def _pair_by_index(only_a: list[_Entry], only_b: list[_Entry]) -> list[tuple[_Entry, _Entry]]:
    """Pair leftovers whose (layer index, kind) has exactly one candidate on each side."""
    def groups(es):
        g: dict[tuple[int, str], list[_Entry]] = {}
        for e in es:
            if e.index >= 0:
                g.setdefault((e.index, e.kind), []).append(e)
        return g

    ga, gb = groups(only_a), groups(only_b)
    return [(ga[k][0], gb[k][0]) for k in ga if k in gb and len(ga[k]) == 1 and len(gb[k]) == 1]


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


# ----------------------------------------------------------------------------- the split


def suggest_split(points: Iterable[tuple[int, float]]) -> Split | None:
    """The change point of :data:`SPLIT_RULE` on ``(layer index, median)`` pairs."""
    pts = sorted((int(i), float(m)) for i, m in points if math.isfinite(m))
    n = len(pts)
    if n < 2:
        return None
    y = np.array([m for _, m in pts], dtype=np.float64)
    total_ss = float(((y - y.mean()) ** 2).sum())
    if total_ss <= 0.0:
        return None
    c1 = np.cumsum(y)
    c2 = np.cumsum(y * y)
    best = None
    for s in range(1, n):  # low = y[:s], high = y[s:]
        nl, nh = s, n - s
        sl, sh = c1[s - 1], c1[-1] - c1[s - 1]
        ql, qh = c2[s - 1], c2[-1] - c2[s - 1]
        sse = (ql - sl * sl / nl) + (qh - sh * sh / nh)
        ml, mh = sl / nl, sh / nh
        if mh <= ml:
            continue
        if best is None or sse < best[0] - 1e-12 * total_ss:
            best = (sse, s, ml, mh)
    if best is None:
        return None
    sse, s, ml, mh = best
    r2 = 1.0 - max(sse, 0.0) / total_ss
    if mh < MIN_RISE * ml or r2 < MIN_R2:
        return None
    first = pts[s][0]
    return Split(first_changed=first, share_at=first - 1, low_mean=float(ml), high_mean=float(mh), r2=float(r2))


def sharing_savings(net: Net, share_at: int) -> dict[str, float] | None:
    """Fractions of ``net``'s params and MACs in layers ``0..share_at`` (cost analyzer), or
    None when :mod:`analyzers.cost` is not available or cannot count this model."""
    rep = _cost_report(net)
    return _fractions(rep, share_at) if rep is not None else None


def _cost_report(net: Net):
    try:
        from analyzers import cost
    except ImportError:
        return None
    try:
        return cost.analyze(net)
    except (SurgeryError, RuntimeError, NotImplementedError):
        return None  # savings are optional: a model the counter cannot run still diffs


def _fractions(rep, share_at: int) -> dict[str, float] | None:
    # CostReport.shared_fraction gives 0.0 for a zero total; the diff leaves such a key out
    out = {k: v for k, v in rep.shared_fraction(share_at).items() if getattr(rep.totals, k)}
    return out or None


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
