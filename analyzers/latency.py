"""Measured latency: PyTorch eager, CUDA graphs, ``torch.compile`` and ONNX Runtime.

FLOPs are not speed (ShuffleNet v2 §3.1.1; Deep Roots root-64: 45 % fewer MACs, 12 % faster
on GPU), so the profiler times what a surgery really bought. How a forward pass is timed:

- **Warm-up** first (at least ``warmup`` runs and ``warmup_s`` seconds, untimed): lazy
  initialisation, allocator growth, cuDNN autotuning, ``torch.compile`` and TensorRT engine
  builds all happen here, never in a timed run.
- **One sample = one forward pass**, synchronised: on CPU ``time.perf_counter`` around the call
  under ``torch.inference_mode``; on CUDA a pair of ``torch.cuda.Event``\\ s recorded around the
  call and read after ``end.synchronize()`` (ONNX Runtime runs on its own stream, so its CUDA
  samples use ``perf_counter`` around ``run_with_iobinding`` + ``torch.cuda.synchronize``).
- **Adaptive repeats**: samples are taken until there are ``min_runs`` of them *and* they add
  up to ``min_time_s``, capped at ``max_runs`` samples or ``max_time_s`` seconds (then at least
  3 samples). The statistics are the median, the 10th/90th percentiles, the coefficient of
  variation (sample standard deviation / mean) and the number of samples; a CV above
  ``max_cv`` is flagged as too spread out to trust.
- **CUDA**: ``torch.backends.cudnn.benchmark = True`` while timing; TF32 off unless asked (so
  float32 means float32, and ONNX outputs can be held to a 1e-4 relative tolerance); CUDA
  graphs capture one forward on a static input after a warm-up on a side stream and time
  ``graph.replay()``.
- **CPU**: the thread count is ``torch.get_num_threads()`` (or ``threads``), and ONNX Runtime
  gets the same number of intra-op threads.

A runtime that cannot run here (CUDA graphs on CPU, an ONNX Runtime provider that is not
installed) raises :class:`Unavailable`; any other exception is a failure of that runtime. The
profiler turns both into rows; neither is fatal to a sweep.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import platform
import statistics
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from surgery.core.errors import SurgeryError, suggest
from surgery.core.onnx_io import NUMPY_DTYPES
from surgery.core.ort_session import ort_session as build_session

# Runtime names a user may ask for. ``onnxruntime`` means the provider(s) of the device:
# CPU on ``cpu``; CUDA, plus TensorRT when that provider is installed, on ``cuda``.
TORCH_RUNTIMES = ("torch", "cudagraph", "compile")
ORT_RUNTIMES = ("onnxruntime:cpu", "onnxruntime:cuda", "onnxruntime:tensorrt")
RUNTIMES = (*TORCH_RUNTIMES, "onnxruntime", *ORT_RUNTIMES)
ORT_PROVIDERS = {
    "onnxruntime:cpu": "CPUExecutionProvider",
    "onnxruntime:cuda": "CUDAExecutionProvider",
    "onnxruntime:tensorrt": "TensorrtExecutionProvider",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Unavailable(Exception):
    """This runtime cannot run in this environment (the message says what is missing)."""


@dataclass(frozen=True)
class TimingConfig:
    """How long and how often to time. Defaults aim at a median stable to ~1 %."""

    warmup: int = 3  # untimed runs, at least
    warmup_s: float = 0.25  # ... and at least this long
    min_runs: int = 10
    max_runs: int = 1000
    min_time_s: float = 1.0
    max_time_s: float = 30.0  # cap on the timed loop (stops once it has 3 samples)
    max_cv: float = 0.10  # above this the spread is flagged as untrustworthy

    def __post_init__(self):
        if self.min_runs < 1 or self.max_runs < 1 or self.warmup < 0:
            raise SurgeryError("timing: runs must be positive (min_runs, max_runs >= 1, warmup >= 0)")
        if self.max_runs < self.min_runs:
            raise SurgeryError(f"timing: max_runs ({self.max_runs}) is below min_runs ({self.min_runs})")
        if self.min_time_s < 0 or self.max_time_s <= 0 or self.warmup_s < 0:
            raise SurgeryError("timing: times must be non-negative (max_time_s > 0)")
        if not self.max_cv >= 0:  # NaN too
            raise SurgeryError(f"timing: max_cv {self.max_cv} must be a fraction >= 0 (e.g. 0.1 for 10%)")


@dataclass(frozen=True)
class Timing:
    """Statistics of the timed samples, in milliseconds per forward pass."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    cv: float  # sample standard deviation / mean (a fraction, not %)
    runs: int  # timed samples
    warmup_runs: int
    total_s: float  # wall time of the timed loop
    clock: str  # "perf_counter" | "cuda_event"

    def spread_warning(self, max_cv: float) -> str | None:
        if self.cv > max_cv:
            return (f"spread too wide to trust: CV {self.cv:.1%} > {max_cv:.0%} "
                    f"(p10 {_ms(self.p10_ms)} ms, p90 {_ms(self.p90_ms)} ms); quiet the machine or raise --min-time")
        return None


