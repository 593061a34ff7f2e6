"""Cost analysis: per-layer params, MACs/FLOPs, memory traffic — counted on the meta device.

Units (DESIGN.md): ``macs`` are multiply-accumulates of the ``matmul`` class (convolutions
and matrix products); ``flops = 2 × macs``; Darknet's BFLOPs are ``flops / 1e9`` of conv
layers; ``other_macs`` are the MAC-equivalents of everything else (BN, activations,
pooling, element-wise, upsample, softmax — see :mod:`analyzers.formulas`); bytes are in the
model's dtype. Shapes exclude the batch dimension (the ``aten_*`` fields of :class:`OpCost`
are full aten argument shapes).

Layer bytes are counted at the layer boundary: a layer reads each tensor it did not produce
once (input activations + the parameters and buffers its ops use) and writes what it
returns; intermediates inside a fused layer (Darknet conv+BN+leaky) are not traffic. For a
bare 1×1 conv without bias that is exactly ``hw(c1+c2) + c1·c2`` elements (ShuffleNet v2's
memory access cost). :meth:`CostReport.by_operator` sums each op's own, unfused traffic.

Params per layer: the parameters of the layer's module plus any other parameter its ops
read, each counted once over the whole model (a module reused by two layers counts at its
first use), so ``totals.params`` equals :attr:`surgery.core.net.Net.params` for models that use
all their parameters.

Analyzers never change a model: counting runs on a structural meta-device clone, in eval
mode (inference costs).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from analyzers import counting
from analyzers.conventions import CONVENTIONS, Convention, get_convention  # noqa: F401 (re-exported)
from surgery.core.dtypes import torch_dtype
from surgery.core.errors import SurgeryError
from surgery.core.net import Net, batch_unit

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpCost:
    op: str  # aten overload packet, e.g. "aten.convolution"
    fn: str  # the torch function that issued it, e.g. "conv2d"
    cls: str  # matmul | other | movement | view | uncounted
    category: str  # conv, matmul, batch_norm, activation, elementwise, pool, upsample, concat, ...
    module: str  # innermost module that ran it ("" = the model's own forward)
    macs: int
    flops: int
    other_macs: int
    fvcore_macs: int
    params: int  # parameter elements the op read
    bytes_read: int  # the op's own traffic (unfused)
    bytes_written: int
    activations: int  # output elements
    input_elements: int
    aten_input_shapes: tuple[Shape, ...]  # with batch
    aten_output_shape: Shape  # with batch


@dataclass(frozen=True)
class LayerCost:
    index: int
    name: str
    type: str
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    params: int
    macs: int
    flops: int
    bytes_read: int  # at the layer boundary
    bytes_written: int
    other_macs: int
    activations: int  # output elements of the layer
    ops: tuple[OpCost, ...]
    kind: str = "module"  # module | function
    module: str = ""
    output_shapes: tuple[Shape, ...] = ()
    fvcore_macs: int = 0
    conv_macs: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def to_json(self) -> dict:
        """The layer's row in every ``--json`` (docs/JSON.md "layers"): shapes without batch."""
        return {"index": self.index, "name": self.name, "type": self.type,
                "input_shapes": [list(s) for s in self.input_shapes], "output_shape": list(self.output_shape),
                "params": self.params, "macs": self.macs, "flops": self.flops, "other_macs": self.other_macs,
                "fvcore_macs": self.fvcore_macs, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}


@dataclass(frozen=True)
class Totals:
    params: int
    macs: int
    flops: int
    bytes: int
    bytes_read: int
    bytes_written: int
    other_macs: int
    activations: int = 0
    fvcore_macs: int = 0
    conv_macs: int = 0

    @classmethod
    def of(cls, layers: Iterable[LayerCost]) -> "Totals":
        f = defaultdict(int)
        for l in layers:
            for k in ("params", "macs", "flops", "bytes_read", "bytes_written", "other_macs", "activations",
                      "fvcore_macs", "conv_macs"):
                f[k] += getattr(l, k)
        return cls(bytes=f["bytes_read"] + f["bytes_written"], **f)

    def to_json(self) -> dict:
        return {"params": self.params, "macs": self.macs, "flops": self.flops, "other_macs": self.other_macs,
                "fvcore_macs": self.fvcore_macs, "bytes": self.bytes, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "activations": self.activations}


