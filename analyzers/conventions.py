"""Named counting conventions: which ops a "FLOP count" includes, and in what unit.

Printed with every result, because the same model honestly has several "FLOP counts":

========  ===========================================================================
macs      multiply-accumulates of convolutions and matrix products (conv, linear,
          mm/bmm, attention) — what papers call "FLOPs" (ResNet-50: 3.86e9/4.09e9)
flops     2 × macs (one multiply + one add per MAC)
darknet   Darknet's BFLOPs column: 2 × MACs of convolutions only, shown ÷ 1e9
fvcore    what fvcore's FlopCountAnalysis reports with its default handles: conv and
          matmul MACs + BatchNorm (2/element in eval) + layer/group/instance norm +
          upsample_nearest2d (1/output element) + upsample_bilinear2d (4/output element)
          + adaptive_avg_pool2d (1/input element) + grid_sampler (4/output element)
all       macs + the "other" class in MAC-equivalents (BN, activations, pooling,
          element-wise incl. residual adds, upsampling, softmax, reductions)
========  ===========================================================================

Bias additions of conv/linear are in none of them (as in fvcore, Darknet and the papers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from surgery.core.errors import SurgeryError, suggest


@dataclass(frozen=True)
class Convention:
    name: str
    field: str  # the JSON/CSV field holding the count (it names the unit)
    unit: str  # the unit of the integer counts
    description: str
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    display_scale: float = 1.0  # darknet: shown as BFLOPs (÷ 1e9)
    display_unit: str = ""
    _value: Callable = None  # op -> int

    def op_value(self, op) -> int:
        return int(self._value(op))

    def to_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "description": self.description,
                "includes": list(self.includes), "excludes": list(self.excludes)}


_MATMUL = ("convolution (dense, grouped, depthwise, transposed)", "matmul/linear (mm, addmm, bmm, baddbmm)",
           "attention (scaled dot product)")
_OTHER = ("batch_norm", "layer/group norm", "activations", "element-wise arithmetic incl. residual add",
          "pooling", "upsample", "softmax", "reductions")

CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("macs", "macs", "MACs", "multiply-accumulates of conv and linear/matmul ops (the papers' \"FLOPs\")",
               _MATMUL, _OTHER + ("bias additions",), _value=lambda op: op.macs),
    Convention("flops", "flops", "FLOPs", "2 × MACs of conv and linear/matmul ops",
               _MATMUL, _OTHER + ("bias additions",), _value=lambda op: 2 * op.macs),
    Convention("darknet", "darknet_flops", "FLOPs", "Darknet's BFLOPs: 2 × MACs of convolutions, shown ÷ 1e9",
               _MATMUL[:1], _MATMUL[1:] + _OTHER + ("bias additions",), display_scale=1e-9, display_unit="BFLOPs",
               _value=lambda op: 2 * op.macs if op.category == "conv" else 0),
    Convention("fvcore", "fvcore_flops", "fvcore flops (MACs for conv/linear)",
               "what fvcore's FlopCountAnalysis reports with its default op handles",
               _MATMUL[:2] + ("batch_norm (eval: 2 per element with affine)", "layer/group/instance norm (5 per element)",
                              "upsample_nearest2d (1 per output element)", "upsample_bilinear2d (4 per output element)",
                              "adaptive_avg_pool2d (1 per input element)", "grid_sampler (4 per output element)"),
               ("activations", "element-wise arithmetic incl. residual add", "max/avg pooling", "softmax",
                "bias additions"), _value=lambda op: op.fvcore_macs),
    Convention("all", "all_macs", "MAC-equivalents", "conv/linear MACs plus every other counted op in MAC-equivalents",
               _MATMUL + _OTHER, ("data movement (cat, copies, views): bytes only",),
               _value=lambda op: op.macs + op.other_macs),
)}


def get_convention(name: str) -> Convention:
    key = str(name).strip().lower()
    if key not in CONVENTIONS:
        raise SurgeryError(f"unknown convention {name!r}{suggest(key, CONVENTIONS)}; "
                           f"choose one of: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[key]
