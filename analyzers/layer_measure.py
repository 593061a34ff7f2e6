"""Measuring a model per layer with the profilers made for it (:mod:`analyzers.layer_profile`).

- **torch** (eager): the fx layer graph gets a ``record_function`` range named
  ``surgery_layer_<index>`` around every layer node (:func:`ranged_module`, a graph edit: no
  Python runs between layers); whole forward passes run under ``torch.profiler``
  (:func:`measure_torch`).
- **onnxruntime**: every layer is wrapped in a module named ``surgery_layer_<index>`` before the
  ONNX export (:func:`scoped_module`), the session runs with ONNX Runtime's own profiler on and
  each node of the optimized graph is mapped back to a layer by that scope (:func:`measure_ort`).

Both return :class:`Measured`: per-layer samples (ms per run) and the time split between kinds.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import fx, nn

from analyzers import latency as lat
from analyzers.latency import TimingConfig
from analyzers.layer_kinds import kind_of_aten, kind_of_ort
from surgery.core.errors import SurgeryError
from surgery.core.graph import LayerGraph, layer_graph
from surgery.core.net import Net

PROFILE_MAX_RUNS = 200  # profiled forwards kept at most (every op of every run is an event)
_SCOPE = "surgery_layer_"
_SCOPE_RE = re.compile(_SCOPE + r"(\d+)")


# ----------------------------------------------------------------------------- torch: ranges in the graph


def ranged_module(module: nn.Module) -> tuple[fx.GraphModule, LayerGraph]:
    """(GraphModule, LayerGraph): the model's layer graph with a ``record_function`` range named
    ``surgery_layer_<index>`` around every layer node (a graph edit: lint, recompile)."""
    lg = layer_graph(module)
    gm = copy.deepcopy(lg.gm)
    g = gm.graph
    enter = torch.ops.profiler._record_function_enter_new
    leave = torch.ops.profiler._record_function_exit._RecordFunction
    for n in list(g.nodes):
        layer = lg._by_node.get(n.name)
        if layer is None:
            continue
        with g.inserting_before(n):
            h = g.call_function(enter, (f"{_SCOPE}{layer.index}", None))
        with g.inserting_after(n):
            g.call_function(leave, (h,))
    g.lint()
    gm.recompile()
    return gm, lg


class _Scope(nn.Module):
    """A layer wrapped so that ONNX names every node it exports with ``surgery_layer_<index>``."""

    def __init__(self, target, how: str):
        super().__init__()
        self.how = how
        if how == "module":
            self.inner = target
        else:
            self.fn = target

    def forward(self, *args, **kwargs):
        if self.how == "module":
            return self.inner(*args, **kwargs)
        if self.how == "method":
            return getattr(args[0], self.fn)(*args[1:], **kwargs)
        return self.fn(*args, **kwargs)


def scoped_module(module: nn.Module) -> tuple[fx.GraphModule, LayerGraph]:
    """(GraphModule, LayerGraph): every layer node turned into a call of a ``surgery_layer_<index>``
    module (module layers keep their module inside it), so that exported ONNX names carry the layer."""
    lg = layer_graph(module)
    gm = copy.deepcopy(lg.gm)
    for n in list(gm.graph.nodes):
        if n.name not in lg._by_node:
            continue
        idx = lg._by_node[n.name].index
        name = f"{_SCOPE}{idx}"
        if n.op == "call_module":
            wrapped = _Scope(gm.get_submodule(n.target), "module")
        elif n.op == "call_method":
            wrapped = _Scope(n.target, "method")
        else:
            wrapped = _Scope(n.target, "function")
        gm.add_submodule(name, wrapped)
        n.op, n.target = "call_module", name
    gm.graph.lint()
    gm.recompile()
    return gm, lg


# ----------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """What a runtime's profiler gave: per-layer samples (ms, one per run) and kind fractions."""

    samples: dict  # layer index (or None) -> [ms per run]
    kinds: dict  # layer index (or None) -> {kind: time} (any unit; normalised later)
    profiled: lat.Timing
    whole: lat.Measurement
    runs: int
    notes: list
    types: dict  # None -> the op types of the (runtime) row


