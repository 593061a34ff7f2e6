"""Which tensors :func:`analyzers.diff.diff` compares: every floating tensor of a model's
state_dict at the index of the layer that owns it (Darknet's own index, else the layer table's,
else the state_dict's module order), with its kind (``weight``, ``bias``, ``bn_weight``...);
then the pairs of two models — by name, then by (layer index, kind) where one candidate of each
is left — and the skipped ones (shapes differ, in one model only). :mod:`analyzers.diff`
documents the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection

import torch
from torch import nn

from analyzers.diff_report import Skipped
from surgery.core.errors import SurgeryError, suggest
from surgery.core.net import Net

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Entry:
    key: str
    index: int
    layer: str
    kind: str
    tensor: torch.Tensor = field(repr=False)


def _is_norm(owner: nn.Module | None, owner_keys: set[str]) -> bool:
    if owner is not None and isinstance(owner, _NORM_TYPES):
        return True
    return "running_mean" in owner_keys  # TorchScript and other wrappers of a BatchNorm


def _kind(attr: str, norm: bool, darknet: bool) -> str:
    if attr in ("running_mean", "running_var"):
        return attr
    if norm and attr == "weight":
        return "bn_weight"
    if norm and attr == "bias":
        return "bias" if darknet else "bn_bias"
    return attr


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Floating tensors of the state_dict (views, no copies)."""
    return {k: v for k, v in module.state_dict(keep_vars=False).items()
            if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())}


def _owner_indices(module: nn.Module, owners: list[str]) -> tuple[dict[str, tuple[int, str]], str]:
    """owner module name -> (layer index, layer name), and where the indices come from."""
    from surgery.core.graph import is_darknet, layer_graph

    if is_darknet(module):
        out = {}
        for o in owners:
            parts = o.split(".")
            if len(parts) >= 2 and parts[0] == "layers" and parts[1].isdigit():
                out[o] = (int(parts[1]), f"layers.{parts[1]}")
            else:
                out[o] = (-1, o)
        return out, "darknet"
    try:
        lg = layer_graph(module)
    except (SurgeryError, RuntimeError, TypeError, AttributeError):
        order = {o: i for i, o in enumerate(dict.fromkeys(owners))}
        return {o: (order[o], o) for o in owners}, "module_order"
    by_name = {l.name: (l.index, l.name) for l in lg.layers if l.kind == "module"}
    # parameters read through get_attr belong to the first layer that uses them
    for node in lg.gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner = str(node.target).rpartition(".")[0]
        users = [lg.layer_of(u) for u in node.users]
        users = [u for u in users if u is not None]
        if users and owner not in by_name:
            first = min(users, key=lambda l: l.index)
            by_name[owner] = (first.index, first.name)
    out = {}
    for o in owners:
        hit = by_name.get(o)
        probe = o
        while hit is None and probe:  # a parameter inside a leaf layer (e.g. a composite leaf)
            probe = probe.rpartition(".")[0]
            hit = by_name.get(probe)
        if hit is None:  # a container whose children are the layers
            below = [v for k, v in by_name.items() if k.startswith(o + ".") or not o]
            hit = min(below) if below else (-1, o)
        out[o] = hit
    return out, "layer_table"


def entries_of(module: nn.Module) -> tuple[list[Entry], bool, str]:
    from surgery.core.graph import is_darknet

    darknet = is_darknet(module)
    state = _state(module)
    owners = [k.rpartition(".")[0] for k in state]
    keys_by_owner: dict[str, set[str]] = {}
    for k in state:
        o, _, attr = k.rpartition(".")
        keys_by_owner.setdefault(o, set()).add(attr)
    index, source = _owner_indices(module, owners)
    entries = []
    for k, t in state.items():
        o, _, attr = k.rpartition(".")
        try:
            owner = module.get_submodule(o) if o else module
        except AttributeError:
            owner = None
        idx, lname = index[o]
        entries.append(Entry(k, idx, lname, _kind(attr, _is_norm(owner, keys_by_owner[o]), darknet), t))
    return entries, darknet, source


def module_of(m: Net | nn.Module) -> tuple[nn.Module, str]:
    if isinstance(m, Net):
        return m.module, m.source or type(m.module).__name__
    if isinstance(m, nn.Module):
        return m, type(m).__name__
    raise SurgeryError(f"cannot diff a {type(m).__name__}; pass a Net or an nn.Module")


@dataclass(frozen=True)
class Filter:
    layers: Collection[int] | None
    kinds: Collection[str] | None

    def layer(self, i: int) -> bool:
        return self.layers is None or i in self.layers

    def kind(self, k: str) -> bool:
        return self.kinds is None or k in self.kinds

    def compute(self, e: Entry) -> bool:
        """Weights are always computed (the split uses them), filtered out of the rows later."""
        return self.layer(e.index) and (self.kind(e.kind) or e.kind == "weight")


def plan_pairs(ea: list[Entry], eb: list[Entry], wanted: Filter) -> tuple[list, list[Skipped]]:
    """Pairs to compare (by name, then by layer index and kind), and the skipped tensors."""
    by_key_b = {e.key: e for e in eb}
    keys_a = {e.key for e in ea}
    pairs = [(e, by_key_b[e.key]) for e in ea if e.key in by_key_b]
    pairs += _pair_by_index([e for e in ea if e.key not in by_key_b], [f for f in eb if f.key not in keys_a])
    paired_a, paired_b = {e.key for e, _ in pairs}, {f.key for _, f in pairs}

    todo, skipped = [], []
    for e, f in pairs:
        sa, sb = tuple(e.tensor.shape), tuple(f.tensor.shape)
        if sa == sb:
            if wanted.compute(e):
                todo.append((e, f))
        elif wanted.layer(e.index) and wanted.kind(e.kind):
            skipped.append(Skipped(e.index, e.layer, e.key, e.kind, f"shapes differ: A {list(sa)} vs B {list(sb)}",
                                   sa, sb))
    for e in ea:
        if e.key not in paired_a and wanted.layer(e.index) and wanted.kind(e.kind):
            skipped.append(Skipped(e.index, e.layer, e.key, e.kind, "only in A", tuple(e.tensor.shape), None))
    for f in eb:
        if f.key not in paired_b and wanted.layer(f.index) and wanted.kind(f.kind):
            skipped.append(Skipped(f.index, f.layer, f.key, f.kind, "only in B", None, tuple(f.tensor.shape)))
    skipped.sort(key=lambda s: (s.index, s.param))
    return todo, skipped


def check_filters(entries: list[Entry], layers, kinds) -> None:
    """A filter that selects nothing is a mistake worth one clear line."""
    if layers is not None:
        have = sorted({e.index for e in entries if e.index >= 0})
        if not set(layers) & set(have):
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise SurgeryError(f"no layer with parameters among the requested layers; these models have layers {span}")
    if kinds is not None:
        present = sorted({e.kind for e in entries})
        for k in kinds:
            if k not in present:
                raise SurgeryError(f"no tensor of kind {k!r}{suggest(k, present)}; kinds here: {', '.join(present)}")


def _pair_by_index(only_a: list[Entry], only_b: list[Entry]) -> list[tuple[Entry, Entry]]:
    """Pair leftovers whose (layer index, kind) has exactly one candidate on each side."""
    def groups(es):
        g: dict[tuple[int, str], list[Entry]] = {}
        for e in es:
            if e.index >= 0:
                g.setdefault((e.index, e.kind), []).append(e)
        return g

    ga, gb = groups(only_a), groups(only_b)
    return [(ga[k][0], gb[k][0]) for k in ga if k in gb and len(ga[k]) == 1 and len(gb[k]) == 1]
