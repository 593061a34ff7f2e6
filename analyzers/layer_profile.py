"""Where the milliseconds go: measured time per layer and per operator kind, beside MACs and bytes.

The ShuffleNet v2 thesis (§3.1.1, Table 3.1) splits inference time into Conv / Data / Element-wise /
Shuffle / Other and finds element-wise ops taking 10–23 % of the time for a negligible share of
the FLOPs. :func:`profile_layers` measures that split for any model, per layer of the layer table
(the indices and names of ``surgery layers``) and per operator kind, with the profilers made for
it — a layer is never timed alone, out of context:

- **torch** (eager): the fx layer graph (:func:`surgery.core.graph.layer_graph`) gets a
  ``record_function`` range around every layer node (inserted into the graph, so no Python
  interpreter runs between layers); whole forward passes run under ``torch.profiler``. A
  layer's time is its range (on CUDA: the kernel time launched inside it); its time is split
  between kinds by the aten ops directly inside it (a composite op such as ``conv2d`` is
  classified by what it runs).
- **onnxruntime**: every layer is wrapped in a module named ``surgery_layer_<index>`` before the
  ONNX export (TorchScript exporter: every ONNX node and value name carries that scope), the
  session runs with ONNX Runtime's own profiler on, and each node of the *optimized* graph it
  reports is mapped back to a layer by that scope (its name, else its outputs', else its
  inputs'). Fusion is real: a Conv+BatchNorm+ReLU kernel is the conv layer's time and the
  fused layers show none of their own (noted). Layout reorders ONNX Runtime inserts count as
  data movement of the layer they serve; a node with no layer at all is listed as
  ``(runtime)``.

Kinds: :mod:`analyzers.layer_kinds`; the profilers' side: :mod:`analyzers.layer_measure`.

Units: ``*_ms`` milliseconds per forward pass of the batch (median over runs, p10/p90 its
spread); ``share``: of the sum of per-layer times (the shares add up to 1); ``macs``,
``bytes`` of the timed pass (the whole batch), layer-boundary bytes as in ``surgery layers``
(per kind: each op's own, unfused traffic); ``gmacs_per_s``, ``gbytes_per_s``: achieved rates;
``roofline_ms``: the layer's roofline floor (:mod:`analyzers.roofline`). ``excess`` = share of
time / the larger of the shares of MACs and bytes; a layer with at least
:data:`FLAG_MIN_SHARE` of the time and an excess of :data:`FLAG_RATIO` or more is flagged.

Three whole-model figures state the profiler's cost: ``model_ms`` (the forward timed without
any profiler, :mod:`analyzers.latency`), ``profiled_ms`` (the same forward under the profiler)
and ``layers_sum_ms`` (the sum of per-layer medians); ``overhead_ms = profiled_ms - model_ms``
is what profiling added, ``unattributed_ms = profiled_ms - layers_sum_ms`` the time between
layers (Python and plumbing in eager, session overhead in ONNX Runtime).
"""

from __future__ import annotations

import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from analyzers import latency as lat
from analyzers.latency import DTYPES, TimingConfig, Unavailable
from analyzers.layer_kinds import KINDS, kind_of_category, shuffle_layers
from analyzers.layer_measure import measure_ort, measure_torch
from surgery.core.errors import SurgeryError, first_line
from surgery.core.graph import layer_graph
from surgery.core.net import Net

FLAG_RATIO = 2.0  # time share at least this many times the MAC and the byte share ...
FLAG_MIN_SHARE = 0.005  # ... for a layer with at least 0.5 % of the time (tiny layers are noise)
BY = ("layer", "kind")