@contextlib.contextmanager
def _quiet_stderr():
    """Library code never prints: the profiler's C++ side (Kineto) writes start/stop lines straight
    to file descriptor 2, below Python, so that descriptor points at /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _event_kind(e) -> str:
    kind = kind_of_aten(e.name)
    if kind is not None:
        return kind
    kids = list(e.cpu_children)
    if kids:
        return _event_kind(max(kids, key=lambda k: k.cpu_time_total))
    return "other"


def measure_torch(module: nn.Module, x: torch.Tensor, config: TimingConfig, threads) -> Measured:
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = x.device.type == "cuda"
    whole = lat.time_torch(module, x, config=config, threads=threads)
    gm, _ = ranged_module(module)
    gm = gm.to(x.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        with record_function("surgery_forward"):
            gm(x)
            sync()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    run_cfg = replace(config, warmup=0, warmup_s=0.0, max_runs=max(1, min(config.max_runs, PROFILE_MAX_RUNS)),
                      min_runs=min(config.min_runs, PROFILE_MAX_RUNS))
    ctx = torch.no_grad() if cuda else torch.inference_mode()
    with lat.torch_settings(x.device, threads=threads), ctx:
        t0, warm = time.perf_counter(), 0
        while warm < max(1, config.warmup) or time.perf_counter() - t0 < config.warmup_s:  # warm-up, unprofiled
            step()
            warm += 1
        with _quiet_stderr(), profile(activities=activities) as prof:
            profiled = lat.measure(step, run_cfg)
    samples: dict = defaultdict(list)
    kinds: dict = defaultdict(lambda: defaultdict(float))
    for e in prof.events():
        m = _SCOPE_RE.fullmatch(e.name)
        if m is None:
            continue
        idx = int(m.group(1))
        t_us = e.device_time_total if cuda else e.time_range.elapsed_us()
        samples[idx].append(t_us / 1e3)
        for k in e.cpu_children:
            kinds[idx][_event_kind(k)] += (k.device_time_total if cuda else k.cpu_time_total)
    notes = [f"torch.profiler over {profiled.runs} forward passes; record_function ranges around every layer "
             f"node of the fx layer graph" + ("; CUDA kernel time per layer" if cuda else "")]
    return Measured(dict(samples), {k: dict(v) for k, v in kinds.items()}, profiled, whole, profiled.runs, notes, {})


def _layer_of_ort_node(node, opt_nodes: dict) -> int | None:
    m = _SCOPE_RE.search(node)
    if m:
        return int(m.group(1))
    on = opt_nodes.get(node)
    if on is None:
        return None
    for names in (on.output, on.input):
        for v in names:
            m = _SCOPE_RE.search(v)
            if m:
                return int(m.group(1))
    return None


def measure_ort(net: Net, module: nn.Module, x: torch.Tensor, runtime: str, config: TimingConfig, threads,
                 conv_of: Callable[[int], int], tmp: Path) -> Measured:
    import onnx

    from surgery.core.onnx_io import export_model, verify_session

    device = x.device
    lat.check_ort(runtime, device)
    host = module if device.type == "cpu" else copy.deepcopy(module).cpu()  # exported and verified on the host
    scoped, _ = scoped_module(host)
    xe = x.detach().cpu()
    try:
        exported = export_model(scoped, xe, exporter="torchscript")
    except SurgeryError:
        exported = export_model(scoped, xe)
    path = tmp / "scoped.onnx"
    path.write_bytes(exported.data)
    sess = lat.ort_session(path, runtime, device, threads=threads, dtype=x.dtype)
    rep = verify_session(sess, host, net.input_shape, batch=x.shape[0], dtype=x.dtype, probes=1,
                         what=f"ONNX model ({runtime})")
    whole = lat.time_onnxruntime(sess, x, runtime, config=config, threads=threads)
    del sess
    opt_path = tmp / "optimized.onnx"
    psess = lat.ort_session(path, runtime, device, threads=threads, dtype=x.dtype, profile_prefix=str(tmp / "ort"),
                            optimized_path=str(opt_path))
    run_cfg = replace(config, max_runs=max(1, min(config.max_runs, PROFILE_MAX_RUNS)),
                      min_runs=min(config.min_runs, PROFILE_MAX_RUNS))
    profiled = lat.time_onnxruntime(psess, x, runtime, config=run_cfg, threads=threads).timing
    events = json.loads(Path(psess.end_profiling()).read_text())
    try:
        opt_nodes = {n.name: n for n in onnx.load(str(opt_path), load_external_data=False).graph.node}
    except Exception:  # the optimized graph is a help for names, not a need
        opt_nodes = {}
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "SequentialExecutor::Execute")
    runs = runs[-profiled.runs:] if profiled.runs <= len(runs) else runs  # the timed runs (after the warm-up)
    per_run: list[dict] = [defaultdict(float) for _ in runs]
    kinds: dict = defaultdict(lambda: defaultdict(float))
    types: dict = defaultdict(set)
    starts = [r[0] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, e["ts"]) - 1
        if i < 0 or e["ts"] > runs[i][1]:
            continue  # a warm-up run
        node = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "")
        kind = kind_of_ort(op)
        idx = _layer_of_ort_node(node, opt_nodes)
        if idx is not None and (kind == "convolution" or op.startswith("Reorder")):
            # a fused conv(+BN)(+act) kernel named after its last op is the conv's time, and so are the
            # layout reorders of its blocked (NCHWc) output
            idx = conv_of(idx)
        per_run[i][idx] += e["dur"] / 1e3
        kinds[idx][kind] += e["dur"]
        if idx is None:
            types[None].add(op)
    samples: dict = defaultdict(list)
    keys = set().union(*per_run) if per_run else set()
    for r in per_run:
        for k in keys:
            samples[k].append(r.get(k, 0.0))
    notes = [f"ONNX Runtime's profiler over {len(per_run)} runs of the optimized graph "
             f"({exported.exporter} exporter, opset {exported.opset}, verified against PyTorch: max rel "
             f"{rep.max_rel:.1e}); nodes mapped to layers by their {_SCOPE}<index> scope"]
    return Measured(dict(samples), {k: dict(v) for k, v in kinds.items()}, profiled, whole, len(per_run), notes,
                     {None: ", ".join(sorted(types[None]))} if None in types else {})
