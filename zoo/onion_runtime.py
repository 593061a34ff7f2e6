"""The cascade forward that really skips work (OnionNet §3.3, "Sparse batches"): how a
:class:`zoo.onion.OnionCascade` runs, below the surgeries that make one and the analyzers
that count and time it.

S1 runs on the whole batch; its scores and the thresholds give the pass mask; the survivors
and the S1 maps S2 reads are compacted into one dense block; S2 runs on that block only; its
outputs are scattered back. Rejected samples get no S2 output (NaN rows) and are flagged,
with their S1 scores.

Compaction (``compaction=``):

- ``"inplace"`` (default) — the paper's two-pass compaction: pass 1 counts the ``k``
  survivors; pass 2 pairs the holes in ``[0, k)`` with the survivors in ``[k, N)`` and moves
  only those, so the dense block is the first ``k`` rows, a view. This is the least number
  of moves (a survivor already inside ``[0, k)`` stays put). Both passes are vectorised
  (``nonzero`` over the mask halves instead of a Python loop over samples). S1's maps are
  the runtime's own tensors, so they are moved in place; the caller's input is never
  written to (its survivors are gathered instead).
- ``"gather"`` — ``index_select`` of every survivor into new tensors (one copy each; what
  ``torch`` would do naturally, and the same thing when most samples move anyway).

:func:`run_uncompacted` runs S2 on every sample and masks afterwards: the reference the
compacted runtime must equal on survivors (tests/test_onion_runtime.py).

:class:`ForcedPass` is the same flow with a fixed number of survivors and no
data-dependent step, so the cost analyzer (meta device) sees S2 at the smaller batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError

COMPACTIONS = ("inplace", "gather")


@dataclass(frozen=True)
class CascadeResult:
    """One cascade forward. Tensors have the batch first."""

    s1_logits: Tensor  # (N, K)
    scores: Tensor  # (N, K) the pass scores (softmax over the S1-classes; sigmoid for one)
    passed: Tensor  # (N,) bool
    output: Tensor  # (N, C) S2 outputs; NaN rows for rejected samples
    n_passed: int
    compaction: str
    moved: int  # samples moved (inplace) or copied (gather) into the dense block
    timing_ms: dict  # s1 / mask / compact / s2 / scatter wall times (ms)


def forced_mask(batch: int, fraction: float, *, seed: int = 0) -> Tensor:
    """A (batch,) mask with exactly ``round(fraction · batch)`` survivors at random positions."""
    if not 0.0 <= fraction <= 1.0:
        raise SurgeryError(f"pass fraction {fraction} must lie in [0, 1]")
    k = int(round(fraction * batch))
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, dtype=torch.bool)
    mask[torch.randperm(batch, generator=g)[:k]] = True
    return mask


def two_pass_plan(mask: Tensor) -> tuple[int, Tensor, Tensor]:
    """The paper's compaction plan: ``(k, holes, movers)``; moving row ``movers[i]`` to row
    ``holes[i]`` makes rows ``[0, k)`` exactly the survivors."""
    k = int(mask.sum())
    holes = torch.nonzero(~mask[:k]).flatten()  # rejected rows inside the block
    movers = torch.nonzero(mask[k:]).flatten() + k  # survivors outside it (same count)
    return k, holes, movers


def _check_mask(mask: Tensor, n: int) -> Tensor:
    if mask.dtype != torch.bool or mask.shape != (n,):
        raise SurgeryError(f"a pass mask must be a bool tensor of shape ({n},); got {mask.dtype} {tuple(mask.shape)}")
    return mask


def run(cascade: nn.Module, x: Tensor, *, thresholds: Tensor | None = None, mask: Tensor | None = None,
        compaction: str = "inplace") -> CascadeResult:
    """The cascade on ``x`` (eval, no grad): S1, pass mask, compaction, S2 on survivors, scatter.

    ``mask`` forces which samples pass (for curves); otherwise the mask comes from
    ``thresholds`` or, by default, the thresholds stored in the cascade.
    """
    if compaction not in COMPACTIONS:
        raise SurgeryError(f"unknown compaction {compaction!r}; choose {' or '.join(COMPACTIONS)}")
    order = cascade.shared_layers()
    ms = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits, shared = cascade.stage1(x)  # (N, K), S1 maps S2 reads
        t1 = time.perf_counter()
        scores = cascade.pass_scores(logits)
        passed = cascade.pass_mask(logits, thresholds) if mask is None else _check_mask(mask.to(x.device), x.shape[0])
        t2 = time.perf_counter()
        n = x.shape[0]
        if compaction == "inplace":
            k, holes, movers = two_pass_plan(passed)
            rows = torch.arange(k, device=x.device)  # original row of each block row
            rows[holes] = movers
            block = []
            for src, t in zip(order, shared):
                if src == -1:  # the caller's input: gathered in block order, never written to
                    block.append(t.index_select(0, rows))
                else:
                    if holes.numel():
                        t.index_copy_(0, holes, t.index_select(0, movers))
                    block.append(t[:k])  # a view: no copy
            moved = int(movers.numel())
        else:
            rows = torch.nonzero(passed).flatten()
            k = int(rows.numel())
            block = [t.index_select(0, rows) for t in shared]
            moved = k
        t3 = time.perf_counter()
        out_c = cascade.stage2(*block) if k else None  # (k, C)
        t4 = time.perf_counter()
        c = out_c.shape[1] if out_c is not None else cascade.n2[-1]
        output = torch.full((n, c), float("nan"), dtype=logits.dtype, device=x.device)
        if k:
            output.index_copy_(0, rows, out_c)
        t5 = time.perf_counter()
    ms = {"s1_ms": (t1 - t0) * 1e3, "mask_ms": (t2 - t1) * 1e3, "compact_ms": (t3 - t2) * 1e3,
          "s2_ms": (t4 - t3) * 1e3, "scatter_ms": (t5 - t4) * 1e3}
    return CascadeResult(logits, scores, passed, output, k, compaction, moved, ms)


def run_uncompacted(cascade: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """S2 on every sample, rejected rows set to NaN afterwards (the reference)."""
    with torch.inference_mode():
        _, out = cascade(x)
        out = out.clone()
        out[~_check_mask(mask, x.shape[0])] = float("nan")
    return out


class ForcedPass(nn.Module):
    """The cascade flow with exactly ``n_pass`` survivors (the first rows; gather compaction)
    and no data-dependent step, so that :mod:`analyzers.cost` can count it on the meta
    device: S1 at the full batch, the compaction's copies, S2 at batch ``n_pass``."""

    def __init__(self, cascade: nn.Module, n_pass: int):
        super().__init__()
        if n_pass < 0:
            raise SurgeryError(f"n_pass={n_pass} must be at least 0")
        self.cascade = cascade
        self.n_pass = int(n_pass)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits, shared = self.cascade.stage1(x)
        if self.n_pass == 0:
            return logits, logits.new_zeros((0,))
        idx = torch.arange(self.n_pass, device=x.device)
        block = [t.index_select(0, idx) for t in shared]  # the compacted survivors
        out_c = self.cascade.stage2(*block)  # (n_pass, C)
        out = out_c.new_full((x.shape[0], out_c.shape[1]), float("nan"))  # (N, C)
        return logits, out.index_copy(0, idx, out_c)  # scattered back
