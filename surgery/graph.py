"""The graph core: torch.fx trace, the layer table, and a networkx view.

The *layer table* is an ordered list of layers with stable integer indices. For Darknet
models the index is Darknet's own layer index (the ``layers.N`` modules); for other models
it is the execution order of the traced graph's compute nodes: leaf modules and the
functional ops between them (a residual ``+``, ``cat``, ``flatten``), so that every op has a
layer to be attributed to. Per-node data lives in ``node.meta["surgery.layer"]``.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import operator
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import torch
from torch import fx, nn

from surgery.errors import SurgeryError, suggest

# Nodes that move data around without computing anything; they are not layers.
_PLUMBING = {operator.getitem, getattr, builtins.getattr, "size", "dim", "__getitem__"}


class SurgeryTracer(fx.Tracer):
    """Standard leaves plus any module that declares ``surgery_leaf = True`` (Darknet layers,
    Dirac convs): those are units of surgery and of cost attribution."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return bool(getattr(m, "surgery_leaf", False)) or super().is_leaf_module(m, qualname)


@dataclass(frozen=True)
class Layer:
    index: int
    name: str  # module qualified name (kind "module") or fx node name (kind "function")
    type: str  # Darknet section, module class name, or function name
    node: str  # fx node name
    kind: str  # "module" | "function"


def _type_of(node: fx.Node, module: nn.Module) -> str:
    if node.op == "call_module":
        sub = module.get_submodule(node.target)
        return getattr(sub, "section", None) or type(sub).__name__
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def is_darknet(module: nn.Module) -> bool:
    layers = getattr(module, "layers", None)
    return hasattr(module, "blocks") and isinstance(layers, nn.ModuleList) and all(
        hasattr(m, "section") for m in layers
    )


@dataclass(frozen=True)
class LayerGraph:
    gm: fx.GraphModule
    layers: tuple[Layer, ...]
    darknet: bool
    _by_node: dict = field(repr=False, default_factory=dict)

    def layer_of(self, node: fx.Node) -> Layer | None:
        return self._by_node.get(node.name)

    @cached_property
    def nx(self) -> nx.DiGraph:
        """Layer-level data flow: an edge i -> j when layer j reads layer i's output
        (through plumbing nodes such as getitem). Node 'input' is the network input."""
        g = nx.DiGraph()
        g.add_node("input")
        for layer in self.layers:
            g.add_node(layer.index, name=layer.name, type=layer.type)
        nodes = {n.name: n for n in self.gm.graph.nodes}

        def sources(n: fx.Node, seen=None):
            lay = self._by_node.get(n.name)
            if lay is not None:
                return {lay.index}
            if n.op == "placeholder":
                return {"input"}
            out = set()
            for a in n.all_input_nodes:
                out |= sources(a)
            return out

        for layer in self.layers:
            for a in nodes[layer.node].all_input_nodes:
                for s in sources(a):
                    g.add_edge(s, layer.index)
        return g

    def index_of(self, ref: str | int) -> int:
        return resolve(self, ref).index


def trace(module: nn.Module) -> fx.GraphModule:
    try:
        graph = SurgeryTracer().trace(module)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError...
        raise SurgeryError(
            f"cannot trace {type(module).__name__} with torch.fx ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "data-dependent control flow in forward() is not supported"
        ) from None
    return fx.GraphModule(module, graph, class_name=type(module).__name__)


def layer_graph(module: nn.Module) -> LayerGraph:
    gm = trace(module)
    darknet = is_darknet(module)
    layers, by_node = [], {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or node.target in _PLUMBING:
            continue
        if darknet:
            if node.op != "call_module" or not str(node.target).startswith("layers."):
                continue
            index = int(str(node.target).split(".")[1])
        else:
            index = len(layers)
        kind = "module" if node.op == "call_module" else "function"
        name = str(node.target) if kind == "module" else node.name
        layer = Layer(index, name, _type_of(node, module), node.name, kind)
        node.meta["surgery.layer"] = index
        layers.append(layer)
        by_node[node.name] = layer
    return LayerGraph(gm, tuple(layers), darknet, by_node)


def layer_table(module: nn.Module) -> tuple[Layer, ...]:
    return layer_graph(module).layers


def resolve(lg: LayerGraph, ref: str | int) -> Layer:
    """A layer by index (``74``, ``-1`` for the last) or by module/node name."""
    text = str(ref).strip()
    by_index = {l.index: l for l in lg.layers}
    try:
        idx = int(text)
    except ValueError:
        idx = None
    if idx is not None:
        if idx < 0 and lg.layers:
            idx = lg.layers[idx].index if -idx <= len(lg.layers) else None
        if idx in by_index:
            return by_index[idx]
        last = lg.layers[-1].index if lg.layers else -1
        raise SurgeryError(f"layer {text} does not exist; this model has layers 0..{last}")
    for l in lg.layers:
        if l.name == text or l.node == text:
            return l
    names = [l.name for l in lg.layers]
    raise SurgeryError(f"no layer named {text!r}{suggest(text, names)}; `surgery layers MODEL` lists them")


def meta_copy(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A structural copy on the meta device, made without copying any real tensor data
    (deep-copying first would briefly double memory for a big model).

    Floating tensors are cast to ``dtype`` when given. Shared tensors stay shared.
    """
    memo: dict[int, torch.Tensor] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if id(t) in memo:
            continue
        dt = dtype if dtype is not None and t.is_floating_point() else t.dtype
        m = torch.empty(t.shape, dtype=dt, device="meta")
        memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
    clone = copy.deepcopy(module, memo)
    for sub in clone.modules():  # plain tensor attributes (fx constants, anchors) go to meta too
        for k, v in list(vars(sub).items()):
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.device.type != "meta":
                dt = dtype if dtype is not None and v.is_floating_point() else v.dtype
                setattr(sub, k, torch.empty(v.shape, dtype=dt, device="meta"))
    return clone.eval()


def output_tensors(out) -> list[torch.Tensor]:
    """Flatten a model's output (tensor, tuple, list, dict) to a list of tensors, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        res = []
        for o in out:
            res.extend(output_tensors(o))
        return res
    return []