@dataclass(frozen=True)
class Measurement:
    """One runtime's timing of one model at one batch size and dtype."""

    runtime: str
    device: str
    timing: Timing
    setup_s: float  # building the runner (capture, compile, session) and warming it up
    threads: int | None  # CPU threads (torch intra-op, or ONNX Runtime intra-op); None on CUDA
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------ statistics


def percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted list, q in [0, 100]."""
    if not sorted_vals:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(samples_ms: list[float], *, warmup_runs: int = 0, total_s: float | None = None,
              clock: str = "perf_counter") -> Timing:
    if not samples_ms:
        raise ValueError("no timing samples")
    s = sorted(samples_ms)
    mean = statistics.fmean(s)
    sd = statistics.stdev(s) if len(s) > 1 else 0.0
    return Timing(
        median_ms=statistics.median(s),
        p10_ms=percentile(s, 10),
        p90_ms=percentile(s, 90),
        mean_ms=mean,
        min_ms=s[0],
        cv=sd / mean if mean > 0 else 0.0,
        runs=len(s),
        warmup_runs=warmup_runs,
        total_s=sum(s) / 1e3 if total_s is None else total_s,
        clock=clock,
    )


# ------------------------------------------------------------------ the timing loop


def measure(step: Callable[[], object], config: TimingConfig = TimingConfig(), *,
            sync: Callable[[], None] | None = None, cuda_events: bool = False) -> Timing:
    """Warm up, then time ``step()`` adaptively (see the module docstring).

    ``sync`` is called after every call (e.g. ``torch.cuda.synchronize``) so that a sample
    covers the work and not just its launch; ``cuda_events`` times each call with a pair of
    CUDA events on the current stream instead of the host clock.
    """
    sync = sync or (lambda: None)
    t0 = time.perf_counter()
    warm = 0
    while warm < config.warmup or (time.perf_counter() - t0 < config.warmup_s and warm < config.max_runs):
        step()
        sync()
        warm += 1

    if cuda_events:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def sample() -> float:
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def sample() -> float:
            a = time.perf_counter()
            step()
            sync()
            return (time.perf_counter() - a) * 1e3

    samples: list[float] = []
    begin = time.perf_counter()
    while True:
        samples.append(sample())
        elapsed = time.perf_counter() - begin
        n = len(samples)
        if n >= config.max_runs:
            break
        if n >= config.min_runs and elapsed >= config.min_time_s:
            break
        if elapsed >= config.max_time_s and n >= 3:
            break
    return summarize(samples, warmup_runs=warm, total_s=time.perf_counter() - begin,
                     clock="cuda_event" if cuda_events else "perf_counter")


# ------------------------------------------------------------------ devices


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device, or a SurgeryError that says what is missing."""
    text = (name or "cpu").strip().lower()
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise SurgeryError(f"unknown device {name!r}; use cpu or cuda (cuda:N for another GPU)") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise SurgeryError(f"device {name!r} is not supported by the profiler; use cpu or cuda")
    if not torch.cuda.is_available():
        why = (f"this PyTorch ({torch.__version__}) was built without CUDA" if torch.version.cuda is None
               else "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise SurgeryError(f"--device {name}: CUDA is not available: {why}; use --device cpu")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise SurgeryError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def expand_runtimes(names, device: torch.device) -> list[str]:
    """Validate runtime names and expand ``onnxruntime`` for the device (order kept, no repeats)."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name in ("ort", "onnx"):
            name = "onnxruntime"
        if name in ("eager",):
            name = "torch"
        if name not in RUNTIMES:
            raise SurgeryError(f"unknown runtime {raw!r}{suggest(name, RUNTIMES)}; choose from {', '.join(RUNTIMES)}")
        if name == "onnxruntime":
            if device.type == "cpu":
                expanded = ["onnxruntime:cpu"]
            else:
                expanded = ["onnxruntime:cuda"]
                if ORT_PROVIDERS["onnxruntime:tensorrt"] in ort_providers():
                    expanded.append("onnxruntime:tensorrt")
        else:
            expanded = [name]
        out.extend(e for e in expanded if e not in out)
    if not out:
        raise SurgeryError("no runtime given; choose from " + ", ".join(RUNTIMES))
    return out


def row_device(runtime: str, device: torch.device) -> str:
    """Where a runtime's row runs: the ONNX Runtime CPU provider is always the CPU."""
    return "cpu" if runtime == "onnxruntime:cpu" else str(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device, *, threads: int | None = None) -> dict:
    """What the numbers were measured on (recorded with every profile)."""
    info = {
        "device": str(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["cuda"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver_index": device.index,
        }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = {"version": ort.__version__, "providers": list(ort.get_available_providers())}
    except ImportError:
        info["onnxruntime"] = None
    return info


# ------------------------------------------------------------------ torch runtimes


@contextlib.contextmanager
def torch_settings(device: torch.device, *, threads: int | None = None, tf32: bool = False):
    """cuDNN benchmark mode and TF32 (CUDA) or the thread count (CPU) while timing; restored after."""
    saved_threads = torch.get_num_threads()
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
        elif threads:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)


def prepare_module(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """An eval-mode copy on ``device`` in ``dtype`` (the caller's module is never changed)."""
    m = copy.deepcopy(module).eval()
    return m.to(device=device, dtype=dtype)


def time_torch(module: nn.Module, x: torch.Tensor, *, runtime: str = "torch",
               config: TimingConfig = TimingConfig(), threads: int | None = None, tf32: bool = False) -> Measurement:
    """Time ``module(x)`` with PyTorch: ``torch`` (eager), ``cudagraph`` or ``compile``.

    ``module`` and ``x`` must already be on the device and in the dtype to time.
    """
    device = x.device
    if runtime == "cudagraph" and device.type != "cuda":
        raise Unavailable("cudagraph needs --device cuda (CUDA graphs are a CUDA feature)")
    if runtime not in TORCH_RUNTIMES:
        raise SurgeryError(f"time_torch: unknown runtime {runtime!r}")
    cuda = device.type == "cuda"
    notes: list[str] = []
    with torch_settings(device, threads=threads, tf32=tf32):
        t0 = time.perf_counter()
        if runtime == "torch":
            step = _eager_step(module, x)
        elif runtime == "cudagraph":
            step = _cudagraph_step(module, x, config)
            notes.append("CUDA graph replay of one captured forward (static input)")
        else:
            step = _compile_step(module, x, cuda)
            notes.append("torch.compile (inductor, default mode); compile time is in setup_s")
        setup = time.perf_counter() - t0
        sync = torch.cuda.synchronize if cuda else None
        t1 = time.perf_counter()
        ctx = torch.no_grad() if cuda else torch.inference_mode()
        with ctx:
            timing = measure(step, config, sync=sync, cuda_events=cuda)
        # warm-up (and so a first compile) counts as set-up, not as timed work
        setup += max(0.0, time.perf_counter() - t1 - timing.total_s)
        used_threads = None if cuda else torch.get_num_threads()
    return Measurement(runtime, str(device), timing, setup, used_threads, tuple(notes))


def _eager_step(module: nn.Module, x: torch.Tensor):
    def step():
        return module(x)

    return step


def _cudagraph_step(module: nn.Module, x: torch.Tensor, config: TimingConfig):
    static_x = x.clone()
    side = torch.cuda.Stream(device=x.device)
    with torch.no_grad():
        # warm-up on a side stream (cuDNN autotuning, allocator) before capture, as the docs ask
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(max(3, config.warmup)):
                module(static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        torch.cuda.synchronize(x.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module(static_x)
    torch.cuda.synchronize(x.device)

    def step():
        graph.replay()
        return static_out

    return step


def own_code(module: nn.Module) -> Callable:
    """``module(x)`` as a function with a code object of its own.

    Dynamo keeps its compiled graphs, guards and recompile count per code object. Compiling
    the module itself goes through one wrapper that every compiled module shares, so after
    eight differently built models the recompile limit silently leaves the next ones in eager
    mode. A fresh code object gives each timed model a cache of its own (freed with the
    function) without ``torch.compiler.reset()``, which would drop every compiled graph of the
    process, the caller's included."""
    def call(x):
        return module(x)

    return types.FunctionType(call.__code__.replace(), call.__globals__, "forward", None, call.__closure__)


def _compile_step(module: nn.Module, x: torch.Tensor, cuda: bool):
    compiled = torch.compile(own_code(module))
    ctx = torch.no_grad() if cuda else torch.inference_mode()
    with ctx:
        compiled(x)  # compile now so that a compiler failure surfaces here, with its message
        if cuda:
            torch.cuda.synchronize(x.device)

    def step():
        return compiled(x)

    return step


# ------------------------------------------------------------------ ONNX Runtime


def check_ort(runtime: str, device: torch.device) -> None:
    """Raise Unavailable unless ONNX Runtime can run ``runtime`` on ``device`` here."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)") from None
    if runtime not in ORT_PROVIDERS:
        raise SurgeryError(f"unknown ONNX Runtime runtime {runtime!r}; choose from {', '.join(ORT_PROVIDERS)}")
    provider = ORT_PROVIDERS[runtime]
    if runtime != "onnxruntime:cpu" and device.type != "cuda":
        raise Unavailable(f"{runtime} needs --device cuda")
    have = ort.get_available_providers()
    if provider not in have:
        pkg = "onnxruntime-gpu" if runtime == "onnxruntime:cuda" else "onnxruntime-gpu with the TensorRT libraries"
        raise Unavailable(f"onnxruntime {ort.__version__} has no {provider} (available: {', '.join(have)}); "
                          f"install {pkg}")


def ort_session(path, runtime: str, device: torch.device, *, threads: int | None = None,
                dtype: torch.dtype = torch.float32, tf32: bool = False, profile_prefix: str | None = None,
                optimized_path: str | None = None):
    """An ONNX Runtime session for ``runtime`` (``onnxruntime:cpu|cuda|tensorrt``), or Unavailable.

    ``profile_prefix`` turns on ONNX Runtime's own profiler (``session.end_profiling()`` writes
    its JSON under that prefix); ``optimized_path`` saves the optimized graph it runs (whose node
    names the profile reports)."""
    check_ort(runtime, device)
    provider = ORT_PROVIDERS[runtime]
    if runtime == "onnxruntime:cpu":
        providers = ["CPUExecutionProvider"]
        threads = threads or torch.get_num_threads()
    else:
        cuda_opts = {"device_id": device.index or 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                     "use_tf32": 1 if tf32 else 0}
        providers = [("CUDAExecutionProvider", cuda_opts)]
        threads = None
        if runtime == "onnxruntime:tensorrt":
            trt_opts = {"device_id": device.index or 0, "trt_fp16_enable": dtype == torch.float16}
            providers.insert(0, ("TensorrtExecutionProvider", trt_opts))
    sess = build_session(path, providers=providers, threads=threads, optimization="all",
                         profile_prefix=profile_prefix, optimized_path=optimized_path)
    if provider not in sess.get_providers():
        raise Unavailable(f"onnxruntime could not start {provider} (session uses {', '.join(sess.get_providers())})")
    return sess


def time_onnxruntime(sess, x: torch.Tensor, runtime: str, *, config: TimingConfig = TimingConfig(),
                     threads: int | None = None, setup_s: float = 0.0) -> Measurement:
    """Time ``sess`` on ``x``: numpy in/out on the CPU provider; on CUDA the input is bound in
    device memory (IOBinding), so no host copy is timed."""
    import numpy as np

    t0 = time.perf_counter()
    name = sess.get_inputs()[0].name
    if x.dtype not in NUMPY_DTYPES:
        raise Unavailable(f"onnxruntime takes no {str(x.dtype).replace('torch.', '')} input (numpy has no such type)")
    if runtime == "onnxruntime:cpu":
        feed = {name: x.detach().cpu().numpy()}

        def step():
            return sess.run(None, feed)

        sync = None
        dev = "cpu"
    else:
        xc = x.detach().contiguous()
        binding = sess.io_binding()
        binding.bind_input(name=name, device_type="cuda", device_id=xc.device.index or 0,
                           element_type=np.dtype(NUMPY_DTYPES[xc.dtype]).type, shape=tuple(xc.shape),
                           buffer_ptr=xc.data_ptr())
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cuda", xc.device.index or 0)

        def step():
            sess.run_with_iobinding(binding)
            return xc  # keeps the bound input alive

        sync = torch.cuda.synchronize
        dev = str(xc.device)
    timing = measure(step, config, sync=sync)
    setup = setup_s + max(0.0, time.perf_counter() - t0 - timing.total_s)
    used = (threads or torch.get_num_threads()) if runtime == "onnxruntime:cpu" else None
    return Measurement(runtime, dev, timing, setup, used, ())


def _ms(x: float) -> str:
    """Milliseconds as people read them: ``1,250`` (never ``1.25e+03``), ``0.0123``."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
