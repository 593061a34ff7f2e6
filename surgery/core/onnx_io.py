"""ONNX in and out: export a module to ONNX bytes, run them in ONNX Runtime, and verify them
against PyTorch. The core the ``export`` surgery (:mod:`surgery.export`) and the latency
analyzers (:mod:`analyzers.profile`, :mod:`analyzers.latency`) share, so neither imports the other.

:func:`export_model` exports through ``torch.onnx``: the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, onnxscript) first, the TorchScript exporter
(``dynamo=False``) when that raises or its model fails the ``check``; the notes say which one
was used and why. The input is named ``input``; outputs get the names given (else the
exporter's). ``dynamic_batch`` makes dimension 0 of the input and of every output the symbolic
``batch`` (traced at batch >= 2: torch.export specialises a size-1 dimension). Library code never
prints: the exporters' warnings, logs and prints are silenced (:func:`quiet_exporters`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from surgery.core.errors import SurgeryError, first_line
from surgery.core.verify import compare

DEFAULT_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
EXPORTERS = ("auto", "dynamo", "torchscript")
_MAX_PROTO = 2**31 - 1  # protobuf's limit for a single-file ONNX model
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript", "onnx_ir",
                  "torch.fx.experimental.symbolic_shapes")


@dataclass(frozen=True)
class ExportedModel:
    """An exported, not yet written model (``proto`` bytes) and how it was made."""

    data: bytes
    exporter: str
    opset: int
    input_name: str
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]  # without batch; -1 for a symbolic dimension
    export_s: float
    notes: tuple[str, ...] = ()


@contextlib.contextmanager
def quiet_exporters():
    """Library code never prints: silence the exporters' warnings, logs and prints."""
    saved = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def error_line(e: BaseException) -> str:
    """``Type: first line`` of an exception (:func:`surgery.core.errors.first_line`); the
    exporters' wrappers give way to their cause."""
    while e.__cause__ is not None and type(e).__module__.startswith("torch.onnx"):
        e = e.__cause__
    text = first_line(e)
    return text if text == type(e).__name__ else f"{type(e).__name__}: {text}"


def _export_once(module: nn.Module, x: torch.Tensor, exporter: str, opset: int | None,
                 output_names: Sequence[str] | None, dynamic_batch: bool) -> bytes:
    import onnx

    names = list(output_names) if output_names else None
    with quiet_exporters(), torch.no_grad():
        if exporter == "dynamo":
            dyn = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                     output_names=names, dynamic_shapes=dyn, verbose=False, optimize=True)
            proto = prog.model_proto
        else:
            buf = io.BytesIO()
            axes = {n: {0: "batch"} for n in ["input", *(names or [])]} if dynamic_batch else None
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=names, dynamic_axes=axes, do_constant_folding=True, verbose=False)
            proto = onnx.load_from_string(buf.getvalue())
    if proto.ByteSize() > _MAX_PROTO:
        raise SurgeryError(f"the exported ONNX model is {proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB "
                           f"single-file limit")
    return proto.SerializeToString()


