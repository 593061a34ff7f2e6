"""Equivalence harness: run two modules on the same probe inputs and measure how far apart
their outputs are.

``max_rel`` is the max absolute difference divided by the largest magnitude of the
reference output (per output tensor, then the worst over outputs): an elementwise ratio
explodes on outputs that are near zero and says nothing about the network.

A check (:meth:`VerifyReport.ok`) is ``max_abs <= atol + rtol * max|reference|`` per output,
as ``torch.testing.assert_close`` combines atol and rtol: the relative part scales with the
output's magnitude, and the absolute floor (:data:`ATOL`, a few units in the last place of 1.0
in the compared dtype) keeps an output that is near zero everywhere (a sigmoid map of
background) from failing on rounding noise that is exact to 1e-7 absolute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surgery.core import safety
from surgery.core.errors import SurgeryError
from surgery.core.graph import output_tensors
from surgery.core.net import batch_unit


# The absolute floor of a check per compared dtype: rounding noise at the scale of 1.0.
ATOL = {"float32": 1e-6, "float64": 1e-12, "float16": 1e-3, "bfloat16": 1e-2}


@dataclass(frozen=True)
class OutputDiff:
    index: int
    shape: tuple[int, ...]  # without batch
    max_abs: float
    max_rel: float
    scale: float = 0.0  # max |reference output|

    def ok(self, rtol: float, atol: float) -> bool:
        return self.max_abs <= atol + rtol * self.scale


@dataclass(frozen=True)
class VerifyReport:
    probes: int
    batch: int
    dtype: str
    max_abs: float
    max_rel: float
    outputs: tuple[OutputDiff, ...]
    # One class-score output (batch, classes[, 1, 1]): the fraction of probe samples whose
    # arg-max agrees (one score per sample: whose sign agrees); None for any other output.
    top1_agreement: float | None = None

    @property
    def atol(self) -> float:
        return ATOL.get(self.dtype, 1e-6)

    def ok(self, rtol: float, atol: float | None = None) -> bool:
        """Every output within ``atol + rtol * max|reference|`` (``atol`` default :attr:`atol`)."""
        rtol = safety.check_finite_nonneg(rtol, "rtol")
        atol = self.atol if atol is None else safety.check_finite_nonneg(atol, "atol")
        if not self.outputs:
            return self.max_rel <= rtol
        return all(o.ok(rtol, atol) for o in self.outputs)


def class_scores(output: torch.Tensor) -> torch.Tensor | None:
    """``output`` as (batch, classes) class scores, or None when it is not one (a feature map,
    a detector's head): a classifier's (B, C) or (B, C, 1, 1), or (B,) / (B, 1) single scores."""
    if output.dim() == 1:
        return output[:, None]
    if output.dim() < 2 or any(int(d) != 1 for d in output.shape[2:]):
        return None
    return output.flatten(1)


def agreeing(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many rows of two (batch, classes) score tensors pick the same class (one score per
    row: the same sign, i.e. the same side of a logit threshold at 0)."""
    if a.shape[1] == 1:
        return int(((a > 0) == (b > 0)).sum())
    return int((a.argmax(1) == b.argmax(1)).sum())


def probe_inputs(input_shape, *, probes: int = 2, batch: int = 2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *input_shape), generator=g, dtype=torch.float64).to(dtype) for _ in range(probes)]