@dataclass(frozen=True)
class LayerTime:
    index: int | None  # None: the (runtime) row of nodes in no layer
    name: str
    type: str
    kind: str  # the layer's main kind (most of its time; by its ops when it took none)
    median_ms: float
    p10_ms: float
    p90_ms: float
    share: float  # of the sum of per-layer times
    macs: int
    bytes: int
    macs_share: float
    bytes_share: float
    gmacs_per_s: float | None
    gbytes_per_s: float | None
    roofline_ms: float | None
    roofline_pct: float | None  # 100 × roofline_ms / median_ms
    excess: float | None  # share / max(macs_share, bytes_share); None when both are 0
    flag: str | None  # why the layer is slow for its cost, or None
    note: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class KindTime:
    kind: str
    time_ms: float  # sum over layers of their median time spent in this kind
    share: float
    macs: int
    macs_share: float
    bytes: int  # each op's own (unfused) traffic
    bytes_share: float
    ops: int  # counted ops of this kind (PyTorch model)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LayerProfileReport:
    model: str
    runtime: str
    device: str
    batch: int
    dtype: str
    threads: int | None
    runs: int  # profiled forward passes
    model_ms: float  # whole forward without a profiler (median)
    model_p10_ms: float
    model_p90_ms: float
    profiled_ms: float  # whole forward under the profiler (median)
    layers_sum_ms: float  # sum of per-layer medians
    layers: tuple[LayerTime, ...]
    kinds: tuple[KindTime, ...]
    device_info: dict
    roofline_estimate: bool | None = None
    roofline_error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def overhead_ms(self) -> float:
        """What the profiler added to a forward pass."""
        return self.profiled_ms - self.model_ms

    @property
    def unattributed_ms(self) -> float:
        """Time of a profiled forward outside every layer range."""
        return self.profiled_ms - self.layers_sum_ms

    @property
    def flagged(self) -> tuple[LayerTime, ...]:
        return tuple(l for l in self.layers if l.flag)

    def top(self, n: int | None = None) -> tuple[LayerTime, ...]:
        """Layers by time, slowest first (``n`` of them; all when None)."""
        ranked = sorted(self.layers, key=lambda l: (-l.median_ms, l.index if l.index is not None else -1))
        return tuple(ranked if n is None else ranked[:n])

    def kind(self, name: str) -> KindTime:
        return next(k for k in self.kinds if k.kind == name)

    def to_json(self, top: int | None = None) -> dict:
        layers = self.layers if top is None else self.top(top)
        return {
            "model": self.model, "runtime": self.runtime, "device": self.device, "batch": self.batch,
            "dtype": self.dtype, "threads": self.threads, "runs": self.runs,
            "model_ms": self.model_ms, "model_p10_ms": self.model_p10_ms, "model_p90_ms": self.model_p90_ms,
            "profiled_ms": self.profiled_ms, "layers_sum_ms": self.layers_sum_ms, "overhead_ms": self.overhead_ms,
            "unattributed_ms": self.unattributed_ms,
            "totals": {"macs": sum(l.macs for l in self.layers), "bytes": sum(l.bytes for l in self.layers),
                       "roofline_ms": (sum(l.roofline_ms for l in self.layers if l.roofline_ms is not None)
                                       if self.roofline_error is None else None)},
            "layers": [l.to_json() for l in layers], "kinds": [k.to_json() for k in self.kinds],
            "flag_rule": {"ratio": FLAG_RATIO, "min_share": FLAG_MIN_SHARE},
            "roofline_estimate": self.roofline_estimate, "roofline_error": self.roofline_error,
            "device_info": self.device_info, "notes": list(self.notes),
        }


def _stats(vals: list[float]) -> tuple[float, float, float]:
    s = sorted(vals)
    return statistics.median(s), lat.percentile(s, 10), lat.percentile(s, 90)


def _excess(share: float, macs_share: float, bytes_share: float) -> float | None:
    cost = max(macs_share, bytes_share)
    return share / cost if cost > 0 else None


def _flag(share: float, excess: float | None) -> str | None:
    if share < FLAG_MIN_SHARE:
        return None
    if excess is None:
        return f"{share:.1%} of the time for no MACs and no bytes"
    if excess >= FLAG_RATIO:
        return f"time share {excess:.1f}× its MAC/byte share"
    return None


