"""A cascade at its operating point: the fraction p of samples that pass S1 (OnionNet §4, p̄).

What a cascade costs depends on p: S1 runs on every sample, S2 on the survivors only. Counting
or timing its plain forward (both stages on every sample) reports the cost at p = 1. Here:

- :func:`operating_point` — the p a command uses, and where it comes from: *measured* by the
  cascade's own thresholds on real images (``--data``), else the p̄ ``surgery onion
  calibrate`` stored (on the held-out folder when there was one, else the calibration
  folder), else 1 (an uncalibrated cascade lets every sample pass);
- :class:`AtOperatingPoint` — the cascade flow with ``round(p·N)`` survivors in a batch of
  ``N`` (:class:`zoo.onion_runtime.ForcedPass`, no data-dependent step), so that
  ``surgery profile`` counts and times what a batch at that p does;
- :func:`macs_at` — MACs per sample at p: ``S1 + p·(S2 + compaction)``, exact (the cost is
  linear in the survivors; counted at 0 and at every sample passing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from analyzers import cost
from surgery.core.net import Net
from surgery.core.probe import Probe
from zoo.onion import OnionCascade
from zoo.onion_runtime import ForcedPass, run

MEASURED, CALIBRATED, ALL_PASS = "measured", "calibrated", "uncalibrated"
# the checkpoint metadata `surgery onion calibrate` writes (surgery.onion.calibrate) and this reads
CALIBRATION_KEY = "onion_calibration"


@dataclass(frozen=True)
class OperatingPoint:
    pass_fraction: float  # p used
    how: str  # MEASURED | CALIBRATED | ALL_PASS
    source: str  # for people: where p comes from
    calibrated: float | None  # p̄ stored by `onion calibrate` (None: not calibrated)
    images: int | None = None  # measured: images run
    passed: int | None = None  # measured: of which passed S1

    def to_json(self) -> dict:
        return {"pass_fraction": self.pass_fraction, "how": self.how, "source": self.source,
                "calibrated_pass_fraction": self.calibrated, "images": self.images, "passed": self.passed}


def calibrated(net: Net) -> tuple[float, str] | None:
    """(p̄, where it was measured) of the operating point whose thresholds the cascade carries."""
    cal = (net.metadata or {}).get(CALIBRATION_KEY)
    if not cal or bool(torch.isneginf(net.module.thresholds).all()):
        return None
    rows = cal.get("operating_points") or []
    row = next((r for r in rows if r.get("tpr_target") == cal.get("active_tpr")), rows[0] if rows else None)
    if row is None:
        return None
    data = cal.get("data", "?")
    if row.get("val"):
        return float(row["val"]["pass_fraction"]), f"held-out images of {data} at TPR {row['tpr_target']:g}"
    return float(row["calibration"]["pass_fraction"]), f"the calibration images of {data} at TPR {row['tpr_target']:g}"


@torch.no_grad()
def measure(cascade: OnionCascade, probe: Probe) -> tuple[int, int]:
    """(images, passed) of the cascade's own thresholds on the probe's images."""
    n = passed = 0
    cascade.eval()
    for x in probe.tensors():
        res = run(cascade, x)
        n += x.shape[0]
        passed += res.n_passed
    return n, passed


def operating_point(net: Net, probe: Probe | None = None) -> OperatingPoint:
    """The pass fraction of ``net`` (a cascade): measured on ``probe`` (real images), else the
    calibrated p̄, else 1 (see the module docstring)."""
    cal = calibrated(net)
    p_bar = cal[0] if cal else None
    uncal = bool(torch.isneginf(net.module.thresholds).all())
    if probe is not None:
        n, k = measure(net.module, probe)
        how = ("the stored thresholds" if not uncal else "no thresholds (uncalibrated)")
        return OperatingPoint(k / n if n else 0.0, MEASURED, f"measured with {how} on {probe.source}", p_bar, n, k)
    if cal is not None:
        return OperatingPoint(cal[0], CALIBRATED, f"p̄ stored by onion calibrate, measured on {cal[1]}", p_bar)
    if uncal:
        return OperatingPoint(1.0, ALL_PASS, "not calibrated: every sample passes S1", None)
    return OperatingPoint(1.0, ALL_PASS, "thresholds set without a calibration record: p unknown, counted as 1 "
                                         "(pass --data DIR to measure it)", None)


class AtOperatingPoint(nn.Module):
    """The cascade flow with ``round(p·N)`` survivors in a batch of ``N`` (S1 on all, the
    compaction's copies, S2 on the survivors, scatter back): :class:`ForcedPass` with a
    per-batch survivor count, countable on the meta device."""

    def __init__(self, cascade: OnionCascade, p: float):
        super().__init__()
        self.cascade = cascade
        self.p = float(p)

    def survivors(self, batch: int) -> int:
        return int(round(self.p * batch))

    def forward(self, x: Tensor):
        return ForcedPass(self.cascade, self.survivors(x.shape[0]))(x)


def at_operating_point(net: Net, op: OperatingPoint) -> Net:
    """``net`` with :class:`AtOperatingPoint` as its module (for profiling at p)."""
    return replace(net, module=AtOperatingPoint(net.module, op.pass_fraction))


def macs_at(net: Net, p: float) -> dict:
    """MACs per sample: ``s1`` (every sample rejected), ``all_pass``, and ``at_p`` = s1 + p·(all_pass − s1)."""
    c = net.module.cascade if isinstance(net.module, AtOperatingPoint) else net.module
    m0 = int(cost.analyze(ForcedPass(c, 0), net.input_shape, batch=1).totals.macs)
    m1 = int(cost.analyze(ForcedPass(c, 1), net.input_shape, batch=1).totals.macs)
    return {"s1": m0, "all_pass": m1, "at_p": int(round(m0 + p * (m1 - m0)))}