@dataclass(frozen=True)
class UncountedOp:
    op: str
    layer: int
    layer_name: str
    module: str
    calls: int
    input_elements: int
    output_elements: int


@dataclass(frozen=True)
class GroupCost:
    """A row of the by-module or by-operator view."""

    key: str
    count: int  # layers (by module) or calls (by operator)
    params: int
    macs: int
    flops: int
    other_macs: int
    fvcore_macs: int
    conv_macs: int
    bytes_read: int
    bytes_written: int
    category: str = ""

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def to_json(self) -> dict:
        return {"key": self.key, "count": self.count, "params": self.params, "macs": self.macs, "flops": self.flops,
                "other_macs": self.other_macs, "fvcore_macs": self.fvcore_macs, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "category": self.category}


@dataclass(frozen=True)
class CostReport:
    model: str
    input_shape: Shape
    batch: int
    dtype: str
    layers: tuple[LayerCost, ...]
    totals: Totals
    uncounted: tuple[UncountedOp, ...]
    output_shapes: tuple[Shape, ...] = ()
    method: str = "fx"  # fx | hooks
    notes: tuple[str, ...] = ()
    counted_on: str = "meta"  # meta, or cpu for a TorchScript module (run on real tensors)

    @property
    def darknet(self) -> bool:
        """Darknet numbering: every layer is ``layers.N`` with N its Darknet index."""
        return bool(self.layers) and all(l.name == f"layers.{l.index}" for l in self.layers)

    def to_json(self) -> dict:
        """The cost JSON contract (docs/JSON.md "layers"): one name per thing, units in names."""
        return {"model": self.model, "input_shape": list(self.input_shape), "batch": self.batch, "dtype": self.dtype,
                "layers": [l.to_json() for l in self.layers], "totals": self.totals.to_json(),
                "uncounted": [dataclasses.asdict(u) for u in self.uncounted], "notes": list(self.notes),
                "counted_on": self.counted_on}

    def group_ops(self, by: str, depth: int = 2) -> tuple[tuple[GroupCost, tuple[OpCost, ...]], ...]:
        """``by="module"`` or ``"operator"``: each group with the ops it sums (grouping keys
        in one place: module path cut to ``depth`` parts, or the aten operator)."""
        if by == "module":
            groups = self.by_module(depth)
            return tuple((g, tuple(o for l in self.layers if self.module_key(l, depth) == g.key for o in l.ops))
                         for g in groups)
        if by == "operator":
            return tuple((g, tuple(o for l in self.layers for o in l.ops if o.op == g.key)) for g in self.by_operator())
        raise SurgeryError(f"group by {by!r}: choose module or operator")

    @staticmethod
    def module_key(layer: LayerCost, depth: int) -> str:
        """The by-module group of a layer: its module path cut to ``depth`` parts ("(model)":
        ops of the model's own forward)."""
        return ".".join(layer.module.split(".")[:depth]) if layer.module else "(model)"

    def upto(self, k: int) -> Totals:
        """Sums over the layers with index <= k (the shared backbone of share-at-k)."""
        return Totals.of(l for l in self.layers if l.index <= k)

    def shared_fraction(self, k: int) -> dict[str, float]:
        """``{"params", "macs"}``: the fractions of the model's totals in layers ``0..k``
        (what sharing the backbone up to layer ``k`` saves per extra task); 0.0 where the
        model's total is 0."""
        part = self.upto(k)
        return {key: (getattr(part, key) / whole if whole else 0.0)
                for key in ("params", "macs") for whole in (getattr(self.totals, key),)}

    def layer(self, index: int) -> LayerCost:
        for l in self.layers:
            if l.index == index:
                return l
        raise SurgeryError(f"layer {index} does not exist; this model has layers "
                           f"{self.layers[0].index}..{self.layers[-1].index}")

    def value(self, convention: str | Convention, layer: LayerCost | None = None) -> int:
        """The model's (or one layer's) count under a named convention."""
        conv = get_convention(convention) if isinstance(convention, str) else convention
        layers = (layer,) if layer is not None else self.layers
        return sum(conv.op_value(op) for l in layers for op in l.ops)

    def by_module(self, depth: int = 2) -> tuple[GroupCost, ...]:
        """Layers grouped by their module path cut to ``depth`` parts (layer-boundary bytes)."""
        groups: dict[str, list[LayerCost]] = {}
        for l in self.layers:
            groups.setdefault(self.module_key(l, depth), []).append(l)
        return tuple(_group(k, len(ls), ls, [op for l in ls for op in l.ops]) for k, ls in groups.items())

    def by_operator(self) -> tuple[GroupCost, ...]:
        """Ops grouped by aten operator (each op's own, unfused traffic), costliest first."""
        groups: dict[str, list[OpCost]] = {}
        for l in self.layers:
            for op in l.ops:
                groups.setdefault(op.op, []).append(op)
        rows = []
        for k, ops in groups.items():
            g = _group(k, len(ops), (), ops)
            rows.append(GroupCost(**{**g.__dict__, "params": sum(o.params for o in ops),
                                     "bytes_read": sum(o.bytes_read for o in ops),
                                     "bytes_written": sum(o.bytes_written for o in ops),
                                     "category": ops[0].category}))
        return tuple(sorted(rows, key=lambda r: (-(r.macs + r.other_macs), -r.bytes, r.key)))


