"""Roofline bounds: per layer arithmetic intensity, compute- or memory-bound, time floor.

A layer needs at least ``max(flops / peak_flops, bytes / bandwidth)`` seconds, where
``flops = 2 × (macs + other_macs)`` (every counted op, conv/linear and the "other" class) and
``bytes`` is the layer-boundary traffic of :mod:`analyzers.cost`. Layers run one after
another, so the model's latency floor is the sum of the layer floors. Real kernels are
slower (launch overhead, tiling, caches); the floor says how far from the hardware limit a
measured latency is, and which layers can only get faster by moving fewer bytes.

Peaks are dense (no sparsity) datasheet figures. ``float32`` means IEEE FP32 on CUDA cores;
PyTorch runs convolutions in TF32 on tensor cores by default (``cudnn.allow_tf32``), so pass
``precision="tf32"`` for that. The ``cpu`` spec is measured once on this machine and cached
under ``~/.cache/surgery`` (``SURGERY_CACHE_DIR`` overrides): the peak is the best of the
kernels CNNs run (a float32 matmul and 3×3/1×1 convolutions, on all the threads torch uses),
the bandwidth the best of a copy that fits in cache and one that does not (a floor must stay
below any real time, so the faster figure is taken). Measured peaks are still an *estimate*
(``DeviceSpec.estimate``): a model may use a faster kernel than the probes, and the reports
say "estimate" wherever such a floor is shown.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from analyzers.cost import CostReport
from analyzers.devices import cpu_model
from surgery.core.errors import SurgeryError, suggest


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: Mapping[str, float]  # dtype/precision name -> FLOP/s
    mem_bandwidth: float  # bytes/s
    description: str = ""
    source: str = ""
    measured: bool = False

    @property
    def estimate(self) -> bool:
        """A measured spec is an estimate of the peaks (datasheet specs are bounds)."""
        return self.measured

    def peak(self, precision: str) -> tuple[float, str]:
        """(FLOP/s, the precision actually used) — falls back to float32 when unknown."""
        if precision in self.peak_flops:
            return self.peak_flops[precision], precision
        return self.peak_flops["float32"], "float32"


# Every precision a spec may name; an explicit precision outside this list is a typo, not a fallback.
PRECISIONS = ("float64", "float32", "tf32", "bfloat16", "float16", "float8", "int8", "int4")

_H100_PEAKS = {"float64": 67e12, "float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12, "float16": 989.4e12,
               "float8": 1978.9e12}
SPECS: dict[str, DeviceSpec] = {s.name: s for s in (
    DeviceSpec("h100-sxm", _H100_PEAKS, 3.35e12, "NVIDIA H100 SXM5 80 GB (HBM3)",
               "NVIDIA H100 Tensor Core GPU datasheet, dense (without sparsity); FP64 = FP64 tensor core"),
    DeviceSpec("h200", _H100_PEAKS, 4.8e12, "NVIDIA H200 SXM 141 GB (HBM3e)",
               "NVIDIA H200 Tensor Core GPU datasheet, dense (without sparsity); same compute as H100 SXM"),
    DeviceSpec("a100", {"float64": 19.5e12, "float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12,
                        "float16": 312e12}, 2.039e12, "NVIDIA A100 SXM4 80 GB (HBM2e)",
               "NVIDIA A100 Tensor Core GPU datasheet, dense (without sparsity); FP64 = FP64 tensor core"),
)}
_ALIASES = {"h100": "h100-sxm", "h100sxm": "h100-sxm", "h100-sxm5": "h100-sxm", "a100-sxm": "a100",
            "a100-80gb": "a100", "h200-sxm": "h200", "this-cpu": "cpu", "host": "cpu", "local": "cpu"}


def spec_names() -> list[str]:
    return [*SPECS, "cpu"]


def get_spec(name: str, *, refresh: bool = False) -> DeviceSpec:
    """A built-in spec (``h100-sxm``, ``h200``, ``a100``) or ``cpu`` (this machine, measured once
    and cached; ``refresh=True`` measures again)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key == "cpu":
        return cpu_spec(refresh=refresh)
    if key not in SPECS:
        raise SurgeryError(f"unknown device spec {name!r}{suggest(key, spec_names())}; "
                           f"choose one of: {', '.join(spec_names())}")
    return SPECS[key]


# ----------------------------------------------------------------------------- this CPU


