"""``onion export``: an OnionNet cascade as two ONNX graphs (S1, S2) with a dynamic batch
(:mod:`zoo.onion_onnx`), checked as a pair in ONNX Runtime against torch's compacted runtime
(:func:`zoo.onion_runtime.run`) at two batch sizes before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgery.core.errors import SurgeryError
from surgery.core.io import atomic_write, check_outputs, default_output
from surgery.core.net import Net
from surgery.core.probe import RANDOM, Probe
from surgery.core.verify import compare
from zoo.onion import OnionCascade, cascade_of
from zoo.onion_onnx import OPSET, OrtCascade, export_bytes, ort_cascade
from zoo.onion_runtime import forced_mask, run

RTOL = 1e-4


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


class _Masked(nn.Module):
    """One side of the pair check as a module for :func:`surgery.core.verify.compare`: S1's
    logits and the survivors' outputs under the forced mask of the batch's size."""

    def __init__(self, run_masked, masks: dict):
        super().__init__()
        self.run_masked, self.masks = run_masked, masks

    def forward(self, x: torch.Tensor):
        mask = self.masks[x.shape[0]]
        logits, out = self.run_masked(x, mask)
        return logits, out[mask]


def check_pair(pair: OrtCascade, cascade: OnionCascade, input_shape, batches=(1, 5), seed: int = 0) -> dict:
    """The ORT pair against torch's compacted runtime on random masks (survivors' outputs and
    S1 logits, :func:`surgery.core.verify.compare`); raises above RTOL."""
    xs, masks = [], {}
    for i, b in enumerate(batches):
        xs.append(torch.randn((b, *input_shape), generator=torch.Generator().manual_seed(seed + i)))
        mask = forced_mask(b, 0.6, seed=seed + i)
        if not mask.any():
            mask[0] = True
        masks[b] = mask

    def in_torch(x, mask):
        res = run(cascade, x, mask=mask)
        return res.s1_logits, res.output

    def in_ort(x, mask):
        logits, _, out = pair(x.numpy(), mask.numpy())
        return torch.from_numpy(logits), torch.from_numpy(out)

    v = compare(_Masked(in_torch, masks), _Masked(in_ort, masks), input_shape,
                probe=Probe(tuple(xs), RANDOM, "random normal"))
    if not v.ok(RTOL):
        raise SurgeryError(f"the ONNX pair differs from torch by {v.max_rel:.3g} (relative; limit {RTOL:g}); "
                           f"nothing written")
    return {"max_abs": v.max_abs, "max_rel": v.max_rel}


def default_outputs(model_ref: str) -> tuple[Path, Path]:
    return default_output([model_ref], "-s1", ".onnx"), default_output([model_ref], "-s2", ".onnx")


def export(net: Net, outputs: tuple[str | Path, str | Path] | None = None, *, force: bool = False,
           opset: int = OPSET) -> OnionExportReport:
    """Write the S1 and S2 graphs (verified in ONNX Runtime first; nothing written on failure)."""
    cascade = cascade_of(net)
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
