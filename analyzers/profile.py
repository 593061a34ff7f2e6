"""``surgery profile``: measured latency beside counted cost — the speed/FLOP trade-off.

A sweep times every (model, batch, dtype, runtime) combination with
:mod:`analyzers.latency` and joins each row with the cost analyzer
(:func:`analyzers.cost.analyze`: MACs, params, memory traffic) and the roofline
(:func:`analyzers.roofline.roofline`: the fastest the device could possibly run that pass).

Units of a row:

- ``median_ms``, ``p10_ms``, ``p90_ms``: milliseconds per forward pass of the whole batch;
  ``cv``: coefficient of variation of the samples (fraction); ``runs``: timed samples;
- ``throughput``: samples (images) per second, ``batch / median``;
- ``macs``: multiply-accumulates **per sample** (the timed pass does ``batch × macs``);
  ``params``: parameter elements; ``bytes``: memory traffic of the whole timed pass in the
  row's dtype (weights are read once per pass, so it is not proportional to the batch);
- ``gmacs_per_s``: achieved 1e9 MACs per second, ``batch × macs / median``;
- ``roofline_ms``: the device's roofline floor for the timed pass; ``roofline_pct``: the
  percentage of that floor reached, ``100 × roofline_ms / median_ms``;
- ``latency_ratio`` / ``macs_ratio``: this row against the first model's row with the same
  runtime, device, batch and dtype (1.0 for the first model itself);
- ``pareto``: not dominated in (MACs, latency) among the successful rows with the same
  device, batch and dtype (across models and runtimes).

A *chain* entry (``[A, B]``, typed ``A.pt+B.pt`` on the command line) runs its models one
after the other on the same input, as one entry: what a user weighs when comparing separate
task models against one shared net. Its MACs, params, bytes and roofline floor are the sums
of its parts'.

Failures never stop a sweep: a runtime that cannot run here gives a row with
``status="unavailable"``, any other exception ``status="failed"``; the reason is in
``error``. A cost-analyzer failure leaves ``macs`` null with the reason in ``cost_error``.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from analyzers import latency as lat
from analyzers.latency import DTYPES, TimingConfig, Unavailable
from surgery.core.dtypes import dtype_name
from surgery.core.errors import SurgeryError, first_line
from surgery.core.net import Net

ProgressFn = Callable[[int, int, str], None]  # (done, total, what is running now)


@dataclass(frozen=True)
class ProfileRow:
    model: str
    runtime: str
    device: str
    batch: int
    dtype: str
    status: str  # ok | unavailable | failed
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    cv: float | None = None
    runs: int = 0
    throughput: float | None = None  # samples / s
    macs: int | None = None  # per sample
    params: int | None = None
    bytes: int | None = None  # whole timed pass
    gmacs_per_s: float | None = None
    roofline_ms: float | None = None
    roofline_pct: float | None = None
    latency_ratio: float | None = None
    macs_ratio: float | None = None
    pareto: bool | None = None
    threads: int | None = None
    setup_s: float | None = None
    clock: str | None = None
    warning: str | None = None
    error: str | None = None
    cost_error: str | None = None
    roofline_error: str | None = None
    roofline_estimate: bool | None = None  # the floor's peaks were measured here (an estimate)
    onnx: dict | None = None  # exporter, opset, max_abs, max_rel of the verified export


@dataclass(frozen=True)
class ProfileReport:
    device: dict
    settings: dict
    results: tuple[ProfileRow, ...]

    def to_json(self) -> dict:
        models = list(dict.fromkeys(r.model for r in self.results))
        return {"models": models, "device": self.device, "settings": self.settings, "results": list(self.results)}

    @property
    def ok(self) -> tuple[ProfileRow, ...]:
        return tuple(r for r in self.results if r.status == "ok")


@dataclass(frozen=True)
class Job:
    model_index: int
    batch: int
    dtype: str
    runtime: str


def parse_dtypes(names: Sequence[str]) -> list[str]:
    """Canonical names (aliases as in :mod:`surgery.core.dtypes`), each once, in order."""
    out = []
    for n in names:
        key = dtype_name(n, tuple(DTYPES))
        if key not in out:
            out.append(key)
    return out


def plan(n_models: int, batches: Sequence[int], dtypes: Sequence[str], runtimes: Sequence[str]) -> list[Job]:
    """The sweep order: model, then batch, dtype, runtime (one model in memory at a time)."""
    return [Job(m, b, d, r) for m in range(n_models) for b in batches for d in dtypes for r in runtimes]


def roofline_spec_name(device: torch.device) -> str | None:
    """Map the device to an :mod:`analyzers.roofline` spec name (None: no spec known)."""
    if device.type == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    for key, spec in (("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100")):
        if key in name:
            return spec
    return None


def _err(e: BaseException, limit: int = 300) -> str:
    """A row's error: the first line (:func:`surgery.core.errors.first_line`), after the
    exception's type unless it is one of ours (already a sentence for people)."""
    line = first_line(e, limit)
    if isinstance(e, (SurgeryError, Unavailable)) or line == type(e).__name__:
        return line
    return first_line(f"{type(e).__name__}: {line}", limit)