def cache_dir() -> Path:
    env = os.environ.get("SURGERY_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "surgery"


_PROBES_VERSION = 3  # bump when measure_cpu's probes change: cached figures of older probes are not reused


def _fingerprint() -> str:
    return (f"{cpu_model()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}"
            f"|probes v{_PROBES_VERSION}")


def _best_time(fn, *, budget_s: float, min_repeats: int) -> tuple[float, int]:
    """Fastest of repeated calls for about ``budget_s`` seconds (at least ``min_repeats``)."""
    fn()  # warm-up
    best, n, start = math.inf, 0, time.perf_counter()
    while n < min_repeats or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
    return best, n


def measure_cpu(*, matmul_n: int = 1024, copy_mib: int = 64, cache_kib: int = 512, budget_s: float = 0.3,
                min_repeats: int = 5) -> DeviceSpec:
    """Peak float32 FLOP/s and memory bandwidth of this CPU, on the threads torch uses now.

    The peak is the best of the kernels CNNs spend their time in: a square matmul and three
    convolutions (3×3 and 1×1 with 64 channels at 56×56, batch 8, as in ResNet's first stage; 3×3
    with 256 channels at 52×52, as in YOLOv3's). The
    bandwidth is the best of a large copy (DRAM) and a cache-resident one: small models run
    from cache, and a floor must stay below any real time. Each figure is the fastest of
    repeated runs for ``budget_s`` seconds; on a busy machine it under-measures, so
    :func:`cpu_spec` keeps the best figure ever measured."""
    with torch.inference_mode():
        a = torch.randn(matmul_n, matmul_n)
        b = torch.randn(matmul_n, matmul_n)
        c = torch.empty(matmul_n, matmul_n)
        t_mm, n_mm = _best_time(lambda: torch.mm(a, b, out=c), budget_s=budget_s, min_repeats=min_repeats)
        probes = {f"{matmul_n}x{matmul_n} matmul": 2 * matmul_n**3 / t_mm}
        # (batch, channels, size, kernel): ResNet's first stage, and a detector's 52x52 stage (YOLOv3),
        # whose wide 3x3 convs run closest to the peak
        for b, ch, hw, k in ((8, 64, 56, 3), (8, 64, 56, 1), (1, 256, 52, 3)):
            x, w = torch.randn(b, ch, hw, hw), torch.randn(ch, ch, k, k)
            t_cv, _ = _best_time(lambda: torch.nn.functional.conv2d(x, w, padding=k // 2), budget_s=budget_s,
                                 min_repeats=min_repeats)
            probes[f"{k}x{k} conv {ch}ch {hw}x{hw}"] = 2 * b * ch * ch * k * k * hw * hw / t_cv
        bandwidths = {}
        for label, nbytes in ((f"{copy_mib} MiB copy", copy_mib << 20), (f"{cache_kib} KiB copy", cache_kib << 10)):
            n = nbytes // 4
            src, dst = torch.ones(n), torch.empty(n)
            t_cp, _ = _best_time(lambda: dst.copy_(src), budget_s=budget_s / 2, min_repeats=min_repeats)
            bandwidths[label] = 2 * n * 4 / t_cp  # read + write
    best_op = max(probes, key=probes.get)
    best_bw = max(bandwidths, key=bandwidths.get)
    return DeviceSpec("cpu", {"float32": probes[best_op]}, bandwidths[best_bw], f"this CPU: {_fingerprint()}",
                      f"measured estimate on {torch.get_num_threads()} thread(s): peak from the best of "
                      f"{', '.join(probes)} ({best_op}); bandwidth from the best of {', '.join(bandwidths)} "
                      f"({best_bw})", measured=True)


def cpu_spec(*, refresh: bool = False) -> DeviceSpec:
    path = cache_dir() / "cpu-spec.json"
    key = _fingerprint()
    cached: dict = {}
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if entry and not refresh:
        try:
            return DeviceSpec("cpu", dict(entry["peak_flops"]), float(entry["mem_bandwidth"]), entry["description"],
                              entry["source"] + f" (cached in {path})", measured=True)
        except (KeyError, TypeError, ValueError):
            pass
    spec = measure_cpu()
    if entry and refresh:  # a busier moment can only under-measure: keep the best ever seen
        try:
            best_flops = max(spec.peak_flops["float32"], float(entry["peak_flops"]["float32"]))
            best_bw = max(spec.mem_bandwidth, float(entry["mem_bandwidth"]))
            spec = replace(spec, peak_flops={"float32": best_flops}, mem_bandwidth=best_bw,
                                       source=spec.source + " (best of this and earlier measurements)")
        except (KeyError, TypeError, ValueError):
            pass
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = {"peak_flops": dict(spec.peak_flops), "mem_bandwidth": spec.mem_bandwidth,
                   "description": spec.description, "source": spec.source, "measured_at": time.time()}
    try:  # a cache we cannot write is not an error: the spec is still good for this run
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cpu-spec.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(cached, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return spec


# ----------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class LayerBound:
    index: int
    name: str
    type: str
    flops: int  # 2 × (macs + other_macs)
    bytes: int
    intensity: float | None  # FLOP per byte; None when the layer moves no bytes
    bound: str  # compute | memory | none
    compute_s: float
    memory_s: float
    floor_s: float

    @property
    def floor_ms(self) -> float:
        return self.floor_s * 1e3


@dataclass(frozen=True)
class RooflineReport:
    model: str
    input_shape: tuple[int, ...]
    batch: int
    device: str
    precision: str  # the peak used
    peak_flops: float  # FLOP/s
    mem_bandwidth: float  # bytes/s
    ridge_intensity: float  # FLOP/byte where the two roofs meet
    layers: tuple[LayerBound, ...]
    compute_s: float  # sum of compute times
    memory_s: float  # sum of memory times
    floor_s: float  # the model's latency floor: sum of layer floors
    notes: tuple[str, ...] = field(default=())
    estimate: bool = False  # the spec's peaks were measured here (an estimate), not a datasheet bound

    @property
    def floor_ms(self) -> float:
        return self.floor_s * 1e3

    def to_json(self) -> dict:
        return {
            "model": self.model, "input_shape": list(self.input_shape), "batch": self.batch, "device": self.device,
            "precision": self.precision, "peak_flop_per_s": self.peak_flops,
            "mem_bandwidth_bytes_per_s": self.mem_bandwidth, "ridge_flop_per_byte": self.ridge_intensity,
            "estimate": self.estimate,
            "compute_ms": self.compute_s * 1e3, "memory_ms": self.memory_s * 1e3, "roofline_ms": self.floor_ms,
            "compute_bound_layers": sum(l.bound == "compute" for l in self.layers),
            "memory_bound_layers": sum(l.bound == "memory" for l in self.layers),
            "layers": [{"index": l.index, "name": l.name, "type": l.type, "flops": l.flops, "bytes": l.bytes,
                        "intensity_flop_per_byte": l.intensity, "bound": l.bound, "roofline_ms": l.floor_ms}
                       for l in self.layers],
            "notes": list(self.notes),
        }


def roofline(report: CostReport, spec: DeviceSpec, *, precision: str | None = None) -> RooflineReport:
    """Bound every layer of ``report`` on ``spec`` (peak for ``precision``, default the report's dtype)."""
    if precision is not None and precision not in PRECISIONS:
        raise SurgeryError(f"unknown precision {precision!r}{suggest(precision, PRECISIONS)}; "
                           f"use one of {', '.join(PRECISIONS)}")
    want = precision or report.dtype
    peak, used = spec.peak(want)
    notes = []
    if used != want:
        notes.append(f"{spec.name} has no {want} peak; used its {used} peak")
    bw = spec.mem_bandwidth
    layers = []
    for l in report.layers:
        flops = 2 * (l.macs + l.other_macs)
        nbytes = l.bytes_read + l.bytes_written
        tc, tm = flops / peak, nbytes / bw
        bound = "none" if flops == 0 and nbytes == 0 else ("compute" if tc >= tm else "memory")
        layers.append(LayerBound(l.index, l.name, l.type, flops, nbytes, flops / nbytes if nbytes else None,
                                 bound, tc, tm, max(tc, tm)))
    return RooflineReport(
        model=report.model, input_shape=report.input_shape, batch=report.batch, device=spec.name, precision=used,
        peak_flops=peak, mem_bandwidth=bw, ridge_intensity=peak / bw, layers=tuple(layers),
        compute_s=sum(l.compute_s for l in layers), memory_s=sum(l.memory_s for l in layers),
        floor_s=sum(l.floor_s for l in layers), notes=tuple(notes), estimate=spec.estimate,
    )


def with_peak(spec: DeviceSpec, precision: str, flops: float) -> DeviceSpec:
    """A copy of ``spec`` with one more (or a changed) peak."""
    return replace(spec, peak_flops={**spec.peak_flops, precision: flops})
