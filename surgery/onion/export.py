"""An OnionNet cascade as two ONNX graphs with a dynamic batch, run as a pair in ONNX Runtime.

- ``S1``: ``input`` (N, C, H, W) → ``s1_logits`` (N, K) and ``shared_0..`` (the tensors S2
  reads: S1's maps before every S2 conv, and the image when S2 has a layer-0 conv);
- ``S2``: ``shared_0..`` (M, ...) → ``output`` (M, C), for any M (the survivors).

Between the two sessions the host does what :func:`surgery.onion.runtime.run` does in
torch: the pass mask from S1's scores and thresholds, the compaction (numpy ``take`` of the
survivors: a gather), S2 on the block, and the scatter back.

Exported with the TorchScript exporter (``dynamo=False``) and ``dynamic_axes``: the graphs
are plain conv chains, it is the quick path, and its dynamic batch axis needs no
``torch.export`` shape constraints; both graphs are checked in ONNX Runtime against torch at
two batch sizes before anything is written.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from surgery.core.io import atomic_write, check_outputs
from surgery.core.net import Net
from surgery.core.onnx_io import ort_cpu_session, quiet_exporters
from zoo.onion import OnionCascade

RTOL = 1e-4
OPSET = 17


class _S1(nn.Module):
    def __init__(self, cascade: OnionCascade):
        super().__init__()
        self.cascade = cascade

    def forward(self, x: Tensor):
        logits, shared = self.cascade.stage1(x)
        return (logits, *shared)


class _S2(nn.Module):
    def __init__(self, cascade: OnionCascade):
        super().__init__()
        self.cascade = cascade

    def forward(self, *shared: Tensor):
        return self.cascade.stage2(*shared)


@dataclass(frozen=True)
class OnionExportReport:
    model: str
    output: tuple[str, str]  # S1 graph, S2 graph
    opset: int
    shared_names: tuple[str, ...]
    shared_shapes: tuple[tuple[int, ...], ...]  # without batch
    batches: tuple[int, ...]  # batch sizes the pair was checked at
    verify: dict  # {max_abs, max_rel}: the ORT pair (with compaction) vs torch's runtime on survivors
    size_bytes: tuple[int, int]
    export_s: float


def _cascade(net: Net) -> OnionCascade:
    if not isinstance(net.module, OnionCascade):
        raise SurgeryError(f"{net.source} is not an OnionNet cascade; make one with `surgery onion split` "
                           f"or use zoo:onion_p / onion_d / onion_r")
    return net.module


def export_bytes(cascade: OnionCascade, input_shape, *, opset: int = OPSET) -> tuple[bytes, bytes, tuple[str, ...]]:
    """The two ONNX graphs (in memory) and the names of the shared tensors."""
    cascade = cascade.eval()
    x = torch.randn(2, *input_shape)
    with torch.no_grad():
        _, shared = cascade.stage1(x)
    names = tuple(f"shared_{i}" for i in range(len(shared)))
    b1, b2 = io.BytesIO(), io.BytesIO()
    batch = {0: "batch"}
    with quiet_exporters(), torch.no_grad():
        torch.onnx.export(_S1(cascade), (x,), b1, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["s1_logits", *names],
                          dynamic_axes={n: batch for n in ("input", "s1_logits", *names)})
        torch.onnx.export(_S2(cascade), tuple(shared), b2, dynamo=False, opset_version=opset,
                          input_names=list(names), output_names=["output"],
                          dynamic_axes={n: batch for n in (*names, "output")})
    return b1.getvalue(), b2.getvalue(), names


class OrtCascade:
    """The S1/S2 session pair with the host-side pass rule, compaction and scatter."""

    def __init__(self, s1, s2, thresholds: np.ndarray):
        self.s1, self.s2 = s1, s2
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.names = [i.name for i in s2.get_inputs()]

    def stage1(self, x: np.ndarray):
        outs = self.s1.run(None, {"input": x})
        return outs[0], outs[1:]

    def mask(self, logits: np.ndarray) -> np.ndarray:
        if logits.shape[1] == 1:
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores = e / e.sum(axis=1, keepdims=True)
        return (scores >= self.thresholds).any(axis=1)

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None):
        """``(s1_logits, passed, output)``; output rows of rejected samples are NaN."""
        logits, shared = self.stage1(x)
        passed = self.mask(logits) if mask is None else mask
        rows = np.flatnonzero(passed)
        out = None
        if rows.size:
            block = {n: np.take(t, rows, axis=0) for n, t in zip(self.names, shared)}  # compaction (gather)
            out_c = self.s2.run(None, block)[0]
            out = np.full((x.shape[0], out_c.shape[1]), np.nan, dtype=out_c.dtype)
            out[rows] = out_c  # scatter back
        return logits, passed, out


def ort_cascade(s1_data, s2_data, thresholds, *, threads: int | None = None) -> OrtCascade:
    s1, s2 = ort_cpu_session(s1_data), ort_cpu_session(s2_data)
    if threads:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        src = lambda d: d if isinstance(d, bytes) else str(d)
        s1 = ort.InferenceSession(src(s1_data), sess_options=so, providers=["CPUExecutionProvider"])
        s2 = ort.InferenceSession(src(s2_data), sess_options=so, providers=["CPUExecutionProvider"])
    return OrtCascade(s1, s2, thresholds)


def check_pair(pair: OrtCascade, cascade: OnionCascade, input_shape, batches=(1, 5), seed: int = 0) -> dict:
    """The ORT pair against torch's compacted runtime on random masks (survivors' outputs and
    S1 logits); raises above RTOL."""
    from surgery.onion.runtime import forced_mask, run

    worst_abs, worst_rel = 0.0, 0.0
    for i, b in enumerate(batches):
        g = torch.Generator().manual_seed(seed + i)
        x = torch.randn((b, *input_shape), generator=g)
        mask = forced_mask(b, 0.6, seed=seed + i)
        if not mask.any():
            mask[0] = True
        ref = run(cascade, x, mask=mask)
        logits, _, out = pair(x.numpy(), mask.numpy())
        for a, r in ((torch.from_numpy(logits), ref.s1_logits), (torch.from_numpy(out)[mask], ref.output[mask])):
            d = (a - r).abs().max().item()
            scale = r.abs().max().item()
            worst_abs = max(worst_abs, d)
            worst_rel = max(worst_rel, d / scale if scale > 0 else (0.0 if d == 0 else float("inf")))
    if worst_rel > RTOL:
        raise SurgeryError(f"the ONNX pair differs from torch by {worst_rel:.3g} (relative; limit {RTOL:g}); "
                           f"nothing written")
    return {"max_abs": worst_abs, "max_rel": worst_rel}


def default_outputs(model_ref: str) -> tuple[Path, Path]:
    from surgery.core.io import default_output

    return default_output([model_ref], "-s1", ".onnx"), default_output([model_ref], "-s2", ".onnx")


def export(net: Net, outputs: tuple[str | Path, str | Path] | None = None, *, force: bool = False,
           opset: int = OPSET) -> OnionExportReport:
    """Write the S1 and S2 graphs (verified in ONNX Runtime first; nothing written on failure)."""
    cascade = _cascade(net)
    outs = tuple(outputs) if outputs else default_outputs(net.source)
    if len(outs) != 2 or Path(outs[0]).resolve() == Path(outs[1]).resolve():
        raise SurgeryError("onion export writes two files (S1 and S2); give two different names")
    check_outputs(outs, force=force, inputs=[net.source])
    t0 = time.perf_counter()
    d1, d2, names = export_bytes(cascade, net.input_shape, opset=opset)
    export_s = time.perf_counter() - t0
    pair = ort_cascade(d1, d2, cascade.thresholds.numpy())
    batches = (1, 5)
    v = check_pair(pair, cascade, net.input_shape, batches)
    shapes = tuple(tuple(int(d.dim_value) for d in i.type.tensor_type.shape.dim[1:])
                   for i in _graph_inputs(d2))

    def write(tmps):
        tmps[0].write_bytes(d1)
        tmps[1].write_bytes(d2)

    written = atomic_write(outs, write, force=force, inputs=[net.source])
    return OnionExportReport(net.source, (str(written[0]), str(written[1])), opset, names, shapes, batches, v,
                             (len(d1), len(d2)), export_s)


def _graph_inputs(data: bytes):
    import onnx

    proto = onnx.load_from_string(data)
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]