class _Costs:
    """Cost-analyzer and roofline results per (model, dtype, batch, spec), computed once."""

    def __init__(self, precision_for: Callable[[str], str | None] = lambda dtype: None):
        self.precision_for = precision_for
        self._specs: dict = {}  # name -> DeviceSpec | error text
        self._counters: dict = {}
        self._cache: dict = {}
        self._reports: dict = {}  # cache key -> the CostReports, to bound them again on a refreshed spec

    def spec(self, name: str | None):
        """(DeviceSpec, None) or (None, why not)."""
        if name is None:
            return None, "no roofline spec for this device; pass --device-spec (h100-sxm, h200, a100, cpu)"
        if name not in self._specs:
            try:
                from analyzers.roofline import get_spec

                self._specs[name] = get_spec(name)
            except Exception as e:  # the roofline module may be missing or reject the name
                self._specs[name] = f"roofline spec {name!r}: {_err(e)}"
        got = self._specs[name]
        return (None, got) if isinstance(got, str) else (got, None)

    def get(self, key: int, net: Net, batch: int, dtype: str, spec_name: str | None) -> dict:
        ck = (key, batch, dtype, spec_name)
        if ck in self._cache:
            return self._cache[ck]
        parts = chain_parts(net)
        res: dict = {"params": net.params}
        try:
            from analyzers.cost import CostCounter

            reps = []
            for i, part in enumerate(parts):
                if (key, i, dtype) not in self._counters:
                    self._counters[(key, i, dtype)] = CostCounter(part, dtype=dtype)
                reps.append(self._counters[(key, i, dtype)].run(None, batch))
            res.update(macs=sum(int(r.totals.macs) for r in reps) // batch,
                       bytes=sum(int(r.totals.bytes) for r in reps), params=sum(int(r.totals.params) for r in reps))
            self._reports[ck] = reps
            res.update(self._floor(reps, dtype, spec_name))
        except Exception as e:  # the analyzer is optional to a timing: report, keep going
            res["cost_error"] = f"cost analyzer: {_err(e)}"
        self._cache[ck] = res
        return res

    def _floor(self, reps, dtype: str, spec_name: str | None) -> dict:
        spec, why = self.spec(spec_name)
        if spec is None:
            return {"roofline_error": why}
        try:
            from analyzers.roofline import roofline

            precision = self.precision_for(dtype) if spec_name != "cpu" else None
            return {"roofline_ms": sum(float(roofline(r, spec, precision=precision).floor_ms) for r in reps),
                    "roofline_estimate": spec.estimate}
        except Exception as e:
            return {"roofline_error": f"roofline: {_err(e)}"}

    def remeasure_cpu(self) -> bool:
        """Measure this CPU's peaks again (the cache keeps the best figure ever seen) and bound
        every cost computed so far on the new spec; False when that is not possible."""
        try:
            from analyzers.roofline import get_spec

            self._specs["cpu"] = get_spec("cpu", refresh=True)
        except Exception:
            return False
        for ck, reps in self._reports.items():
            if ck[3] == "cpu":
                self._cache[ck].update(self._floor(reps, ck[2], "cpu"))
        return True

    def forget(self, key: int) -> None:
        self._counters = {k: v for k, v in self._counters.items() if k[0] != key}


class _Chain(torch.nn.Module):
    """Models run one after the other on the same input; their outputs side by side."""

    def __init__(self, modules: Sequence[torch.nn.Module]):
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)

    def forward(self, x):
        return tuple(m(x) for m in self.parts)


