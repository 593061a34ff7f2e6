"""Measured latency: PyTorch eager, CUDA graphs, ``torch.compile`` and ONNX Runtime — each
runtime's timed step. How a forward pass is timed (warm-up, one synchronised sample per pass,
adaptive repeats, statistics) is :mod:`analyzers.timing`; devices and machine facts are
:mod:`analyzers.devices`. Their names are re-exported here, the profiler's one entry point.

A runtime that cannot run here (CUDA graphs on CPU, an ONNX Runtime provider that is not
installed) raises :class:`Unavailable`; any other exception is a failure of that runtime. The
profiler turns both into rows; neither is fatal to a sweep.
"""

from __future__ import annotations

import contextlib
import copy
import time
import types
from collections.abc import Callable

import torch
from torch import nn

from analyzers.devices import (cpu_model, device_info, expand_runtimes, ort_providers,  # noqa: F401 (re-exported)
                               resolve_device, row_device)
from analyzers.timing import (DTYPES, ORT_PROVIDERS, ORT_RUNTIMES, RUNTIMES, TORCH_RUNTIMES,  # noqa: F401
                              Measurement, Timing, TimingConfig, Unavailable, measure, percentile, summarize)
from surgery.core.errors import SurgeryError
from surgery.core.onnx_io import NUMPY_DTYPES
from surgery.core.ort_session import ort_session as build_session

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