def _group(key: str, count: int, layers: Sequence[LayerCost], ops: Sequence[OpCost]) -> GroupCost:
    macs = sum(o.macs for o in ops)
    return GroupCost(
        key=key, count=count, params=sum(l.params for l in layers), macs=macs, flops=2 * macs,
        other_macs=sum(o.other_macs for o in ops), fvcore_macs=sum(o.fvcore_macs for o in ops),
        conv_macs=sum(o.macs for o in ops if o.category == "conv"),
        bytes_read=sum(l.bytes_read for l in layers), bytes_written=sum(l.bytes_written for l in layers),
    )


# ----------------------------------------------------------------------------- analysis


def _no_batch(shape: Sequence[int]) -> Shape:
    return tuple(int(s) for s in shape[1:]) if len(shape) >= 1 else ()


class CostCounter:
    """A model traced and cloned to meta once, counted at any number of input shapes."""

    def __init__(self, net_or_module: Net | nn.Module, *, dtype=None, strict: bool = False):
        if isinstance(net_or_module, Net):
            module, self.model, self.default_shape = net_or_module.module, net_or_module.source, net_or_module.input_shape
        elif isinstance(net_or_module, nn.Module):
            module, self.model = net_or_module, type(net_or_module).__name__
            self.default_shape = tuple(getattr(net_or_module, "input_shape", ()) or ())
        else:
            raise SurgeryError(f"cannot analyse a {type(net_or_module).__name__}; pass a Net or an nn.Module")
        self.strict = strict
        self.batch_unit = batch_unit(module)  # e.g. a Darknet recurrent net's time_steps
        self.prep = counting.prepare(module, torch_dtype(dtype))

    def run(self, input_shape: Sequence[int] | None = None, batch: int | None = None) -> CostReport:
        """Count at ``(batch, *input_shape)``; ``batch`` defaults to the model's batch unit (1,
        or T rows for a Darknet recurrent net with ``[net] time_steps=T``)."""
        batch = self.batch_unit if batch is None else batch
        shape = tuple(int(s) for s in (input_shape if input_shape is not None else self.default_shape))
        if not shape:
            raise SurgeryError(f"{self.model}: no input shape known; pass one, e.g. --input 3x224x224")
        if batch < 1 or any(s < 1 for s in shape):
            raise SurgeryError(f"input {'x'.join(map(str, shape))} with batch {batch}: every size must be positive")
        accs, outs = counting.run(self.prep, shape, batch)
        layers = tuple(_layer_cost(a) for a in accs)
        uncounted = _uncounted(layers)
        if uncounted and self.strict:
            listed = "; ".join(f"{u.op} ×{u.calls} in layer {u.layer} {u.layer_name!r} "
                               f"({u.input_elements + u.output_elements:,} elements)" for u in uncounted[:5])
            raise SurgeryError(f"{self.model}: {len(uncounted)} op(s) have no cost formula: {listed}"
                               f"{' ...' if len(uncounted) > 5 else ''}; without --strict they are listed instead")
        notes = [self.prep.note] + [f"layer {a.layer.index}: {a.note}" for a in accs if a.note]
        if uncounted:
            notes.append(f"{len(uncounted)} op kind(s) without a cost formula are listed under 'uncounted'")
        return CostReport(
            model=self.model, input_shape=shape, batch=batch, dtype=str(self.prep.dtype).replace("torch.", ""),
            layers=layers, totals=Totals.of(layers), uncounted=uncounted,
            output_shapes=tuple(_no_batch(s) for s in outs), method="fx" if self.prep.lg is not None else "hooks",
            notes=tuple(notes), counted_on=self.prep.device,
        )