def chain(nets: Sequence[Net]) -> Net:
    """One profile entry that runs ``nets`` one after the other on the same input (a ``+`` on
    the command line). All need the same input shape."""
    nets = list(nets)
    if len(nets) == 1:
        return nets[0]
    shapes = {n.input_shape for n in nets}
    if len(shapes) != 1:
        listed = ", ".join(f"{n.source} {'x'.join(map(str, n.input_shape))}" for n in nets)
        raise SurgeryError(f"models joined by '+' run on the same input, but their input shapes differ: {listed}; "
                           "pass --input to give them one")
    return Net(_Chain([n.module for n in nets]), None, nets[0].input_shape, source="+".join(n.source for n in nets),
               format="chain", metadata={"chain": tuple(nets)})


def chain_parts(net: Net) -> tuple[Net, ...]:
    """The models of a chain entry (a plain model is a chain of one)."""
    return tuple(net.metadata.get("chain", (net,)))


def profile(
    models: Sequence[Net | str],
    *,
    device: str = "cpu",
    runtimes: Sequence[str] = ("torch",),
    batches: Sequence[int] = (1,),
    dtypes: Sequence[str] = ("float32",),
    timing: TimingConfig = TimingConfig(),
    threads: int | None = None,
    tf32: bool = False,
    device_spec: str | None = None,
    labels: Sequence[str] | None = None,
    on_progress: ProgressFn | None = None,
) -> ProfileReport:
    """Time every model × batch × dtype × runtime and join the cost analyzer and roofline.

    ``models`` are Nets or references for :func:`surgery.core.io.load`. ``device`` is ``cpu`` or
    ``cuda[:N]`` (a SurgeryError if CUDA is missing). ``runtimes`` from
    :data:`analyzers.latency.RUNTIMES` (``onnxruntime`` expands to the device's providers).
    ``on_progress(done, total, label)`` is called before each job and once at the end.
    """
    from surgery.core.io import UntrustedProgram, load

    dev = lat.resolve_device(device)
    runtimes = lat.expand_runtimes(runtimes, dev)
    dtypes = parse_dtypes(dtypes)
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise SurgeryError(f"batch sizes must be positive integers, got {batches}")
    if threads is not None and threads < 1:
        raise SurgeryError(f"--threads must be positive, got {threads}")
    nets = [chain([p if isinstance(p, Net) else load(p) for p in m]) if isinstance(m, (list, tuple))
            else m if isinstance(m, Net) else load(m) for m in models]
    if not nets:
        raise SurgeryError("no model to profile")
    names = list(labels) if labels else [n.source or f"model{i}" for i, n in enumerate(nets)]
    if len(names) != len(nets):
        raise SurgeryError("labels: one per model")
    for name, net in zip(names, nets):  # refused before any timing, not as a failed row per runtime
        if any(isinstance(m, UntrustedProgram) for m in net.module.modules()):
            raise SurgeryError(f"{name}: a .pt2 program loaded without trust; timing runs its graph on real "
                               "tensors. Pass --trust-code if you trust its source (counting needs no flag)")

    # PyTorch convs run in TF32 on tensor cores when asked: the roofline then uses the TF32 peak
    costs = _Costs(lambda dt: "tf32" if (tf32 and dev.type == "cuda" and dt == "float32") else None)
    spec_name = device_spec or roofline_spec_name(dev)
    jobs = plan(len(nets), batches, dtypes, runtimes)
    timed: list[tuple[Job, ProfileRow, dict]] = []  # each timing with its cost entry (updated on a re-measure)
    # the whole sweep (and the measured CPU roofline spec) at the requested thread count
    with lat.torch_settings(torch.device("cpu"), threads=threads), \
            tempfile.TemporaryDirectory(prefix="surgery-profile-") as tmp:
        runner = _Runner(dev, Path(tmp), timing, threads, tf32)
        current = None
        for done, job in enumerate(jobs):
            net, name = nets[job.model_index], names[job.model_index]
            if on_progress:
                on_progress(done, len(jobs), f"{name} · {job.runtime} · batch {job.batch} · {job.dtype}")
            if current != job.model_index:
                runner.release()
                if current is not None:
                    costs.forget(current)
                current = job.model_index
            row = runner.run(net, name, job)
            # a row on the CPU (the ONNX Runtime CPU provider in a CUDA sweep) is bounded by the CPU
            row_spec = "cpu" if (row.device == "cpu" and dev.type != "cpu") else spec_name
            cost = costs.get(job.model_index, net, job.batch, job.dtype, row_spec)
            timed.append((job, row, cost))
        runner.release()
        rows = [(job, _join_cost(row, cost)) for job, row, cost in timed]
        # A measured CPU floor that a model beats was measured at a busier moment (the cached peak
        # is the best seen so far): measure again, at the sweep's threads, and bound every row anew.
        if any(r.roofline_estimate and (r.roofline_pct or 0) > 100 for _, r in rows) and costs.remeasure_cpu():
            rows = [(job, _join_cost(row, cost)) for job, row, cost in timed]
    if on_progress:
        on_progress(len(jobs), len(jobs), "done")
    results = _pareto(_ratios(rows))
    settings = {
        "runtimes": runtimes,
        "batches": batches,
        "dtypes": dtypes,
        "timing": {k: getattr(timing, k) for k in timing.__dataclass_fields__},
        "threads": threads or (torch.get_num_threads() if dev.type == "cpu" else None),
        "tf32": tf32,
        "device_spec": spec_name,
    }
    return ProfileReport(lat.device_info(dev, threads=threads), settings, tuple(results))


