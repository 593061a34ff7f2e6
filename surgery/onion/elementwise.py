"""Decomposed activations in a layer graph: ``x * clamp(x + 3, 0, 6) / 6`` is hardswish, not
a branch join.

Exporters and converters often spell an activation out in elementwise ops. In the layer
graph the last op (the ``mul`` or ``truediv``) then reads two layers, which the chain check of
``onion split`` would read as a residual join. :func:`activation_groups` finds every group of
parameter-free elementwise layers that starts from one layer's output and meets again at one
layer, evaluates the group on a ramp of values and names the standard activation it equals
(``nn.Hardswish``, ``nn.Hardsigmoid``, ``nn.SiLU``, ...); a group that equals none is left alone
(and is refused as a join, as before).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

# Function layers that act elementwise with Python-number operands.
_ELEMENTWISE = {"add", "sub", "mul", "truediv", "div", "clamp", "clip", "relu", "relu6", "hardtanh", "sigmoid",
                "tanh", "neg", "minimum", "maximum", "hardsigmoid", "hardswish", "silu", "add_", "mul_", "clamp_",
                "floordiv"}
_CANDIDATES = (nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.ReLU6, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Mish)


@dataclass(frozen=True)
class Group:
    source: object  # the layer index (or "input") the group reads
    members: tuple[int, ...]  # layer indices in the group, the joining layer last
    module: nn.Module  # the standard activation it computes


def _elementwise_layer(lg, layer) -> bool:
    if layer.kind == "module":
        m = lg.gm.get_submodule(layer.name)
        return isinstance(m, _CANDIDATES + (nn.Hardtanh, nn.Identity)) and not any(True for _ in m.parameters())
    return str(layer.type).lower() in _ELEMENTWISE


def activation_groups(lg) -> dict[int, Group]:
    """Joining layer index -> :class:`Group`, for each decomposed activation in ``lg``."""
    g = lg.nx
    by_index = {l.index: l for l in lg.layers}
    found: dict[int, Group] = {}
    for join in lg.layers:
        if g.in_degree(join.index) < 2 or not _elementwise_layer(lg, join):
            continue
        members = {join.index}
        frontier = list(g.predecessors(join.index))
        sources = set()
        ok = True
        while frontier and ok:
            p = frontier.pop()
            if p in members:
                continue
            layer = by_index.get(p)
            if layer is not None and _elementwise_layer(lg, layer) and g.in_degree(p) == 1 \
                    and all(s in members or s == join.index for s in g.successors(p)):
                members.add(p)
                frontier.extend(g.predecessors(p))
            else:
                sources.add(p)
            ok = len(sources) <= 1
        if not ok or len(sources) != 1:
            continue
        (source,) = sources
        last = join.index
        for _ in range(4):  # the group, then with up to 3 single-input elementwise layers after it (the "/ 6")
            order = tuple(l.index for l in lg.layers if l.index in members)
            module = _identify(lg, source, order)
            if module is not None:
                found[last] = Group(source, order, module)
                break
            nxt = list(g.successors(last))
            if len(nxt) != 1 or nxt[0] not in by_index or g.in_degree(nxt[0]) != 1 \
                    or not _elementwise_layer(lg, by_index[nxt[0]]):
                break
            last = nxt[0]
            members.add(last)
    return found


def _identify(lg, source, members) -> nn.Module | None:
    """The standard activation the group computes, by evaluation on a ramp, else None."""
    try:
        sub = _extract(lg, source, members)
        x = torch.linspace(-8, 8, 2001, dtype=torch.float64).reshape(1, -1, 1, 1)
        with torch.no_grad():
            y = sub(x)
            for cls in _CANDIDATES:
                if isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, cls()(x), atol=1e-6):
                    return cls()
    except Exception:  # a group that does not run on a lone tensor is no activation
        return None
    return None


def _extract(lg, source, members) -> fx.GraphModule:
    nodes = {n.name: n for n in lg.gm.graph.nodes}
    member_nodes = {lg.layers[[l.index for l in lg.layers].index(i)].node for i in members}
    graph = fx.Graph()
    x = graph.placeholder("x")
    env: dict[fx.Node, fx.Node] = {}
    if source == "input":
        env[next(n for n in lg.gm.graph.nodes if n.op == "placeholder")] = x
    else:
        src = next(l for l in lg.layers if l.index == source)
        env[nodes[src.node]] = x
    last = None
    for n in lg.gm.graph.nodes:
        if n.name in member_nodes or (n.op in ("call_function", "call_method") and n.users
                                      and any(u.name in member_nodes for u in n.users)
                                      and all(a in env for a in n.all_input_nodes) and n not in env
                                      and lg.layer_of(n) is None):
            if not all(a in env for a in n.all_input_nodes):
                raise ValueError("the group reads a value from outside")
            env[n] = graph.node_copy(n, lambda a: env[a])
            if n.name in member_nodes:
                last = env[n]
    graph.output(last)
    return fx.GraphModule(lg.gm, graph)
