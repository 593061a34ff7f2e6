"""The rows and the report of :func:`analyzers.diff.diff` (JSON schema: docs/JSON.md "diff"),
and the rule of its suggested split (:data:`SPLIT_RULE`, applied by :mod:`analyzers.diff_split`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from analyzers.diff_stats import BoxStats

MIN_RISE = 2.0  # later segment's mean / earlier segment's mean needed to suggest a split
MIN_R2 = 0.5  # fraction of the medians' variance the two-segment fit must explain

SPLIT_RULE = (
    "least-squares change point on the per-layer medians of the relative weight differences "
    "(layer order): the position s minimising the squared error of a two-segment constant fit, "
    f"accepted when the later segment's mean is >= {MIN_RISE:g}x the earlier's and the fit explains "
    f">= {MIN_R2:.0%} of the variance; first_changed = layer s, share_at = s - 1 (share layers 0..s-1)"
)


@dataclass(frozen=True)
class LayerDiff:
    """One tensor present in both models with equal shapes."""

    index: int  # layer index (Darknet index for Darknet models)
    name: str  # the layer's module name, e.g. "layers.12" or "layer1.0.conv1"
    param: str  # state_dict key in model A, e.g. "layers.12.bn.bias"
    kind: str  # weight | bias | bn_weight | bn_bias | running_mean | running_var | other name
    shape: tuple[int, ...]
    relative: bool  # False when mean|A| == 0: the statistics are then absolute |B - A|
    scale: float  # mean |A|
    stats: BoxStats
    param_b: str = ""  # state_dict key in model B when it differs (index matching)

    def to_json(self) -> dict:
        s = self.stats
        out = {
            "index": self.index, "name": self.name, "param": self.param, "kind": self.kind,
            "shape": list(self.shape), "numel": s.n, "relative": self.relative, "scale": _num(self.scale),
            "mean": _num(s.mean), "q1": _num(s.q1), "median": _num(s.median), "q3": _num(s.q3),
            "whisker_low": _num(s.whisker_low), "whisker_high": _num(s.whisker_high), "outliers": s.outliers,
            "min": _num(s.min), "max": _num(s.max),
        }
        if self.param_b and self.param_b != self.param:
            out["param_b"] = self.param_b
        return out


@dataclass(frozen=True)
class Skipped:
    """A tensor not compared: shapes differ, or it exists in one model only."""

    index: int
    name: str
    param: str
    kind: str
    reason: str
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None

    def to_json(self) -> dict:
        return {"index": self.index, "name": self.name, "param": self.param, "kind": self.kind,
                "reason": self.reason, "shape_a": _shape(self.shape_a), "shape_b": _shape(self.shape_b)}


@dataclass(frozen=True)
class Split:
    """The suggested split: layers ``0..share_at`` are the shared backbone."""

    first_changed: int  # index of the first layer of the high-difference segment
    share_at: int  # first_changed - 1
    low_mean: float  # mean of the per-layer medians before first_changed
    high_mean: float  # ... from first_changed on
    r2: float  # variance of the medians explained by the two-segment fit
    rule: str = SPLIT_RULE
    savings: Mapping[str, float] | None = None  # fractions of A's params/macs in layers 0..share_at

    def to_json(self) -> dict:
        return {"first_changed": self.first_changed, "share_at": self.share_at, "low_mean": _num(self.low_mean),
                "high_mean": _num(self.high_mean), "r2": _num(self.r2),
                "savings": dict(self.savings) if self.savings is not None else None}


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    darknet: bool
    layers: tuple[LayerDiff, ...]
    skipped: tuple[Skipped, ...]
    split: Split | None
    rule: str = SPLIT_RULE
    index_source: str = "darknet"  # darknet | layer_table | module_order

    @property
    def suggested_split(self) -> int | None:
        return self.split.first_changed if self.split else None

    def of_kind(self, *kinds: str) -> tuple[LayerDiff, ...]:
        return tuple(r for r in self.layers if r.kind in kinds)

    def per_layer(self) -> tuple[LayerDiff, ...]:
        """One row per layer: its primary tensor (the ``weight``, else ``bn_weight``, else the
        first compared), the tensor the split and the default table use."""
        by_layer: dict[int, list[LayerDiff]] = {}
        for r in self.layers:
            by_layer.setdefault(r.index, []).append(r)
        rank = {"weight": 0, "bn_weight": 1}
        return tuple(min(rs, key=lambda r: rank.get(r.kind, 2)) for rs in by_layer.values())

    def to_json(self) -> dict:
        counts: dict[int, int] = {}
        for r in self.layers:
            counts[r.index] = counts.get(r.index, 0) + 1
        return {
            "models": [self.a, self.b],
            "index_source": self.index_source,
            "split": self.split.to_json() if self.split else None,
            "rule": self.rule,
            "layers": [{**r.to_json(), "tensors": counts[r.index]} for r in self.per_layer()],
            "tensors": [r.to_json() for r in self.layers],
            "skipped": [s.to_json() for s in self.skipped],
        }


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _shape(s) -> list[int] | None:
    return list(s) if s is not None else None