def _join_cost(row: ProfileRow, cost: dict) -> ProfileRow:
    row = replace(row, macs=cost.get("macs"), params=cost.get("params"), bytes=cost.get("bytes"),
                  roofline_ms=cost.get("roofline_ms"), cost_error=cost.get("cost_error"),
                  roofline_error=cost.get("roofline_error"), roofline_estimate=cost.get("roofline_estimate"))
    if row.status == "ok" and row.median_ms:
        if row.macs is not None:
            row = replace(row, gmacs_per_s=row.macs * row.batch / (row.median_ms / 1e3) / 1e9)
        if row.roofline_ms is not None:
            row = replace(row, roofline_pct=100.0 * row.roofline_ms / row.median_ms)
            if row.roofline_pct > 100.0:  # faster than the floor: the spec's peaks are too low for this device
                if row.roofline_estimate:
                    msg = (f"measured faster than the estimated roofline floor ({row.roofline_pct:.0f}% of it): "
                           f"this model's kernels beat the peaks measured by the CPU probes, so the floor is an "
                           f"estimate, not a bound")
                else:
                    msg = (f"measured faster than the roofline floor ({row.roofline_pct:.0f}% of it): the device "
                           f"spec underestimates this device's peak FLOP/s or bandwidth")
                row = replace(row, warning=f"{row.warning}; {msg}" if row.warning else msg)
    return row


