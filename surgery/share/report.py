"""What ``share`` returns: frozen reports (the CLI renders them) and the diverged-backbone error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from surgery.core.errors import SurgeryError


@dataclass(frozen=True)
class LayerDiff:
    """How far a task's shared layer moved from BASE's (:func:`analyzers.diff_stats.relative_diff_stats`):
    the element-wise ``|task - base| / mean|base|`` of the layer's weights (median and max)
    and of its biases (median; Darknet: the conv bias or BN beta)."""

    index: int
    name: str
    weight_rel: float  # median
    weight_max: float
    bias_rel: float | None  # median; None: the layer has no bias


@dataclass(frozen=True)
class Head:
    model: str
    outputs: int  # output tensors this head contributes, in order
    layers_equal: bool  # its layers 0..k equal BASE's (always True for BASE itself)
    max_abs: float  # its outputs in the combined model vs in its source model
    max_rel: float  # max_abs / max |source output|
    diverged_layers: tuple[LayerDiff, ...] = ()
    top1_agreement: float | None = None  # a classifier head: same arg-max as its source (surgery.core.verify)

    def to_json(self) -> dict:
        d = {"model": self.model, "outputs": self.outputs, "layers_equal": self.layers_equal}
        # equal layers: a function-preserving check ("verify"); diverged: how far the head moved
        if self.layers_equal:
            d["verify"] = {"max_abs": self.max_abs, "max_rel": self.max_rel}
        else:
            d["moved"] = {"max_abs": self.max_abs, "max_rel": self.max_rel, "top1_agreement": self.top1_agreement}
        if self.diverged_layers:
            d["diverged_layers"] = [vars(x) for x in self.diverged_layers]
        return d


@dataclass(frozen=True)
class Pair:
    combined: int
    separate: int


@dataclass(frozen=True)
class Fraction:
    params: float
    macs: float


@dataclass(frozen=True)
class Cut:
    """A checked cut point: ``at`` (layer index) and the data-flow edges that cross it."""

    at: int
    name: str
    last: int  # BASE's last layer index
    edges: tuple[tuple[int, int], ...]  # (i <= at, j > at) in BASE's graph
    outputs: tuple[int, ...] = ()  # output tensors of BASE, then of each task


@dataclass(frozen=True)
class ShareReport:
    at: int
    at_name: str
    representation: str  # "darknet" | "fx"
    layers: int  # layers of the combined model's layer table
    heads: tuple[Head, ...]  # BASE first, then each task
    params: Pair
    macs: Pair
    saved_fraction: Fraction  # per extra task: layers 0..at of BASE over BASE's total
    shared: Mapping[str, int]  # params/macs of BASE's layers 0..at
    cut_edges: tuple[tuple[int, int], ...]
    rtol: float
    input_shape: tuple[int, ...]  # of the probe inputs, without batch
    output: str | None = None  # set by the caller that writes the model
    darknet: Mapping | None = None  # {"output": cfg, "weights": ...} when written
    onnx: Mapping | None = None  # the ONNX export's report (surgery.export.ExportReport.to_json())
    probe: Mapping | None = None  # what the heads were checked on (surgery.core.probe.probe_json)

    def to_json(self) -> dict:
        return {
            "models": [h.model for h in self.heads],
            "output": self.output,
            "darknet": None if self.darknet is None else dict(self.darknet),
            "onnx": None if self.onnx is None else dict(self.onnx),
            "at": self.at,
            "at_name": self.at_name,
            "representation": self.representation,
            "layers": self.layers,
            "heads": [h.to_json() for h in self.heads],
            "totals": {"combined": {"params": self.params.combined, "macs": self.macs.combined},
                       "separate": {"params": self.params.separate, "macs": self.macs.separate}},
            "shared": dict(self.shared),
            "saved_fraction": vars(self.saved_fraction),
            "cut_edges": [list(e) for e in self.cut_edges],
            "rtol": self.rtol,
            "input_shape": list(self.input_shape),
            "probe": None if self.probe is None else dict(self.probe),
        }


@dataclass(frozen=True)
class SweepRow:
    at: int
    at_name: str
    saved_fraction: Fraction
    shared: Mapping[str, int]  # params/macs of BASE's layers 0..at


@dataclass(frozen=True)
class SweepReport:
    models: tuple[str, ...]  # BASE, then the tasks every cut was checked against
    totals: Mapping[str, int]  # BASE's params/macs
    sweep: tuple[SweepRow, ...]

    def to_json(self) -> dict:
        return {
            "models": list(self.models),
            "totals": dict(self.totals),
            "sweep": [{"at": r.at, "at_name": r.at_name, "saved_fraction": vars(r.saved_fraction),
                       "shared": dict(r.shared)} for r in self.sweep],
        }


class DivergedError(SurgeryError):
    """A task's shared layers differ from BASE's; ``heads`` carries the per-layer differences."""

    def __init__(self, message: str, heads: Sequence[Head]):
        super().__init__(message)
        self.heads = tuple(heads)