def _describe(data: bytes) -> tuple[int, str, tuple[str, ...], tuple[tuple[int, ...], ...]]:
    import onnx

    proto = onnx.load_from_string(data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    shapes = tuple(
        tuple(d.dim_value if d.HasField("dim_value") else -1 for d in o.type.tensor_type.shape.dim)[1:]
        for o in proto.graph.output
    )
    return int(opset), inputs[0] if inputs else "input", tuple(o.name for o in proto.graph.output), shapes


def export_model(module: nn.Module, x: torch.Tensor, *, opset: int | None = None, exporter: str = "auto",
                 check=None, output_names: Sequence[str] | None = None, dynamic_batch: bool = False) -> ExportedModel:
    """Export ``module`` traced on ``x`` to ONNX bytes (in memory; nothing is written).

    ``exporter="auto"`` tries dynamo, then TorchScript; ``check(data) -> None`` may raise a
    SurgeryError to reject a candidate (the verification), which in auto mode also moves on
    to the next exporter.
    """
    if exporter not in EXPORTERS:
        raise SurgeryError(f"unknown ONNX exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    if opset is not None:  # hostile-input fix (issue 11): an unsupported opset was silently replaced
        from torch.onnx import _constants as onnx_constants

        lo, hi = onnx_constants.ONNX_MIN_OPSET, onnx_constants.ONNX_MAX_OPSET
        if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
            raise SurgeryError(f"ONNX opset {opset} is not supported by the installed exporter (torch "
                               f"{torch.__version__}: opsets {lo}..{hi}); pass --opset in that range")
    notes: list[str] = []
    last: BaseException | None = None
    for name in order:
        t0 = time.perf_counter()
        try:
            data = _export_once(module, x, name, opset, output_names, dynamic_batch)
            if check is not None:
                check(data)
        except Exception as e:  # exporters raise anything; one line says why
            last = e
            notes.append(f"{name} exporter failed ({error_line(e)})")
            continue
        opset_used, input_name, output_names, output_shapes = _describe(data)
        if opset is not None and opset_used != opset:  # never a different opset than asked for
            last = SurgeryError(f"the {name} exporter wrote opset {opset_used}, not the requested {opset}")
            notes.append(f"{name} exporter cannot write opset {opset} (it wrote {opset_used})")
            continue
        if name == "torchscript" and exporter == "auto":
            notes.append("used the TorchScript exporter (dynamo=False)")
        return ExportedModel(data, name, opset_used, input_name, output_names, output_shapes,
                             time.perf_counter() - t0, tuple(notes))
    if isinstance(last, SurgeryError) and len(order) == 1:
        raise last
    raise SurgeryError("ONNX export failed: " + "; ".join(notes))


class OrtModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call interface, so that
    :func:`surgery.core.verify.compare` can hold it against the PyTorch model."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def __deepcopy__(self, memo):  # a session cannot be copied; it holds no parameters either
        return self

    def forward(self, x: torch.Tensor):
        return tuple(o.to(x.dtype) for o in ort_run(self.session, x))


NUMPY_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


def ort_run(session, x: torch.Tensor) -> list[torch.Tensor]:
    """Run an ONNX Runtime session once on a host copy of ``x``; outputs as float32 CPU tensors."""
    import numpy as np

    if x.dtype not in NUMPY_DTYPES:
        raise SurgeryError(f"ONNX Runtime takes no {_dtype_name(x.dtype)} input (numpy has no such type); "
                           f"use float32 or float16")
    name = session.get_inputs()[0].name
    outs = session.run(None, {name: x.detach().cpu().numpy()})
    return [torch.from_numpy(np.asarray(o)).float() for o in outs]


def verify_session(session, module: nn.Module, input_shape, *, batch: int, dtype: torch.dtype = torch.float32,
                   probes: int = 2, rtol: float | None = None, what: str = "ONNX export", probe=None):
    """Compare an ONNX Runtime session with ``module`` (in ``dtype``) on probe inputs (seeded
    random normal, or ``probe``: a :class:`surgery.core.probe.Probe` of real images).

    Returns the :class:`surgery.core.verify.VerifyReport`; raises SurgeryError above ``rtol``.
    """
    rtol = DEFAULT_RTOL.get(dtype, 1e-2) if rtol is None else rtol
    try:
        with quiet_exporters():
            rep = compare(module, OrtModule(session), input_shape, probes=probes, batch=batch, dtype=dtype,
                          probe=probe)
    except SurgeryError:
        raise
    except Exception as e:
        raise SurgeryError(f"{what}: could not run in ONNX Runtime ({error_line(e)})") from None
    if not rep.ok(rtol):
        raise SurgeryError(f"{what}: outputs differ from PyTorch: max rel {rep.max_rel:.3g} > {rtol:g} "
                           f"(max abs {rep.max_abs:.3g}, {_dtype_name(dtype)})")
    return rep
