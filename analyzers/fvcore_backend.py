"""fvcore's ``FlopCountAnalysis`` as a second opinion beside the native count.

fvcore traces with ``torch.jit`` and fails on the meta device, so this backend runs the
model for real: one forward pass on CPU tensors at the requested input (seeded random
data, no_grad, eval mode). It costs real compute and activation memory. fvcore's "flops"
are multiply-accumulates for conv/linear (one fused multiply-add = one flop) plus its
handles for BatchNorm, norms, upsampling and adaptive average pooling — the native
"fvcore" convention mirrors exactly that. Its warnings are captured, not printed; the ops
it skipped are returned in ``unsupported``.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from surgery.core.errors import SurgeryError, first_line
from surgery.core.net import Net

# fvcore's own operator names for the conv+linear (matmul) class
MATMUL_OPERATORS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum")


@dataclass(frozen=True)
class FvcoreReport:
    model: str
    input_shape: tuple[int, ...]
    batch: int
    total: int  # fvcore's total "flops" (MACs for conv/linear, plus its other handles)
    by_operator: dict[str, int]
    by_module: dict[str, int]  # every module path ("" = the whole model)
    unsupported: dict[str, int]  # ops fvcore skipped -> calls
    seconds: float  # wall time of the fvcore analysis (trace + real forward)
    note: str = "fvcore FlopCountAnalysis on real CPU tensors (it cannot run on the meta device)"

    @property
    def matmul_macs(self) -> int:
        """fvcore's conv + linear/matmul count: multiply-accumulates."""
        return sum(v for k, v in self.by_operator.items() if k in MATMUL_OPERATORS)


@contextmanager
def _eval_quiet(module: nn.Module):
    """Eval mode and silence for the duration; training flags are restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    loggers = [logging.getLogger(n) for n in ("fvcore", "fvcore.nn.jit_analysis", "iopath")]
    levels = [lg.level for lg in loggers]
    try:
        module.eval()
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, t in flags:
            m.training = t
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def fvcore_count(net_or_module: Net | nn.Module, input_shape: Sequence[int] | None = None, *,
                 batch: int = 1, seed: int = 0) -> FvcoreReport:
    try:
        with warnings.catch_warnings():  # fvcore's import trips torch.jit deprecation warnings
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise SurgeryError("--backend fvcore needs the fvcore package (pip install fvcore)") from None
    if isinstance(net_or_module, Net):
        module, name = net_or_module.module, net_or_module.source
        shape = tuple(input_shape or net_or_module.input_shape)
    else:
        module, name = net_or_module, type(net_or_module).__name__
        shape = tuple(input_shape or getattr(net_or_module, "input_shape", ()) or ())
    if not shape:
        raise SurgeryError(f"{name}: no input shape known for fvcore; pass --input CxHxW")
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    if first is not None and first.device.type != "cpu":
        raise SurgeryError(f"{name}: the fvcore backend runs on CPU; the model is on {first.device}")
    dtype = first.dtype if first is not None else torch.float32
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g).to(dtype)
    t0 = time.perf_counter()
    with _eval_quiet(module), torch.no_grad():
        try:
            fca = FlopCountAnalysis(module, (x,))
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = int(fca.total())
            by_op = {k: int(v) for k, v in fca.by_operator().items()}
            by_mod = {k: int(v) for k, v in fca.by_module().items()}
            unsupported = {k: int(v) for k, v in fca.unsupported_ops().items()}
        except Exception as e:  # jit tracing fails in many ways
            raise SurgeryError(f"{name}: fvcore could not analyse the model ({type(e).__name__}: {first_line(e)}); "
                               f"use --backend native") from None
    return FvcoreReport(name, shape, batch, total, by_op, by_mod, unsupported, time.perf_counter() - t0)
