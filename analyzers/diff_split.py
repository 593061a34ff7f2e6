"""The suggested split of :mod:`analyzers.diff`: where a shared backbone could end.

:func:`suggest_split` applies :data:`analyzers.diff_report.SPLIT_RULE` (a least-squares change
point on the per-layer medians of the relative *weight* differences, in layer order);
:func:`sharing_savings` gives the fractions of a model's params and MACs in the shared layers
(the cost analyzer's figures).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from analyzers.diff_report import MIN_R2, MIN_RISE, Split
from surgery.core.errors import SurgeryError
from surgery.core.net import Net


def suggest_split(points: Iterable[tuple[int, float]]) -> Split | None:
    """The change point of :data:`SPLIT_RULE` on ``(layer index, median)`` pairs."""
    pts = sorted((int(i), float(m)) for i, m in points if math.isfinite(m))
    n = len(pts)
    if n < 2:
        return None
    y = np.array([m for _, m in pts], dtype=np.float64)
    total_ss = float(((y - y.mean()) ** 2).sum())
    if total_ss <= 0.0:
        return None
    c1 = np.cumsum(y)
    c2 = np.cumsum(y * y)
    best = None
    for s in range(1, n):  # low = y[:s], high = y[s:]
        nl, nh = s, n - s
        sl, sh = c1[s - 1], c1[-1] - c1[s - 1]
        ql, qh = c2[s - 1], c2[-1] - c2[s - 1]
        sse = (ql - sl * sl / nl) + (qh - sh * sh / nh)
        ml, mh = sl / nl, sh / nh
        if mh <= ml:
            continue
        if best is None or sse < best[0] - 1e-12 * total_ss:
            best = (sse, s, ml, mh)
    if best is None:
        return None
    sse, s, ml, mh = best
    r2 = 1.0 - max(sse, 0.0) / total_ss
    if mh < MIN_RISE * ml or r2 < MIN_R2:
        return None
    first = pts[s][0]
    return Split(first_changed=first, share_at=first - 1, low_mean=float(ml), high_mean=float(mh), r2=float(r2))


def sharing_savings(net: Net, share_at: int) -> dict[str, float] | None:
    """Fractions of ``net``'s params and MACs in layers ``0..share_at`` (cost analyzer), or
    None when :mod:`analyzers.cost` is not available or cannot count this model."""
    rep = cost_report_of(net)
    return savings_fractions(rep, share_at) if rep is not None else None


def cost_report_of(net: Net):
    """``net``'s cost report, or None where the cost analyzer cannot count it."""
    try:
        from analyzers import cost
    except ImportError:
        return None
    try:
        return cost.analyze(net)
    except (SurgeryError, RuntimeError, NotImplementedError):
        return None  # savings are optional: a model the counter cannot run still diffs


def savings_fractions(rep, share_at: int) -> dict[str, float] | None:
    # CostReport.shared_fraction gives 0.0 for a zero total; the diff leaves such a key out
    out = {k: v for k, v in rep.shared_fraction(share_at).items() if getattr(rep.totals, k)}
    return out or None