@torch.no_grad()
def run_outputs(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return output_tensors(module(x))


@torch.no_grad()
def compare(
    reference: nn.Module,
    candidate: nn.Module,
    input_shape,
    *,
    probes: int = 2,
    batch: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    select=None,
    probe=None,
) -> VerifyReport:
    """Compare outputs of ``candidate`` with ``reference`` (both in eval mode, in ``dtype``).

    ``batch`` (default 2) is rounded up to a multiple of the reference's ``batch_unit`` (a
    Darknet recurrent net with ``[net] time_steps=T`` takes T rows per sequence).

    ``select(outputs_of_candidate) -> list`` picks which candidate outputs correspond to the
    reference's (e.g. one head of a combined model).

    ``probe`` (a :class:`surgery.core.probe.Probe`, e.g. real images from ``--data``) replaces
    the seeded random inputs; ``probes`` and ``batch`` then come from it.
    """
    unit = batch_unit(reference)
    if probe is not None:
        inputs = probe.tensors(dtype, unit)
        if not inputs:
            raise SurgeryError(f"the probe ({probe.source}) has fewer samples than one input of {unit}")
        probes, batch = len(inputs), max(int(x.shape[0]) for x in inputs)
    batch = -(-(2 if batch is None else batch) // unit) * unit
    # probes are real forwards: refuse one that cannot fit, with the estimate (two models alive)
    safety.check_forward_memory(reference, tuple(input_shape), batch=batch, dtype=dtype,
                                what="verifying on probe inputs", copies=2)
    ref = _prepared(reference, dtype)
    cand = _prepared(candidate, dtype)
    worst: dict[int, list[float]] = {}
    shapes: dict[int, tuple] = {}
    agree = total = 0
    classifier = True
    if probe is None:
        inputs = probe_inputs(input_shape, probes=probes, batch=batch, seed=seed, dtype=dtype)
    for x in inputs:
        a = run_outputs(ref, x)
        b = run_outputs(cand, x)
        if select is not None:
            b = select(b)
        if len(a) != len(b):
            raise SurgeryError(f"verification: the reference gives {len(a)} outputs, the result {len(b)}")
        _check_finite(a, reference, "the input model")
        _check_finite(b, candidate, "the result")
        scores = class_scores(a[0]) if len(a) == 1 else None
        if scores is None or a[0].shape != b[0].shape:
            classifier = False
        else:
            agree += agreeing(scores, class_scores(b[0]))
            total += scores.shape[0]
        for i, (oa, ob) in enumerate(zip(a, b)):
            if oa.shape != ob.shape:
                raise SurgeryError(f"verification: output {i} has shape {list(ob.shape)}, expected {list(oa.shape)}")
            diff = (oa - ob).abs().max().item() if oa.numel() else 0.0
            scale = oa.abs().max().item() if oa.numel() else 0.0
            rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
            w = worst.setdefault(i, [0.0, 0.0, 0.0])
            w[0], w[1], w[2] = max(w[0], diff), max(w[1], rel), max(w[2], scale)
            shapes[i] = tuple(oa.shape[1:])
    outs = tuple(OutputDiff(i, shapes[i], w[0], w[1], w[2]) for i, w in sorted(worst.items()))
    return VerifyReport(
        probes=probes,
        batch=batch,
        dtype=str(dtype).replace("torch.", ""),
        max_abs=max((o.max_abs for o in outs), default=0.0),
        max_rel=max((o.max_rel for o in outs), default=0.0),
        outputs=outs,
        top1_agreement=agree / total if classifier and total else None,
    )


def _check_finite(outputs: list[torch.Tensor], module: nn.Module, which: str) -> None:
    """NaN/Inf outputs make every difference meaningless (NaN compares false: a max abs of 0
    would be reported); say so, and which weights are to blame."""
    for i, o in enumerate(outputs):
        if o.is_floating_point() and not bool(torch.isfinite(o).all()):
            kinds = "/".join(k for k, bad in (("NaN", torch.isnan(o).any()), ("Inf", torch.isinf(o).any())) if bad)
            names = safety.nonfinite(module)
            where = (f"NaN/Inf in {len(names)} weight tensor(s): {', '.join(names[:3])}"
                     + (", ..." if len(names) > 3 else "") if names else "no weight is NaN/Inf: the values overflow")
            raise SurgeryError(f"verification: output {i} of {which} holds {kinds} on the probe inputs ({where}); "
                               f"the outputs cannot be compared")


def _prepared(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    m = copy.deepcopy(module) if dtype != torch.float32 else module
    m.eval()
    return m.to(dtype)
