"""``surgery regroup``: turn a trained network's dense spatial convolutions into filter-group
("root") convolutions, keeping as much of the trained function as possible (Deep Roots,
Ioannou et al. 2016; DESIGN.md "Root topologies").

What it does, in three steps (plan → search → apply):

1. **Selection.** By default every spatial conv (a kernel dimension > 1) with ``groups=1``
   that does not read the network input; ``layers=`` narrows it to a selector of
   :func:`surgery.core.graph.select`. The group count comes from the schedule:
   ``deep-roots`` gives ``root`` groups to the selected convs at the highest output
   resolution and halves it at each lower resolution ("stage"), never below 1 (ResNet-50
   root-8 = 8/4/2/1 in res2..res5, exactly :func:`zoo.resnet.root_groups`); ``constant`` gives
   ``root`` everywhere. A conv whose channels the count does not divide, a module called more
   than once, or one left with 1 group is listed in ``skipped`` with the reason.
2. **Search.** A grouped conv keeps the diagonal blocks ``W[out_g, in_g]``. Which channels
   share a group is free as long as the permutation is absorbed by the neighbours, so for each
   regrouped conv the balanced partition that maximises the retained energy
   ``Σ_g ‖W[out_g, in_g]‖² / ‖W‖²`` is searched (:mod:`surgery.partition`). A side is free when
   the tensor it touches (an *interface*) runs from one producer conv through per-channel ops
   (BatchNorm, activations, pooling) to consumer convs only; a residual add, a concat, a
   reshape, the network input or output fix it (the reason is reported). Two regrouped convs
   on one interface (a ResNet basic block's conv1 → conv2) are searched together as a chain.
3. **Apply.** Interface permutations go into the producer's output channels (weight rows,
   bias, its BatchNorm's parameters and running statistics), every per-channel op's
   parameters, and the consumers' input channels; the regrouped conv keeps its diagonal blocks
   in the permuted order. Everything outside the regrouped convs computes exactly what it did
   before (a network that is block-diagonal under a hidden permutation is reproduced exactly).

The structure is recorded so a checkpoint rebuilds without pickle: a replayable recipe step
``regroup`` (``{"convs": {module name: groups}}``), or for a Darknet model the cfg itself
(``groups=`` on the convolutional sections; layer indices unchanged), as ``retarget`` does.

The surgery is lossy: the report says how far the function moved on probe inputs (relative
output difference and, for classifiers, top-1 agreement with the source) and points to
``surgery heal`` to recover accuracy.
"""

from __future__ import annotations

import copy
import operator
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from surgery import partition
from surgery.core.callable_module import make_callable
from surgery.core import safety
from surgery.core.errors import SurgeryError
from surgery.core.graph import is_darknet, layer_graph, select
from surgery.core.net import ArchSpec, Net, Step
from surgery.core.recipe import replayable
from surgery.core.verify import probe_inputs, run_outputs
from surgery.core.probe import Probe, check_shape, probe_json

SCHEDULES = ("deep-roots", "constant")
PERMUTES = ("best", "none")
HEAL_NOTE = ("regroup is lossy: the grouped convs drop the off-diagonal blocks; "
             "fine-tune with `surgery heal` to recover accuracy")

# Per-channel ops an interface may pass through (channel c of the output depends on channel c
# of the input only). Parameters of the ones listed in _PER_CHANNEL_PARAMS are permuted too.
_PASS_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity,
                 nn.Dropout, nn.Dropout2d, nn.Mish, nn.ELU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.MaxPool2d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.PReLU)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, torch.sigmoid, F.silu, torch.tanh, F.gelu,
                   F.max_pool2d, F.avg_pool2d, F.dropout, F.hardswish, F.mish}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_DARKNET_PASS = ("maxpool", "dropout")
_BN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


