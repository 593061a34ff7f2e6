"""Plan: which convs are regrouped into how many groups, and which of their sides are free.

By default every spatial conv (a kernel dimension > 1) with ``groups=1`` that does not read
the network input; ``layers=`` narrows it to a selector of :func:`surgery.core.graph.select`.
``deep-roots`` gives ``root`` groups at the highest output resolution among the selected convs
and halves it at each lower resolution ("stage"), never below 1; ``constant`` gives ``root``
everywhere. A side of a conv is free when its interface (:mod:`surgery.regroup.interfaces`)
can absorb a permutation; two regrouped convs on one free interface at the same group count
are linked into a chain, searched together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.fx.passes.shape_prop import ShapeProp

from surgery.core.errors import SurgeryError, first_line
from surgery.core.graph import meta_copy, select
from surgery.core.net import Net
from surgery.regroup.interfaces import Graph, Interface, Unit
from surgery.regroup.report import RegroupSkip


@dataclass
class Target:
    """A conv to regroup, and what the search decides for it."""

    unit: Unit
    index: int
    groups: int
    stage: int
    in_iface: Interface | None = None
    out_iface: Interface | None = None
    out_groups: tuple[int, ...] = ()
    in_groups: tuple[int, ...] = ()
    retained: float = 1.0
    contiguous: float = 1.0
    fixed: dict = field(default_factory=dict)  # side ("in"/"out") -> why it stays fixed


def spatial_sizes(g: Graph, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Output shapes (without batch) of every call_module node, by shape propagation on the
    meta device (no real compute)."""
    gm = meta_copy(g.gm)
    x = torch.empty((1, *input_shape), device="meta")
    try:
        ShapeProp(gm).propagate(x)
    except Exception as e:  # shape errors from the user's model
        raise SurgeryError(f"regroup: cannot run the model on input 1x{'x'.join(map(str, input_shape))} "
                           f"({type(e).__name__}: {first_line(e)}); pass --input") from None
    shapes = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if n.op == "call_module" and tm is not None and hasattr(tm, "shape"):
            shapes[n.name] = tuple(tm.shape[1:])
    return shapes


def _candidates(g: Graph, layers: str | None):
    """(index, unit) of every dense spatial conv selected, and the selected ones left dense."""
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
    return candidates, skipped


def select_targets(g: Graph, net: Net, root: int, schedule: str,
                   layers: str | None) -> tuple[list[Target], list[RegroupSkip]]:
    """The convs to regroup with their group counts, and the selected ones left dense (why)."""
    candidates, skipped = _candidates(g, layers)
    sizes = spatial_sizes(g, net.input_shape)
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
        targets.append(Target(unit, idx, G, stage))
    return targets, sorted(skipped, key=lambda s: s.index)


def plan_sides(g: Graph, targets: list[Target], permute: str) -> dict[str, str]:
    """Interfaces of each target; which sides are free (``fixed`` says why not); the chain
    links between targets (producer target -> consumer target sharing one free interface)."""
    by_name = {t.unit.name: t for t in targets}
    g.regrouping = set(by_name)
    links: dict[str, str] = {}
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
