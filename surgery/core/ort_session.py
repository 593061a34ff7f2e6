"""The one ONNX Runtime session builder.

Every session the project opens is made by :func:`ort_session`: the export and import checks
(:mod:`surgery.core.onnx_io`), the OnionNet S1/S2 pair, and the latency analyzers
(:func:`analyzers.latency.ort_session` picks the providers of a runtime name and calls this).
So the options mean the same everywhere: the runtime's own log is silenced (library code
never prints), ``threads`` sets the intra-op pool with one inter-op thread (what timing
needs), ``optimization`` the graph optimisation level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from surgery.core.errors import SurgeryError

CPU = ("CPUExecutionProvider",)
# graph optimisation levels by name (ONNX Runtime's default is "all")
OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}


def ort_session(model: bytes | str | Path, *, providers: Sequence = CPU, threads: int | None = None,
                optimization: str = "all", profile_prefix: str | Path | None = None,
                optimized_path: str | Path | None = None):
    """An ``onnxruntime.InferenceSession`` of ``model`` (ONNX bytes or a file path).

    ``providers``: ONNX Runtime's list (names, or ``(name, options)`` pairs), in order of
    preference; default the CPU provider. ``threads``: the intra-op threads, with one inter-op
    thread (default: ONNX Runtime's own choice). ``optimization``: ``disable``, ``basic``,
    ``extended`` or ``all``. ``profile_prefix`` turns on ONNX Runtime's profiler
    (``session.end_profiling()`` writes its JSON under that prefix); ``optimized_path`` saves
    the optimised graph the session runs.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise SurgeryError("onnxruntime is not installed (pip install onnxruntime; onnxruntime-gpu for CUDA); it "
                           "runs and checks ONNX graphs") from None
    if optimization not in OPTIMIZATION:
        raise SurgeryError(f"unknown graph optimisation level {optimization!r}; choose from {', '.join(OPTIMIZATION)}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION[optimization])
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=list(providers))
