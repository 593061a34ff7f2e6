"""An OnionNet cascade as two ONNX graphs with a dynamic batch, run as a pair in ONNX Runtime.

- ``S1``: ``input`` (N, C, H, W) → ``s1_logits`` (N, K) and ``shared_0..`` (the tensors S2
  reads: S1's maps before every S2 conv, and the image when S2 has a layer-0 conv);
- ``S2``: ``shared_0..`` (M, ...) → ``output`` (M, C), for any M (the survivors).

Between the two sessions the host does what :func:`zoo.onion_runtime.run` does in torch:
the pass mask from S1's scores and thresholds, the compaction (numpy ``take`` of the
survivors: a gather), S2 on the block, and the scatter back. The export surgery
(:mod:`surgery.onion.export`) checks and writes the pair; the t(p) curve
(:mod:`analyzers.onion_curve`) times it.

Exported with the TorchScript exporter (``dynamo=False``) and ``dynamic_axes``: the graphs
are plain conv chains, it is the quick path, and its dynamic batch axis needs no
``torch.export`` shape constraints.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor, nn

from surgery.core.onnx_io import quiet_exporters
from surgery.core.ort_session import ort_session
from zoo.onion import OnionCascade

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
    """The pair of ONNX Runtime CPU sessions (``threads``: intra-op threads of each)."""
    return OrtCascade(ort_session(s1_data, threads=threads), ort_session(s2_data, threads=threads), thresholds)
