"""ONNX export with verification (DESIGN.md: export is a function-preserving surgery).

:func:`export_onnx` exports a :class:`Net` through ``torch.onnx``: the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, onnxscript) first, the TorchScript exporter
(``dynamo=False``) when that raises or its model fails verification; the report says which
one was used and why. Before anything is written, the exported model runs in ONNX Runtime
(CPU provider) on probe inputs and its outputs are compared with PyTorch's by
:func:`surgery.verify.compare` (max abs, and max abs / max |reference| as the relative
difference); a relative difference above ``rtol`` (1e-4 for float32) is an error and no file
is written. The file is written atomically (:func:`surgery.io.atomic_write`), never over an
existing file without ``force`` and never over an input.

The exported graph has a static input shape ``(batch, *net.input_shape)``, input name
``input``; a model with several outputs (tuple, list, dict) gets them flattened in order.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgery.errors import SurgeryError
from surgery.io import atomic_write, check_outputs
from surgery.net import Net
from surgery.verify import compare

DEFAULT_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
EXPORTERS = ("auto", "dynamo", "torchscript")
_MAX_PROTO = 2**31 - 1  # protobuf's limit for a single-file ONNX model
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript", "onnx_ir",
                  "torch.fx.experimental.symbolic_shapes")


@dataclass(frozen=True)
class ExportReport:
    path: str
    opset: int
    exporter: str  # "dynamo" | "torchscript"
    batch: int
    dtype: str
    input_shape: tuple[int, ...]  # without batch
    input_name: str
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]  # without batch
    verified: bool
    provider: str | None  # ONNX Runtime provider the verification ran on
    probes: int
    max_abs: float | None
    max_rel: float | None
    rtol: float
    size_bytes: int
    export_s: float
    notes: tuple[str, ...] = ()


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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception; the exporters' wrappers give way to their cause."""
    while e.__cause__ is not None and type(e).__module__.startswith("torch.onnx"):
        e = e.__cause__
    msg = _ANSI.sub("", str(e)).strip()
    text = msg.splitlines()[0] if msg else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _export_once(module: nn.Module, x: torch.Tensor, exporter: str, opset: int | None) -> bytes:
    import onnx

    with quiet_exporters(), torch.no_grad():
        if exporter == "dynamo":
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                     verbose=False, optimize=True)
            proto = prog.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                              do_constant_folding=True, verbose=False)
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
                 check=None) -> ExportedModel:
    """Export ``module`` traced on ``x`` to ONNX bytes (in memory; nothing is written).

    ``exporter="auto"`` tries dynamo, then TorchScript; ``check(data) -> None`` may raise a
    SurgeryError to reject a candidate (the verification), which in auto mode also moves on
    to the next exporter.
    """
    if exporter not in EXPORTERS:
        raise SurgeryError(f"unknown ONNX exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    notes: list[str] = []
    last: BaseException | None = None
    for name in order:
        t0 = time.perf_counter()
        try:
            data = _export_once(module, x, name, opset)
            if check is not None:
                check(data)
        except Exception as e:  # exporters raise anything; one line says why
            last = e
            notes.append(f"{name} exporter failed ({_first_line(e)})")
            continue
        opset_used, input_name, output_names, output_shapes = _describe(data)
        if name == "torchscript" and exporter == "auto":
            notes.append("used the TorchScript exporter (dynamo=False)")
        return ExportedModel(data, name, opset_used, input_name, output_names, output_shapes,
                             time.perf_counter() - t0, tuple(notes))
    if isinstance(last, SurgeryError) and len(order) == 1:
        raise last
    raise SurgeryError("ONNX export failed: " + "; ".join(notes))


class OrtModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call interface, so that
    :func:`surgery.verify.compare` can hold it against the PyTorch model."""

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


def ort_cpu_session(data: bytes | str | Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise SurgeryError("onnxruntime is not installed; it is needed to verify an ONNX export "
                           "(pip install onnxruntime) — or pass verify=False") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def verify_session(session, module: nn.Module, input_shape, *, batch: int, dtype: torch.dtype = torch.float32,
                   probes: int = 2, rtol: float | None = None, what: str = "ONNX export"):
    """Compare an ONNX Runtime session with ``module`` (in ``dtype``) on probe inputs.

    Returns the :class:`surgery.verify.VerifyReport`; raises SurgeryError above ``rtol``.
    """
    rtol = DEFAULT_RTOL.get(dtype, 1e-2) if rtol is None else rtol
    try:
        with quiet_exporters():
            rep = compare(module, OrtModule(session), input_shape, probes=probes, batch=batch, dtype=dtype)
    except SurgeryError:
        raise
    except Exception as e:
        raise SurgeryError(f"{what}: could not run in ONNX Runtime ({_first_line(e)})") from None
    if not rep.ok(rtol):
        raise SurgeryError(f"{what}: outputs differ from PyTorch: max rel {rep.max_rel:.3g} > {rtol:g} "
                           f"(max abs {rep.max_abs:.3g}, {_dtype_name(dtype)})")
    return rep


def export_onnx(
    net: Net,
    path: str | Path,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    opset: int | None = None,
    verify: bool = True,
    force: bool = False,
    exporter: str = "auto",
    rtol: float | None = None,
    probes: int = 2,
    inputs: Iterable[str | Path] = (),
) -> ExportReport:
    """Export ``net`` to ONNX at ``path``, verified against PyTorch before anything is written.

    ``inputs`` are the command's input files (never overwritten). ``rtol`` defaults to 1e-4
    for float32, 1e-2 for float16 and 5e-2 for bfloat16 (relative to the largest output
    magnitude, as in :mod:`surgery.verify`).
    """
    if not isinstance(net, Net):
        raise SurgeryError("export_onnx takes a surgery Net (surgery.io.load gives one)")
    if batch < 1:
        raise SurgeryError(f"export batch must be positive, got {batch}")
    check_outputs([path], force=force, inputs=[*inputs, net.source] if net.source else inputs)
    rtol = DEFAULT_RTOL.get(dtype, 1e-2) if rtol is None else rtol
    module = net.module.eval() if dtype == torch.float32 else _cast(net.module, dtype)
    x = net.example_input(batch, dtype=dtype)
    verified: dict = {}

    def check(data: bytes) -> None:
        if verify:
            verified["report"] = verify_session(ort_cpu_session(data), net.module, net.input_shape, batch=batch,
                                                dtype=dtype, probes=probes, rtol=rtol)

    exported = export_model(module, x, opset=opset, exporter=exporter, check=check)
    rep = verified.get("report")

    def write(tmps):
        tmps[0].write_bytes(exported.data)

    out = atomic_write([path], write, force=force, inputs=[*inputs, net.source] if net.source else inputs)[0]
    return ExportReport(
        path=str(out),
        opset=exported.opset,
        exporter=exported.exporter,
        batch=batch,
        dtype=_dtype_name(dtype),
        input_shape=tuple(net.input_shape),
        input_name=exported.input_name,
        output_names=exported.output_names,
        output_shapes=exported.output_shapes,
        verified=rep is not None,
        provider="CPUExecutionProvider" if rep is not None else None,
        probes=probes if rep is not None else 0,
        max_abs=rep.max_abs if rep is not None else None,
        max_rel=rep.max_rel if rep is not None else None,
        rtol=rtol,
        size_bytes=len(exported.data),
        export_s=exported.export_s,
        notes=exported.notes,
    )


def _cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(module).eval().to(dtype)


# ------------------------------------------------------------------ Darknet .cfg + .weights


@dataclass(frozen=True)
class DarknetExportReport:
    cfg: str
    weights: str
    layers: int
    params: int
    weights_bytes: int
    identical: bool  # the written files read back to exactly the same tensors


def write_darknet(net, cfg_path, weights_path) -> DarknetExportReport:
    """Write a Darknet-built ``net`` as ``.cfg`` + ``.weights`` (call it on temporary paths
    inside :func:`surgery.io.atomic_write`) and check that the project's importer reads both
    back to exactly the same tensors."""
    from surgery.graph import is_darknet
    from zoo.darknet import build_darknet, read_weights, write_weights

    if not is_darknet(net.module) or net.recipe:
        raise SurgeryError(
            f"{net.source or 'this model'}: Darknet export needs a Darknet-built network (a .cfg, zoo:yolov3, "
            f"a Darknet share) without fx-graph surgeries; export it with --onnx instead"
        )
    text = net.module.cfg_text()
    Path(cfg_path).write_text(text)
    nbytes = write_weights(net.module, weights_path, overwrite=True)
    back = build_darknet(text, source=str(cfg_path))
    read_weights(back, weights_path)
    mine, theirs = net.module.state_dict(), back.state_dict()
    bad = [k for k in mine if not k.endswith("num_batches_tracked") and not torch.equal(mine[k], theirs.get(k))]
    if bad or set(mine) != set(theirs):
        raise SurgeryError(f"Darknet export: the written files do not read back to the same weights ({bad[:3]}); "
                           "nothing written (a bug: please report)")
    return DarknetExportReport(str(cfg_path), str(weights_path), len(net.module.layers), net.params, nbytes, True)