def _ratios(rows: list[tuple[Job, ProfileRow]]) -> list[ProfileRow]:
    first = {(r.runtime, r.device, r.batch, r.dtype): r for j, r in rows if j.model_index == 0}
    out = []
    for _, r in rows:
        base = first.get((r.runtime, r.device, r.batch, r.dtype))
        lr = mr = None
        if base is not None and r.status == "ok" and base.status == "ok" and base.median_ms:
            lr = r.median_ms / base.median_ms
        if base is not None and r.macs is not None and base.macs:
            mr = r.macs / base.macs
        out.append(replace(r, latency_ratio=lr, macs_ratio=mr))
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, latency) points: True where no other point is <= in both and < in one."""
    flags = []
    for i, (c, t) in enumerate(points):
        dominated = any((c2 <= c and t2 <= t) and (c2 < c or t2 < t) for j, (c2, t2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def _pareto(rows: list[ProfileRow]) -> list[ProfileRow]:
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        if r.status == "ok" and r.macs is not None:
            groups.setdefault((r.device, r.batch, r.dtype), []).append(i)
    flags: dict[int, bool] = {}
    for idx in groups.values():
        for i, f in zip(idx, pareto_front([(rows[i].macs, rows[i].median_ms) for i in idx])):
            flags[i] = f
    return [replace(r, pareto=flags.get(i)) for i, r in enumerate(rows)]


@dataclass
class _Runner:
    """Runs one job; holds the current model's prepared copies and ONNX exports."""

    device: torch.device
    tmp: Path
    timing: TimingConfig
    threads: int | None
    tf32: bool
    _modules: dict = field(default_factory=dict)
    _exports: dict = field(default_factory=dict)

    def release(self) -> None:
        self._modules.clear()
        for path, _ in self._exports.values():
            if isinstance(path, Path):
                path.unlink(missing_ok=True)
        self._exports.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self, net: Net, name: str, job: Job) -> ProfileRow:
        dev_str = lat.row_device(job.runtime, self.device)
        base = ProfileRow(model=name, runtime=job.runtime, device=dev_str, batch=job.batch, dtype=job.dtype,
                          status="ok")
        try:
            if job.runtime.startswith("onnxruntime"):
                m, extra = self._time_ort(net, job)
            else:
                m, extra = self._time_torch(net, job), {}
        except Unavailable as e:
            return replace(base, status="unavailable", error=_err(e))
        except Exception as e:  # one runtime failing must not stop the sweep
            if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
                self.release()
            return replace(base, status="failed", error=_err(e))
        t = m.timing
        return replace(base, median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms, cv=t.cv, runs=t.runs,
                       throughput=job.batch / (t.median_ms / 1e3) if t.median_ms > 0 else None,
                       threads=m.threads, setup_s=m.setup_s, clock=t.clock,
                       warning=t.spread_warning(self.timing.max_cv), **extra)

    def _module(self, net: Net, dtype: str):
        if dtype not in self._modules:
            self._modules.clear()  # one prepared copy at a time
            self._modules[dtype] = lat.prepare_module(net.module, self.device, DTYPES[dtype])
        return self._modules[dtype]

    def _time_torch(self, net: Net, job: Job) -> lat.Measurement:
        if job.runtime == "cudagraph" and self.device.type != "cuda":
            raise Unavailable("cudagraph needs --device cuda (CUDA graphs are a CUDA feature)")
        module = self._module(net, job.dtype)
        x = net.example_input(job.batch, device=self.device, dtype=DTYPES[job.dtype])
        return lat.time_torch(module, x, runtime=job.runtime, config=self.timing, threads=self.threads,
                              tf32=self.tf32)

    def _export(self, net: Net, job: Job):
        """The ONNX file for (batch, dtype), exported once per model (static shapes)."""
        from surgery.core.onnx_io import export_model

        key = (job.batch, job.dtype)
        if key not in self._exports:
            try:
                dtype = DTYPES[job.dtype]
                module = net.module.eval() if dtype == torch.float32 else lat.prepare_module(net.module, torch.device("cpu"), dtype)
                exported = export_model(module, net.example_input(job.batch, dtype=dtype))
                path = self.tmp / f"model-b{job.batch}-{job.dtype}.onnx"
                path.write_bytes(exported.data)
                self._exports[key] = (path, exported)
            except Exception as e:
                self._exports[key] = (None, e)
        path, exported = self._exports[key]
        if path is None:
            raise SurgeryError(f"ONNX export: {_err(exported)}")
        return path, exported

    def _time_ort(self, net: Net, job: Job):
        from surgery.core.onnx_io import verify_session

        if job.runtime != "onnxruntime:cpu" and self.device.type != "cuda":
            raise Unavailable(f"{job.runtime} needs --device cuda")
        dtype = DTYPES[job.dtype]
        if dtype not in lat.NUMPY_DTYPES:
            raise Unavailable(f"onnxruntime cannot be fed {job.dtype} (numpy has no such type); use float32 or float16")
        lat.check_ort(job.runtime, self.device)  # before the (slow) export
        path, exported = self._export(net, job)
        t0 = time.perf_counter()
        sess = lat.ort_session(path, job.runtime, self.device, threads=self.threads, dtype=dtype, tf32=self.tf32)
        rtol = 5e-3 if (self.tf32 and dtype == torch.float32) else None
        rep = verify_session(sess, net.module, net.input_shape, batch=job.batch, dtype=dtype, probes=1, rtol=rtol,
                             what=f"ONNX model ({job.runtime})")
        setup = time.perf_counter() - t0
        x = net.example_input(job.batch, device=self.device if job.runtime != "onnxruntime:cpu" else "cpu", dtype=dtype)
        m = lat.time_onnxruntime(sess, x, job.runtime, config=self.timing, threads=self.threads, setup_s=setup)
        onnx_info = {"exporter": exported.exporter, "opset": exported.opset, "max_abs": rep.max_abs,
                     "max_rel": rep.max_rel, "export_s": round(exported.export_s, 3)}
        if exported.notes:
            onnx_info["notes"] = list(exported.notes)
        return m, {"onnx": onnx_info}