def analyze(net_or_module: Net | nn.Module, input_shape: Sequence[int] | None = None, *, batch: int | None = None,
            dtype=None, strict: bool = False) -> CostReport:
    """Per-layer and total costs of one forward pass at ``(batch, *input_shape)`` (``batch``
    default: the model's batch unit, see :meth:`CostCounter.run`).

    ``input_shape`` defaults to the Net's (or the module's ``input_shape`` attribute);
    ``dtype`` (e.g. ``"float16"``) defaults to the model's; ``strict`` turns ops without a
    cost formula into a :class:`SurgeryError` instead of listing them in ``uncounted``.
    """
    return CostCounter(net_or_module, dtype=dtype, strict=strict).run(input_shape, batch)


def sweep(net_or_module: Net | nn.Module, input_shapes: Sequence[Sequence[int]] | None = None,
          batches: Sequence[int] | None = None, *, dtype=None, strict: bool = False) -> tuple[CostReport, ...]:
    """One report per (input shape, batch) pair, input shapes outermost; traced once. No
    ``batches``: the model's batch unit alone."""
    counter = CostCounter(net_or_module, dtype=dtype, strict=strict)
    shapes = list(input_shapes) if input_shapes else [None]
    batches = list(batches) if batches else [None]
    return tuple(counter.run(s, b) for s in shapes for b in batches)


def _layer_cost(acc: counting.LayerAcc) -> LayerCost:
    ops = tuple(OpCost(
        op=r.op, fn=r.fn, cls=r.f.cls, category=r.f.category, module=r.module, macs=r.f.macs, flops=2 * r.f.macs,
        other_macs=r.f.other_macs, fvcore_macs=r.f.fvcore_macs, params=r.params, bytes_read=r.bytes_read,
        bytes_written=r.bytes_written, activations=r.activations, input_elements=r.input_elements,
        aten_input_shapes=r.input_shapes, aten_output_shape=r.output_shape,
    ) for r in acc.ops)
    macs = sum(o.macs for o in ops)
    outs = tuple(_no_batch(s) for s in acc.output_shapes)
    layer = acc.layer
    return LayerCost(
        index=layer.index, name=layer.name, type=layer.type,
        input_shapes=tuple(_no_batch(s) for s in acc.input_shapes), output_shape=outs[0] if outs else (),
        params=acc.own_params, macs=macs, flops=2 * macs, bytes_read=acc.bytes_read,
        bytes_written=acc.bytes_written, other_macs=sum(o.other_macs for o in ops),
        activations=sum(torch.Size(s).numel() for s in acc.output_shapes), ops=ops, kind=layer.kind,
        module=acc.module, output_shapes=outs, fvcore_macs=sum(o.fvcore_macs for o in ops),
        conv_macs=sum(o.macs for o in ops if o.category == "conv"),
    )


def _uncounted(layers: Sequence[LayerCost]) -> tuple[UncountedOp, ...]:
    agg: dict[tuple, list] = {}
    for l in layers:
        for op in l.ops:
            if op.cls == "uncounted":
                key = (op.op, l.index)
                a = agg.setdefault(key, [l.name, op.module, 0, 0, 0])
                a[2] += 1
                a[3] += op.input_elements
                a[4] += op.activations
    return tuple(UncountedOp(op, idx, *v) for (op, idx), v in agg.items())
