"""Timing a forward pass: the configuration, the adaptive loop and its statistics, shared by
every runtime :mod:`analyzers.latency` times (PyTorch eager, CUDA graphs, ``torch.compile``,
ONNX Runtime).

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

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from surgery.core.errors import SurgeryError


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


def _ms(x: float) -> str:
    """Milliseconds as people read them: ``1,250`` (never ``1.25e+03``), ``0.0123``."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
