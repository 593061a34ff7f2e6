"""Report: the regrouped convs, those left dense, the costs, and how far the function moved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from analyzers.cost import Totals
from surgery.core.probe import Probe, probe_json
from surgery.core.verify import compare

HEAL_NOTE = ("regroup is lossy: the grouped convs drop the off-diagonal blocks; "
             "fine-tune with `surgery heal` to recover accuracy")
# The cost fields of the report's ``totals`` (docs/JSON.md "regroup")
TOTALS_FIELDS = ("params", "macs", "flops", "bytes_read", "bytes_written", "bytes")


@dataclass(frozen=True)
class RegroupLayer:
    index: int
    name: str  # module name of the conv (Darknet: layers.N)
    groups: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stage: int  # resolution rank among the selected convs (0 = highest)
    retained: float  # kept weight energy / total with the chosen permutation
    contiguous: float  # ... with contiguous blocks (no permutation)
    expected: float  # 1/groups: what unstructured weights keep
    permuted: tuple[str, ...]  # sides whose channels were permuted: "in", "out"
    fixed: Mapping[str, str]  # side -> why it stayed fixed
    params_before: int
    params_after: int
    macs_before: int | None  # None when costs were not counted
    macs_after: int | None

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["kernel"], d["permuted"], d["fixed"] = list(self.kernel), list(self.permuted), dict(self.fixed)
        return d


@dataclass(frozen=True)
class RegroupSkip:
    index: int
    name: str
    reason: str


@dataclass(frozen=True)
class Moved:
    """How far the lossy surgery moved the function on probe inputs."""

    probes: int
    batch: int
    max_abs: float
    max_rel: float  # max |Δ| / max |reference| per output, worst over outputs
    top1_agreement: float | None  # classifiers: fraction of probe samples with the same arg-max
    probe: Mapping = field(default_factory=dict)  # surgery.core.probe.probe_json: random normal or images


@dataclass(frozen=True)
class RegroupReport:
    model: str
    root: int
    schedule: str
    permute: str
    how: str  # "replay" (recipe step) | "darknet-cfg"
    layers: tuple[RegroupLayer, ...]
    skipped: tuple[RegroupSkip, ...]
    before: Totals | None  # analyzers.cost totals at batch 1 (None: not counted)
    after: Totals | None
    moved: Moved | None
    search_s: float
    input_shape: tuple[int, ...]
    note: str = HEAL_NOTE
    lossy: bool = True
    output: str = ""

    @property
    def retained(self) -> float:
        """The mean retained energy fraction over the regrouped convs."""
        return sum(l.retained for l in self.layers) / len(self.layers) if self.layers else 1.0

    def to_json(self) -> dict:
        def totals(t: Totals | None):
            return {k: getattr(t, k) for k in TOTALS_FIELDS} if t is not None else None

        return {
            "model": self.model, "output": self.output, "root": self.root, "schedule": self.schedule,
            "permute": self.permute, "how": self.how, "input_shape": list(self.input_shape),
            "layers": [l.to_json() for l in self.layers],
            "skipped": [{"index": s.index, "name": s.name, "reason": s.reason} for s in self.skipped],
            "totals": {"before": totals(self.before), "after": totals(self.after)},
            "moved": ({"max_abs": self.moved.max_abs, "max_rel": self.moved.max_rel,
                       "top1_agreement": self.moved.top1_agreement, "probes": self.moved.probes,
                       "batch": self.moved.batch} if self.moved else None),
            "probe": dict(self.moved.probe) if self.moved else None,
            "search_s": self.search_s, "lossy": self.lossy, "note": self.note,
        }


def measure_moved(source: nn.Module, result: nn.Module, input_shape, *, probes: int = 2, batch: int = 4,
                  seed: int = 0, probe: Probe | None = None) -> Moved:
    """How far ``result`` moved from ``source`` (:func:`surgery.core.verify.compare`: max
    abs/rel difference, top-1 agreement of a classifier) on ``probes`` seeded random batches
    of ``batch``, or on ``probe`` (real images, ``--data``)."""
    v = compare(source, result, input_shape, probes=probes, batch=batch, seed=seed, probe=probe)
    return Moved(v.probes, v.batch, v.max_abs, v.max_rel, v.top1_agreement, probe_json(probe, v.probes * v.batch))