# ----------------------------------------------------------------------------- reports

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
class CostTotals:
    params: int
    macs: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def to_json(self) -> dict:
        return {"params": self.params, "macs": self.macs, "flops": 2 * self.macs, "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written, "bytes": self.bytes}


@dataclass(frozen=True)
class RegroupReport:
    model: str
    root: int
    schedule: str
    permute: str
    how: str  # "replay" (recipe step) | "darknet-cfg"
    layers: tuple[RegroupLayer, ...]
    skipped: tuple[RegroupSkip, ...]
    before: CostTotals | None
    after: CostTotals | None
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
        return {
            "model": self.model, "output": self.output, "root": self.root, "schedule": self.schedule,
            "permute": self.permute, "how": self.how, "input_shape": list(self.input_shape),
            "layers": [l.to_json() for l in self.layers],
            "skipped": [{"index": s.index, "name": s.name, "reason": s.reason} for s in self.skipped],
            "totals": {"before": self.before.to_json() if self.before else None,
                       "after": self.after.to_json() if self.after else None},
            "moved": ({"max_abs": self.moved.max_abs, "max_rel": self.moved.max_rel,
                       "top1_agreement": self.moved.top1_agreement, "probes": self.moved.probes,
                       "batch": self.moved.batch} if self.moved else None),
            "probe": dict(self.moved.probe) if self.moved else None,
            "search_s": self.search_s, "lossy": self.lossy, "note": self.note,
        }


# ----------------------------------------------------------------------------- graph plumbing

@dataclass
class _Unit:
    """A conv that can absorb permutations: ``conv`` (nn.Conv2d) plus, for a Darknet
    convolutional layer, the BatchNorm inside the same layer."""

    node: fx.Node
    name: str  # module name of the fx node (Conv2d, or the Darknet layer)
    conv_name: str  # module name of the nn.Conv2d itself (or of an nn.Linear consumer)
    conv: nn.Module  # nn.Conv2d; an nn.Linear only as the consumer after a global pool
    inner_bn: str | None = None  # module name of a BN inside the unit (Darknet)


@dataclass
class _Interface:
    """One tensor between a producer conv and its consumer convs through per-channel ops."""

    producer: _Unit | None
    passes: list[fx.Node] = field(default_factory=list)
    consumers: list[_Unit] = field(default_factory=list)
    blocked: str | None = None  # why it cannot be permuted


class _Graph:
    def __init__(self, module: nn.Module):
        self.module = module
        self.lg = layer_graph(module)
        self.gm = self.lg.gm
        self.darknet = self.lg.darknet
        self.regrouping: set[str] = set()  # convs being regrouped (grouped-conv checks accept them)
        self.calls: dict[str, int] = {}
        for n in self.gm.graph.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1

    def sub(self, target) -> nn.Module:
        return self.gm.get_submodule(str(target))

    def unit(self, node: fx.Node) -> _Unit | None:
        """The conv unit a node calls, or None."""
        if node.op != "call_module":
            return None
        m = self.sub(node.target)
        name = str(node.target)
        if isinstance(m, nn.Conv2d):
            return _Unit(node, name, name, m)
        if getattr(m, "section", None) == "convolutional" and isinstance(getattr(m, "conv", None), nn.Conv2d):
            return _Unit(node, name, f"{name}.conv", m.conv, f"{name}.bn" if m.bn is not None else None)
        return None

    def is_pass(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            m = self.sub(node.target)
            if getattr(m, "section", None) in _DARKNET_PASS:
                return True
            if getattr(m, "section", None) == "route":
                return len(node.args) == 1 and getattr(m, "groups", 1) == 1
            if isinstance(m, nn.PReLU):
                return True
            return isinstance(m, _PASS_MODULES) or type(m).__name__ == "DarknetActivation"
        if node.op == "call_function":
            return node.target in _PASS_FUNCTIONS
        if node.op == "call_method":
            return node.target in _PASS_METHODS
        return False

    @staticmethod
    def what(node: fx.Node) -> str:
        if node.op == "placeholder":
            return "the network input"
        if node.op == "output":
            return "the network output"
        t = node.target
        if node.op == "call_function":
            name = getattr(t, "__name__", str(t))
            return {"add": "a residual add", "iadd": "a residual add", "cat": "a concat",
                    "flatten": "a reshape", "reshape": "a reshape", "view": "a reshape"}.get(name, f"a {name}")
        return f"{node.target}"

    def _describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            m = self.sub(node.target)
            sec = getattr(m, "section", None)
            kind = {"shortcut": "a residual add (shortcut)", "route": "a route/concat"}.get(sec, None)
            if kind is None:
                kind = sec or type(m).__name__
            return f"{kind} ({node.target})"
        if node.op == "call_method" and node.target in ("view", "reshape", "flatten"):
            return f"a reshape ({node.name})"
        return self.what(node)

    def _pooled(self, node: fx.Node) -> bool:
        """A global pool: its output is (B, C, 1, 1)."""
        if node.op != "call_module":
            return False
        m = self.sub(node.target)
        return isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and m.output_size in (1, (1, 1))

    def _flatten(self, node: fx.Node) -> bool:
        """``torch.flatten(x, 1)`` / ``x.flatten(1)`` / ``nn.Flatten()``: after a global pool,
        channel c is feature c."""
        if node.op == "call_module":
            m = self.sub(node.target)
            return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
        if node.op == "call_function" and node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return start == 1 and len(node.args) <= 2 and "end_dim" not in node.kwargs
        if node.op == "call_method" and node.target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return start == 1 and len(node.args) <= 2 and "end_dim" not in node.kwargs
        return False

    def interface_from(self, producer: _Unit) -> _Interface:
        """Follow the producer's output through per-channel ops to its consumers."""
        iface = _Interface(producer)
        if self.calls.get(producer.name, 0) > 1:
            iface.blocked = f"{producer.name} is called more than once"
            return iface
        stack = [producer.node]
        while stack and iface.blocked is None:
            n = stack.pop()
            for u in n.users:
                if u.op == "call_module" and self.calls.get(str(u.target), 0) > 1 and not isinstance(
                        self.sub(u.target), (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                                             nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                    iface.blocked = f"{u.target} is called more than once"
                    break
                unit = self.unit(u)
                if unit is None and self._pooled(n) and self._flatten(u):
                    iface.passes.append(u)  # (B, C, 1, 1) -> (B, C): channels stay features
                    stack.append(u)
                    continue
                if unit is None and self._flatten(n) and u.op == "call_module" \
                        and isinstance(self.sub(u.target), nn.Linear) and len(u.all_input_nodes) == 1:
                    unit = _Unit(u, str(u.target), str(u.target), self.sub(u.target))
                    if self.calls.get(unit.name, 0) > 1:
                        iface.blocked = f"{unit.name} is called more than once"
                        break
                    iface.consumers.append(unit)
                    continue
                if unit is not None and u.args and u.args[0] is n and len(u.all_input_nodes) == 1:
                    if unit.conv.groups != 1 and unit.name not in self.regrouping:
                        iface.blocked = f"it feeds the grouped conv {unit.name}"
                        break
                    iface.consumers.append(unit)
                elif self.is_pass(u) and u.args and u.args[0] is n and len(u.all_input_nodes) == 1:
                    iface.passes.append(u)
                    stack.append(u)
                else:
                    iface.blocked = f"it also feeds {self._describe(u)}"
                    break
        return iface

    def interface_into(self, consumer: _Unit) -> _Interface:
        """The interface a conv reads: walk back through per-channel ops to the producer."""
        n = consumer.node.args[0] if consumer.node.args else None
        while isinstance(n, fx.Node) and self.is_pass(n):
            n = n.args[0] if n.args else None
        if not isinstance(n, fx.Node):
            return _Interface(None, blocked="its input is not a tensor the graph tracks")
        unit = self.unit(n)
        if unit is None:
            return _Interface(None, blocked=f"its input comes from {self._describe(n)}")
        if unit.conv.groups != 1 and unit.name not in self.regrouping:
            return _Interface(None, blocked=f"its input comes from the grouped conv {unit.name}")
        return self.interface_from(unit)



# ----------------------------------------------------------------------------- selection

@dataclass
class _Target:
    unit: _Unit
    index: int
    groups: int
    stage: int
    in_iface: _Interface | None = None
    out_iface: _Interface | None = None
    out_groups: tuple[int, ...] = ()
    in_groups: tuple[int, ...] = ()
    retained: float = 1.0
    contiguous: float = 1.0
    fixed: dict = field(default_factory=dict)


def _spatial_sizes(g: _Graph, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Output shapes (without batch) of every call_module node, by shape propagation on the
    meta device (no real compute)."""
    from torch.fx.passes.shape_prop import ShapeProp
    from surgery.core.graph import meta_copy

    gm = meta_copy(g.gm)
    x = torch.empty((1, *input_shape), device="meta")
    try:
        ShapeProp(gm).propagate(x)
    except Exception as e:  # shape errors from the user's model
        raise SurgeryError(f"regroup: cannot run the model on input 1x{'x'.join(map(str, input_shape))} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); pass --input") from None
    shapes = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if n.op == "call_module" and tm is not None and hasattr(tm, "shape"):
            shapes[n.name] = tuple(tm.shape[1:])
    return shapes


def _select(g: _Graph, net: Net, root: int, schedule: str, layers: str | None):
    chosen = {l.node for l in select(g.lg, layers)} if layers else None
    index_of = {l.node: l.index for l in g.lg.layers}
    candidates, skipped = [], []
    for node in g.gm.graph.nodes:
        unit = g.unit(node)
        if unit is None or node.name not in index_of:
            continue
        if chosen is not None and node.name not in chosen:
            continue
        idx, c = index_of[node.name], unit.conv
        if max(c.kernel_size) <= 1:
            if chosen is not None:
                skipped.append(RegroupSkip(idx, unit.name, f"{'x'.join(map(str, c.kernel_size))} conv: only spatial "
                                                           f"convs (kernel > 1) are regrouped"))
            continue
        if c.groups != 1:
            skipped.append(RegroupSkip(idx, unit.name, f"already grouped (groups={c.groups})"
                                       + (", depthwise" if c.groups == c.in_channels else "")))
            continue
        if g.calls.get(unit.name, 0) > 1:
            skipped.append(RegroupSkip(idx, unit.name, "the module is called more than once"))
            continue
        if any(a.op == "placeholder" for a in node.all_input_nodes):
            skipped.append(RegroupSkip(idx, unit.name, "reads the network input (the first layer stays dense, "
                                                       "as in Deep Roots)"))
            continue
        candidates.append((idx, unit))
    if not candidates:
        where = f"selection {layers!r}" if layers else "this model"
        raise SurgeryError(f"regroup: {where} has no dense spatial conv to regroup"
                           + (f" ({len(skipped)} skipped: {skipped[0].name}: {skipped[0].reason})" if skipped else ""))
    sizes = _spatial_sizes(g, net.input_shape)
    areas = {}
    for idx, unit in candidates:
        shp = sizes.get(unit.node.name, ())
        areas[unit.name] = int(torch.tensor(shp[1:]).prod()) if len(shp) > 1 else 1
    ranks = {a: r for r, a in enumerate(sorted(set(areas.values()), reverse=True))}
    targets = []
    for idx, unit in candidates:
        stage = ranks[areas[unit.name]]
        G = max(1, root >> stage) if schedule == "deep-roots" else root
        c = unit.conv
        if G == 1:
            skipped.append(RegroupSkip(idx, unit.name, f"1 group at stage {stage} ({schedule} schedule): stays dense"))
            continue
        if c.in_channels % G or c.out_channels % G:
            skipped.append(RegroupSkip(idx, unit.name, f"{c.in_channels} input / {c.out_channels} output channels "
                                                       f"are not divisible by {G} groups"))
            continue
        targets.append(_Target(unit, idx, G, stage))
    return targets, sorted(skipped, key=lambda s: s.index)


# ----------------------------------------------------------------------------- search

def _energy(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().double().pow(2).sum(dim=tuple(range(2, conv.weight.dim())))  # (out, in)


def _plan_sides(g: _Graph, targets: list[_Target], permute: str):
    """Interfaces of each target; which sides are free; chain links between targets."""
    by_name = {t.unit.name: t for t in targets}
    g.regrouping = set(by_name)
    links: dict[str, str] = {}  # producer target -> consumer target sharing one free interface
    for t in targets:
        t.in_iface = g.interface_into(t.unit)
        t.out_iface = g.interface_from(t.unit)
    for t in targets:
        for side, iface in (("in", t.in_iface), ("out", t.out_iface)):
            if permute == "none":
                t.fixed[side] = "--permute none"
                continue
            if iface.blocked:
                t.fixed[side] = iface.blocked
                continue
            members = [u.name for u in [iface.producer, *iface.consumers] if u is not None and u.name in by_name]
            others = [m for m in members if m != t.unit.name]
            if not others:
                continue
            if len(others) == 1 and by_name[others[0]].groups == t.groups and len(members) == 2 and (
                    (side == "out" and iface.producer.name == t.unit.name)
                    or (side == "in" and iface.producer.name == others[0])):
                if side == "out":
                    links[t.unit.name] = others[0]
                continue
            t.fixed[side] = f"shared with the regrouped {', '.join(others)} at another group count"
    return links


def _search(targets: list[_Target], links: dict[str, str], seed: int) -> None:
    by_name = {t.unit.name: t for t in targets}
    linked_to = set(links.values())
    for t in targets:
        if t.unit.name in linked_to:
            continue  # searched as part of the chain that starts upstream
        chain = [t]
        while chain[-1].unit.name in links:
            chain.append(by_name[links[chain[-1].unit.name]])
        G = t.groups
        keep = torch.eye(G, dtype=torch.bool)
        es = [_energy(c.unit.conv) for c in chain]
        if len(chain) == 1:
            c = t.unit.conv
            out_sizes, in_sizes = [c.out_channels // G] * G, [c.in_channels // G] * G
            p = partition.search(es[0], out_sizes, in_sizes, keep,
                                 fixed_out=partition.contiguous(out_sizes) if "out" in t.fixed else None,
                                 fixed_in=partition.contiguous(in_sizes) if "in" in t.fixed else None, seed=seed)
            parts = [p]
        else:
            es = [e / e.sum() if e.sum() > 0 else e for e in es]
            first = chain[0].unit.conv
            in_sizes = [first.in_channels // G] * G
            parts = partition.search_chain(
                es, [[c.unit.conv.out_channels // G] * G for c in chain], keep,
                first_in=partition.contiguous(in_sizes) if "in" in chain[0].fixed else None,
                last_out_fixed="out" in chain[-1].fixed, seed=seed)
        for c, p in zip(chain, parts):
            c.out_groups, c.in_groups, c.retained, c.contiguous = p.out_groups, p.in_groups, p.retained, p.baseline


# ----------------------------------------------------------------------------- apply

def _permute_rows(module: nn.Module, perm: torch.Tensor, names: Sequence[str]) -> None:
    for n in names:
        t = getattr(module, n, None)
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == len(perm):
            t.data = t.data[perm].clone()


def _grouped(conv: nn.Conv2d, groups: int, perm_out: torch.Tensor | None, perm_in: torch.Tensor | None) -> nn.Conv2d:
    """A grouped copy of ``conv`` keeping the diagonal blocks in the permuted channel order."""
    w = conv.weight.detach()
    if perm_out is not None:
        w = w[perm_out]
    if perm_in is not None:
        w = w[:, perm_in]
    o, i = conv.out_channels // groups, conv.in_channels // groups
    blocks = [w[g * o:(g + 1) * o, g * i:(g + 1) * i] for g in range(groups)]
    new = _empty_grouped(conv, groups)
    new.weight.data = torch.cat(blocks, 0).clone()
    if conv.bias is not None:
        b = conv.bias.detach()
        new.bias.data = (b[perm_out] if perm_out is not None else b).clone()
    return new.train(conv.training)


def _empty_grouped(conv: nn.Conv2d, groups: int) -> nn.Conv2d:
    with torch.device("meta"):
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    return new.to_empty(device=conv.weight.device).to(conv.weight.dtype)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _apply(module: nn.Module, g: _Graph, targets: list[_Target]) -> None:
    """Permute neighbours and replace the regrouped convs in ``module`` (a private copy)."""
    by_name = {t.unit.name: t for t in targets}
    done: set[str] = set()  # interfaces (by producer) already permuted: a chain's interior is shared

    def perm_of(groups: Sequence[int]) -> torch.Tensor | None:
        p = partition.permutation(groups)
        return None if p == list(range(len(p))) else torch.tensor(p, dtype=torch.long)

    for t in targets:
        for side in ("in", "out"):
            iface = t.in_iface if side == "in" else t.out_iface
            if side in t.fixed or iface.producer is None or iface.producer.name in done:
                continue
            perm = perm_of(t.in_groups if side == "in" else t.out_groups)
            if perm is None:
                continue
            done.add(iface.producer.name)
            prod = iface.producer
            if prod.name not in by_name:  # a regrouped producer permutes its rows in _grouped
                _permute_rows(module.get_submodule(prod.conv_name), perm, ("weight", "bias"))
            if prod.inner_bn:
                _permute_rows(module.get_submodule(prod.inner_bn), perm, _BN_BUFFERS)
            for p in iface.passes:
                if p.op == "call_module":
                    _permute_rows(module.get_submodule(str(p.target)), perm, _BN_BUFFERS)
            for u in iface.consumers:
                if u.name not in by_name:  # a regrouped consumer permutes its columns in _grouped
                    conv = module.get_submodule(u.conv_name)
                    conv.weight.data = conv.weight.data[:, perm].clone()
    for t in targets:
        conv = module.get_submodule(t.unit.conv_name)
        perm_out = None if "out" in t.fixed else perm_of(t.out_groups)
        perm_in = None if "in" in t.fixed else perm_of(t.in_groups)
        _set_submodule(module, t.unit.conv_name, _grouped(conv, t.groups, perm_out, perm_in))


# ----------------------------------------------------------------------------- replay

def _regroup_structure(module: nn.Module, convs: Mapping[str, int]) -> nn.Module:
    for name, groups in convs.items():
        try:
            conv = module.get_submodule(name)
        except AttributeError:
            raise SurgeryError(f"regroup replay: the model has no module {name!r}; the checkpoint does not match "
                               f"its architecture") from None
        if not isinstance(conv, nn.Conv2d):
            raise SurgeryError(f"regroup replay: {name} is a {type(conv).__name__}, not a Conv2d")
        if conv.groups != int(groups):
            _set_submodule(module, name, _empty_grouped(conv, int(groups)))
    return module


@replayable("regroup")
def _replay_regroup(module: nn.Module, args: Mapping) -> nn.Module:
    return _regroup_structure(module, dict(args.get("convs", {})))


# ----------------------------------------------------------------------------- moved / costs

@torch.no_grad()
def measure_moved(source: nn.Module, result: nn.Module, input_shape, *, probes: int = 2, batch: int = 4,
                  seed: int = 0, probe: Probe | None = None) -> Moved:
    """Relative output difference (as :func:`surgery.core.verify.compare`) and, for a single
    (batch, classes) output, top-1 agreement on the same probe inputs: ``probes`` seeded random
    batches of ``batch``, or ``probe`` (real images, ``--data``)."""
    a_mod, b_mod = source.eval(), result.eval()
    max_abs = max_rel = 0.0
    agree = total = 0
    classifier = True
    inputs = probe.tensors() if probe is not None else probe_inputs(input_shape, probes=probes, batch=batch, seed=seed)
    if probe is not None:
        probes, batch = len(inputs), probe.batch
    for x in inputs:
        ra, rb = run_outputs(a_mod, x), run_outputs(b_mod, x)
        for oa, ob in zip(ra, rb):
            d = (oa - ob).abs().max().item() if oa.numel() else 0.0
            s = oa.abs().max().item() if oa.numel() else 0.0
            max_abs = max(max_abs, d)
            max_rel = max(max_rel, d / s if s > 0 else (0.0 if d == 0 else float("inf")))
        if len(ra) == 1 and ra[0].dim() == 2 and ra[0].shape[1] > 1:
            agree += int((ra[0].argmax(1) == rb[0].argmax(1)).sum())
            total += ra[0].shape[0]
        else:
            classifier = False
    return Moved(probes, batch, max_abs, max_rel, agree / total if classifier and total else None,
                 probe_json(probe, probes * batch))


def _costs(net: Net):
    from analyzers.cost import analyze

    rep = analyze(net)
    t = rep.totals
    return CostTotals(t.params, t.macs, t.bytes_read, t.bytes_written), {l.index: l for l in rep.layers}


# ----------------------------------------------------------------------------- the surgery

def regroup(net: Net, root: int, *, schedule: str = "deep-roots", layers: str | None = None,
            permute: str = "best", probes: int = 2, batch: int = 4, cost: bool = True,
            seed: int = 0, probe: Probe | None = None) -> tuple[Net, RegroupReport]:
    """Regroup ``net``'s dense spatial convs into ``root`` filter groups (see the module doc).

    ``probes`` probe batches of ``batch`` inputs measure how far the function moved (0: skip);
    ``probe`` (real images, :func:`surgery.evaluate.image_probe`) replaces them;
    ``cost=False`` skips the before/after cost analysis (faster, for tests and sweeps).
    """
    if not isinstance(net, Net):
        raise SurgeryError("regroup takes a surgery Net (surgery.core.io.load gives one)")
    net.require_editable("regroup")
    if isinstance(root, bool) or not isinstance(root, int) or root < 1:
        raise SurgeryError(f"--root {root!r}: give a positive number of groups (1, 2, 4, ..., 64)")
    if schedule not in SCHEDULES:
        raise SurgeryError(f"unknown schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    if permute not in PERMUTES:
        raise SurgeryError(f"unknown --permute {permute!r}; use best or none")
    module = net.module
    g = _Graph(module)
    targets, skipped = _select(g, net, root, schedule, layers)
    t0 = time.perf_counter()
    links = _plan_sides(g, targets, permute)
    if permute == "best":
        _search(targets, links, seed)
    else:
        for t in targets:
            c = t.unit.conv
            p = partition.search(_energy(c), [c.out_channels // t.groups] * t.groups,
                                 [c.in_channels // t.groups] * t.groups, torch.eye(t.groups, dtype=torch.bool),
                                 fixed_out=partition.contiguous([c.out_channels // t.groups] * t.groups),
                                 fixed_in=partition.contiguous([c.in_channels // t.groups] * t.groups))
            t.out_groups, t.in_groups, t.retained, t.contiguous = p.out_groups, p.in_groups, p.retained, p.baseline
    search_s = time.perf_counter() - t0

    new_module = copy.deepcopy(module)
    with torch.no_grad():
        _apply(new_module, g, targets)
    convs = {t.unit.conv_name: t.groups for t in targets}
    meta = {**dict(net.metadata), "regroup": {"root": root, "schedule": schedule, "permute": permute}}
    if is_darknet(new_module):
        how = "darknet-cfg"
        for t in targets:
            lay = new_module.get_submodule(t.unit.name)
            new_module.blocks[lay.index + 1]["groups"] = str(t.groups)
            lay.options["groups"] = str(t.groups)
        stem = (net.arch.name.rsplit("/", 1)[-1] if net.arch else "model").removesuffix(".cfg")
        arch = ArchSpec("darknet", f"{stem}-root{root}.cfg", {}, cfg=new_module.cfg_text())
        result = net.evolve(new_module, None, arch=arch, metadata=meta)
    else:
        how = "replay"
        result = net.evolve(new_module, Step("regroup", {"convs": convs, "root": root, "schedule": schedule}),
                            metadata=meta)

    before = after = None
    lc_before, lc_after = {}, {}
    if cost:
        before, lc_before = _costs(net)
        after, lc_after = _costs(result)
    check_shape(probe, net.input_shape, net.source or "the model")
    if probes > 0:  # the source and the result run side by side on real probe inputs
        safety.check_forward_memory(module, tuple(net.input_shape), batch=probe.batch if probe else batch, copies=2,
                                    what="the probes measuring how far the function moved")
    moved = measure_moved(module, new_module, net.input_shape, probes=probes, batch=batch,
                          seed=seed, probe=probe) if probes > 0 else None

    rows = []
    for t in targets:
        c = t.unit.conv
        permuted = tuple(s for s in ("in", "out") if s not in t.fixed and partition.permutation(
            t.in_groups if s == "in" else t.out_groups) != list(range(c.in_channels if s == "in" else c.out_channels)))
        lb, la = lc_before.get(t.index), lc_after.get(t.index)
        rows.append(RegroupLayer(
            index=t.index, name=t.unit.conv_name if not g.darknet else t.unit.name, groups=t.groups,
            in_channels=c.in_channels, out_channels=c.out_channels, kernel=tuple(c.kernel_size), stage=t.stage,
            retained=t.retained, contiguous=t.contiguous, expected=1.0 / t.groups, permuted=permuted,
            fixed=dict(t.fixed), params_before=c.weight.numel() + (c.bias.numel() if c.bias is not None else 0),
            params_after=c.weight.numel() // t.groups + (c.bias.numel() if c.bias is not None else 0),
            macs_before=lb.macs if lb else None, macs_after=la.macs if la else None))
    report = RegroupReport(
        model=net.source or (net.arch.describe() if net.arch else ""), root=root, schedule=schedule, permute=permute,
        how=how, layers=tuple(rows), skipped=tuple(skipped), before=before, after=after, moved=moved,
        search_s=search_s, input_shape=tuple(net.input_shape))
    return result, report


make_callable(__name__, regroup)  # surgery.regroup(...) calls regroup() (the public API)
