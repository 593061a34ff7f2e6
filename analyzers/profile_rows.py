"""The rows of ``surgery profile`` (:mod:`analyzers.profile`): one per timed (model, batch,
dtype, runtime), joined with its counted cost and roofline floor, its ratios to the first
model and its Pareto flag; the report that holds them (JSON: docs/JSON.md "profile")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ProfileRow:
    model: str
    runtime: str
    device: str
    batch: int
    dtype: str
    status: str  # ok | unavailable | failed
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    cv: float | None = None
    runs: int = 0
    throughput: float | None = None  # samples / s
    macs: int | None = None  # per sample
    params: int | None = None
    bytes: int | None = None  # whole timed pass
    gmacs_per_s: float | None = None
    roofline_ms: float | None = None
    roofline_pct: float | None = None
    latency_ratio: float | None = None
    macs_ratio: float | None = None
    pareto: bool | None = None
    threads: int | None = None
    setup_s: float | None = None
    clock: str | None = None
    warning: str | None = None
    error: str | None = None
    cost_error: str | None = None
    roofline_error: str | None = None
    roofline_estimate: bool | None = None  # the floor's peaks were measured here (an estimate)
    onnx: dict | None = None  # exporter, opset, max_abs, max_rel of the verified export


@dataclass(frozen=True)
class ProfileReport:
    device: dict
    settings: dict
    results: tuple[ProfileRow, ...]

    def to_json(self) -> dict:
        models = list(dict.fromkeys(r.model for r in self.results))
        return {"models": models, "device": self.device, "settings": self.settings, "results": list(self.results)}

    @property
    def ok(self) -> tuple[ProfileRow, ...]:
        return tuple(r for r in self.results if r.status == "ok")


@dataclass(frozen=True)
class Job:
    model_index: int
    batch: int
    dtype: str
    runtime: str


def plan(n_models: int, batches: Sequence[int], dtypes: Sequence[str], runtimes: Sequence[str]) -> list[Job]:
    """The sweep order: model, then batch, dtype, runtime (one model in memory at a time)."""
    return [Job(m, b, d, r) for m in range(n_models) for b in batches for d in dtypes for r in runtimes]


def join_cost(row: ProfileRow, cost: dict) -> ProfileRow:
    row = replace(row, macs=cost.get("macs"), params=cost.get("params"), bytes=cost.get("bytes"),
                  roofline_ms=cost.get("roofline_ms"), cost_error=cost.get("cost_error"),
                  roofline_error=cost.get("roofline_error"), roofline_estimate=cost.get("roofline_estimate"))
    if row.status == "ok" and row.median_ms:
        if row.macs is not None:
            row = replace(row, gmacs_per_s=row.macs * row.batch / (row.median_ms / 1e3) / 1e9)
        if row.roofline_ms is not None:
            row = replace(row, roofline_pct=100.0 * row.roofline_ms / row.median_ms)
            if row.roofline_pct > 100.0:  # faster than the floor: the spec's peaks are too low for this device
                if row.roofline_estimate:
                    msg = (f"measured faster than the estimated roofline floor ({row.roofline_pct:.0f}% of it): "
                           f"this model's kernels beat the peaks measured by the CPU probes, so the floor is an "
                           f"estimate, not a bound")
                else:
                    msg = (f"measured faster than the roofline floor ({row.roofline_pct:.0f}% of it): the device "
                           f"spec underestimates this device's peak FLOP/s or bandwidth")
                row = replace(row, warning=f"{row.warning}; {msg}" if row.warning else msg)
    return row


def ratio_rows(rows: list[tuple[Job, ProfileRow]]) -> list[ProfileRow]:
    first = {(r.runtime, r.device, r.batch, r.dtype): r for j, r in rows if j.model_index == 0}
    out = []
    for _, r in rows:
        base = first.get((r.runtime, r.device, r.batch, r.dtype))
        lr = mr = None
        if base is not None and r.status == "ok" and base.status == "ok" and base.median_ms:
            lr = r.median_ms / base.median_ms
        if base is not None and r.macs is not None and base.macs:
            mr = r.macs / base.macs
        out.append(replace(r, latency_ratio=lr, macs_ratio=mr))
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, latency) points: True where no other point is <= in both and < in one."""
    flags = []
    for i, (c, t) in enumerate(points):
        dominated = any((c2 <= c and t2 <= t) and (c2 < c or t2 < t) for j, (c2, t2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def pareto_rows(rows: list[ProfileRow]) -> list[ProfileRow]:
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        if r.status == "ok" and r.macs is not None:
            groups.setdefault((r.device, r.batch, r.dtype), []).append(i)
    flags: dict[int, bool] = {}
    for idx in groups.values():
        for i, f in zip(idx, pareto_front([(rows[i].macs, rows[i].median_ms) for i in idx])):
            flags[i] = f
    return [replace(r, pareto=flags.get(i)) for i, r in enumerate(rows)]