def profile_layers(net: Net | str, *, runtime: str = "torch", device: str = "cpu", batch: int | None = None,
                   dtype: str = "float32", threads: int | None = None, timing: TimingConfig = TimingConfig(),
                   device_spec: str | None = None) -> LayerProfileReport:
    """Measure ``net`` per layer and per operator kind (see the module docstring).

    ``runtime``: ``torch`` (eager) or ``onnxruntime`` (``onnxruntime:cpu|cuda``); ``device``
    ``cpu`` or ``cuda[:N]``; ``timing`` as for :func:`analyzers.profile.profile` (at most
    :data:`analyzers.layer_measure.PROFILE_MAX_RUNS` forwards are profiled); ``device_spec``
    names the roofline spec (default: this CPU, measured, or the GPU's datasheet)."""
    from analyzers.cost import CostCounter
    from analyzers.profile import parse_dtypes
    from analyzers.profile_costs import roofline_spec_name
    from surgery.core.io import load

    net = net if isinstance(net, Net) else load(net)
    dev = lat.resolve_device(device)
    runtimes = lat.expand_runtimes([runtime], dev)
    if len(runtimes) != 1 or runtimes[0] not in ("torch", "onnxruntime:cpu", "onnxruntime:cuda"):
        raise SurgeryError(f"--by profiles one runtime at a time: torch or onnxruntime (got {runtime!r}; "
                           f"it expands to {', '.join(runtimes)})")
    rt = runtimes[0]
    dtype = parse_dtypes([dtype])[0]
    if threads is not None and threads < 1:
        raise SurgeryError(f"--threads must be positive, got {threads}")
    batch = net.batch_unit if batch is None else int(batch)
    if batch < 1:
        raise SurgeryError(f"batch must be a positive integer, got {batch}")

    lg = layer_graph(net.module)  # the layer table of `surgery layers` (a SurgeryError if fx cannot trace it)
    cost = CostCounter(net, dtype=dtype).run(None, batch)
    by_idx = {l.index: l for l in cost.layers}
    shuffle = shuffle_layers(lg, cost)
    static_kind = {}
    for l in cost.layers:
        k: dict = defaultdict(int)
        for o in l.ops:
            k[kind_of_category(o.category)] += 1 + o.macs + o.bytes_read + o.bytes_written
        static_kind[l.index] = "channel shuffle" if l.index in shuffle else (max(k, key=k.get) if k else "other")

    def conv_of(idx: int) -> int:
        """The nearest conv layer at or above ``idx`` through single-input layers (BN, activation)."""
        cur, seen = idx, set()
        while cur not in seen:
            seen.add(cur)
            if static_kind.get(cur) == "convolution":
                return cur
            preds = [p for p in lg.nx.predecessors(cur) if p != "input"]
            if len(preds) != 1:
                break
            cur = preds[0]
        return idx

    with lat.torch_settings(torch.device("cpu"), threads=threads), \
            tempfile.TemporaryDirectory(prefix="surgery-layer-profile-") as tmp:
        module = lat.prepare_module(net.module, dev if rt == "torch" or rt == "onnxruntime:cuda" else
                                    torch.device("cpu"), DTYPES[dtype])
        x = net.example_input(batch, device=dev if rt != "onnxruntime:cpu" else "cpu", dtype=DTYPES[dtype])
        try:
            if rt == "torch":
                m = measure_torch(module, x, timing, threads)
            else:
                m = measure_ort(net, module, x, rt, timing, threads, conv_of, Path(tmp))
        except Unavailable as e:
            raise SurgeryError(f"{rt}: {e}") from None
        used_threads = threads or (torch.get_num_threads() if dev.type == "cpu" or rt == "onnxruntime:cpu" else None)
        info = lat.device_info(dev, threads=threads)

    # roofline floors per layer
    floors: dict = {}
    estimate = roof_err = None
    spec_name = device_spec or roofline_spec_name(dev if rt != "onnxruntime:cpu" else torch.device("cpu"))
    try:
        from analyzers.roofline import get_spec, roofline

        if spec_name is None:
            raise SurgeryError("no roofline spec for this device; pass --device-spec")
        spec = get_spec(spec_name)
        rr = roofline(cost, spec)
        floors = {l.index: l.floor_ms for l in rr.layers}
        estimate = spec.estimate
    except Exception as e:  # the floor is a help; the timing stands without it
        roof_err = first_line(e)

    medians = {k: _stats(v) for k, v in m.samples.items() if v}
    total_ms = sum(med for med, _, _ in medians.values())
    tot_macs = sum(l.macs for l in cost.layers)
    tot_bytes = sum(l.bytes for l in cost.layers)
    layer_rows = []
    kind_ms: dict = defaultdict(float)
    keys = [l.index for l in lg.layers] + ([None] if None in medians else [])
    for idx in keys:
        lc = by_idx.get(idx)
        med, p10, p90 = medians.get(idx, (0.0, 0.0, 0.0))
        share = med / total_ms if total_ms > 0 else 0.0
        macs = lc.macs if lc else 0
        nbytes = lc.bytes if lc else 0
        ms_, bs_ = (macs / tot_macs if tot_macs else 0.0), (nbytes / tot_bytes if tot_bytes else 0.0)
        # the layer's time split between kinds by the ops inside it (a shuffle is a shuffle throughout)
        split = dict(m.kinds.get(idx) or {})
        if idx in shuffle:
            split = {"channel shuffle": 1.0}
        elif not split or sum(split.values()) <= 0:
            split = {static_kind.get(idx, "other"): 1.0}
        tot = sum(split.values())
        for k, v in split.items():
            kind_ms[k] += med * v / tot
        main = max(split, key=split.get) if med > 0 else static_kind.get(idx, "other")
        excess = _excess(share, ms_, bs_)
        note = None
        if idx is None:
            name, type_, note = "(runtime)", m.types.get(None, ""), "nodes in no layer of the model"
        else:
            layer = next(l for l in lg.layers if l.index == idx)
            name, type_ = layer.name, layer.type
            if med == 0.0 and rt != "torch":
                note = "no kernel of its own in ONNX Runtime's optimized graph (fused into a neighbour or folded)"
        sec = med / 1e3
        floor = floors.get(idx)
        layer_rows.append(LayerTime(
            index=idx, name=name, type=type_, kind=main, median_ms=med, p10_ms=p10, p90_ms=p90, share=share,
            macs=macs, bytes=nbytes, macs_share=ms_, bytes_share=bs_,
            gmacs_per_s=macs / sec / 1e9 if sec > 0 and macs else None,
            gbytes_per_s=nbytes / sec / 1e9 if sec > 0 and nbytes else None,
            roofline_ms=floor, roofline_pct=100.0 * floor / med if floor is not None and med > 0 else None,
            excess=excess, flag=_flag(share, excess), note=note))

    # counted side per kind: each op's own MACs and traffic
    kmacs: dict = defaultdict(int)
    kbytes: dict = defaultdict(int)
    kops: dict = defaultdict(int)
    for l in cost.layers:
        for o in l.ops:
            k = "channel shuffle" if l.index in shuffle else kind_of_category(o.category)
            kmacs[k] += o.macs
            kbytes[k] += o.bytes_read + o.bytes_written
            kops[k] += o.cls != "view"
    all_macs, all_bytes = sum(kmacs.values()), sum(kbytes.values())
    kinds = tuple(KindTime(kind=k, time_ms=kind_ms.get(k, 0.0),
                           share=kind_ms.get(k, 0.0) / total_ms if total_ms > 0 else 0.0,
                           macs=kmacs.get(k, 0), macs_share=kmacs.get(k, 0) / all_macs if all_macs else 0.0,
                           bytes=kbytes.get(k, 0), bytes_share=kbytes.get(k, 0) / all_bytes if all_bytes else 0.0,
                           ops=kops.get(k, 0)) for k in KINDS)
    notes = list(m.notes)
    if roof_err:
        notes.append(f"no roofline floor: {roof_err}")
    w = m.whole.timing
    return LayerProfileReport(
        model=net.source or type(net.module).__name__, runtime=rt, device=lat.row_device(rt, dev), batch=batch,
        dtype=dtype, threads=used_threads, runs=m.runs, model_ms=w.median_ms, model_p10_ms=w.p10_ms,
        model_p90_ms=w.p90_ms, profiled_ms=m.profiled.median_ms, layers_sum_ms=total_ms, layers=tuple(layer_rows),
        kinds=kinds, device_info=info, roofline_estimate=estimate, roofline_error=roof_err, notes=tuple(notes))
