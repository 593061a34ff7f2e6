"""The graph core: torch.fx trace, the layer table, and a networkx view.

The *layer table* is an ordered list of layers with stable integer indices. For Darknet
models the index is Darknet's own layer index (the ``layers.N`` modules); for other models
it is the execution order of the traced graph's compute nodes: leaf modules and the
functional ops between them (a residual ``+``, ``cat``, ``flatten``), so that every op has a
layer to be attributed to. Per-node data lives in ``node.meta["surgery.layer"]``.

What each op does to channels (the channel ops) is :mod:`surgery.core.channel_ops`.
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

from surgery.core.errors import SurgeryError, suggest

# Nodes that move data around without computing anything; they are not layers.
_PLUMBING = {operator.getitem, getattr, builtins.getattr, "size", "dim", "__getitem__"}


class SurgeryTracer(fx.Tracer):
    """Standard leaves plus any module that declares ``surgery_leaf = True`` (Darknet layers,
    Dirac convs): those are units of surgery and of cost attribution. ``leaves`` adds modules
    (by qualified name) that fx cannot enter; ``failed`` is the innermost module whose forward
    raised during the last trace (see :func:`trace`)."""

    def __init__(self, leaves=()):
        super().__init__()
        self.leaves = set(leaves)
        self.failed: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.leaves or bool(getattr(m, "surgery_leaf", False))
                or super().is_leaf_module(m, qualname))

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module sees the error first
                try:
                    self.failed = self.path_of_module(m)
                except NameError:
                    self.failed = ""
            raise


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

    def output_nodes(self) -> list[fx.Node]:
        """The graph nodes the model returns, flattened in output order (``fx.node.map_arg``
        walks tuples, lists and dicts as ``torch.fx`` itself does)."""
        out = next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")
        nodes: list[fx.Node] = []
        fx.node.map_arg(out.args[0], nodes.append)
        return nodes

    def output_layers(self) -> list[int]:
        """Indices of the layers producing the model's outputs, in output order (an output
        that is plumbing, e.g. a getitem, counts for the layers it reads)."""
        found: list[int] = []

        def visit(n: fx.Node) -> None:
            lay = self.layer_of(n)
            if lay is not None:
                found.append(lay.index)
            else:
                for a in n.all_input_nodes:
                    visit(a)

        for n in self.output_nodes():
            visit(n)
        return found


_MAX_AUTO_LEAVES = 256


def trace(module: nn.Module) -> fx.GraphModule:
    """Trace ``module`` with :class:`SurgeryTracer`. A submodule fx cannot enter (its forward
    branches on a traced value, e.g. ``if x.is_floating_point()``) becomes a leaf and the trace
    is retried, so the convs, BNs and linears around it stay layers of their own; only a root
    whose own forward cannot be traced is refused."""
    leaves: set[str] = set()
    while True:
        tracer = SurgeryTracer(leaves)
        try:
            graph = tracer.trace(module)
            break
        except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError...
            if tracer.failed and tracer.failed not in leaves and len(leaves) < _MAX_AUTO_LEAVES:
                leaves.add(tracer.failed)
                continue
            raise SurgeryError(
                f"cannot trace {type(module).__name__} with torch.fx ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "data-dependent control flow in forward() is not supported"
            ) from None
    return fx.GraphModule(module, graph, class_name=type(module).__name__)


def _exported_graph(module: nn.Module) -> fx.GraphModule | None:
    """The GraphModule of a loaded ``.pt2`` (``ExportedProgram.module()``, possibly wrapped):
    the one whose nodes carry torch.export's ``nn_module_stack``."""
    for sub in module.modules():
        if isinstance(sub, fx.GraphModule) and any(n.meta.get("nn_module_stack") for n in sub.graph.nodes):
            return sub
    return None


def _is_guard(node: fx.Node) -> bool:
    """torch.export's input guards (``_guards_fn``: ``eq`` of sizes feeding ``_assert``):
    checks, not layers."""
    name = getattr(node.target, "__name__", str(node.target))
    if node.op == "call_function" and (node.target is torch._assert or name.startswith("_assert")):
        return True
    return (node.op == "call_function" and node.target is operator.eq and bool(node.users)
            and all(_is_guard(u) for u in node.users))


def _adopt_module_stacks(gm: fx.GraphModule, exported: fx.GraphModule) -> None:
    """Re-tracing an exported program makes new nodes without its ``nn_module_stack``; copy it
    over, pairing the exported graph's compute nodes with the traced ones in execution order
    (tracing runs them in that order, one traced node per call, same target)."""
    inner = [n for n in exported.graph.nodes if n.op == "call_function" and n.meta.get("nn_module_stack")]
    outer = [n for n in gm.graph.nodes if n.op == "call_function" and not _is_guard(n)]
    j = 0
    for n in outer:
        if j < len(inner) and n.target == inner[j].target:
            n.meta["nn_module_stack"] = inner[j].meta["nn_module_stack"]
            j += 1


def _exported_name(node: fx.Node) -> tuple[str, str] | None:
    """(module path, class name) when the op is the whole of a torch.nn leaf module (a conv,
    a BN): then the layer reads as in the eager model's table."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    if not str(cls).startswith("torch.nn.modules."):
        return None
    return str(path), str(cls).rsplit(".", 1)[-1]


def layer_graph(module: nn.Module) -> LayerGraph:
    gm = trace(module)
    darknet = is_darknet(module)
    exported = _exported_graph(module)
    if exported is not None:
        _adopt_module_stacks(gm, exported)
    layers, by_node = [], {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or node.target in _PLUMBING:
            continue
        if exported is not None and _is_guard(node):
            continue
        named = _exported_name(node) if exported is not None else None
        if named is not None:
            index = len(layers)
            layer = Layer(index, named[0], named[1], node.name, "function")
            node.meta["surgery.layer"] = index
            layers.append(layer)
            by_node[node.name] = layer
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
    """A layer by index (``74``, ``-1`` for the last) or by module/node name.

    A module called more than once (one ReLU module used three times) is several layers: its
    name alone is refused with every index it has. A container's name (``layer3``) means the
    last layer inside it (in execution order)."""
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
    calls = [l for l in lg.layers if l.name == text]
    if len(calls) == 1:
        return calls[0]
    if len(calls) > 1:  # one module called several times (a shared ReLU): which call is meant?
        listed = ", ".join(str(l.index) for l in calls)
        raise SurgeryError(f"layer name {text!r} is used by {len(calls)} layers ({listed}): the module runs more "
                           f"than once; give the index of the call you mean, e.g. {calls[-1].index}")
    for l in lg.layers:  # an fx node name (relu_1: the second call of relu) is unique
        if l.node == text:
            return l
    inside = [l for l in lg.layers if l.name.startswith(text + ".")] if text else []
    if inside:  # a container (``layer3``) means its last layer
        return inside[-1]
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
    """Flatten a model's output (tensor, tuple, list, dict, any pytree) to a list of tensors,
    in order (``torch.utils._pytree``, as torch.export flattens outputs)."""
    from torch.utils import _pytree

    return [t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def select(lg: LayerGraph, text: str) -> list[Layer]:
    """Layers named by a selector, in table order: comma-separated indices (``74``), inclusive
    ranges (``0-80``), module/node names (``layer3.0.conv2``) and fnmatch globs over names
    (``layer3.*``, ``*.conv2``). A name that matches no layer is an error naming it."""
    import fnmatch

    chosen: set[int] = set()
    by_index = {l.index: l for l in lg.layers}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if lo.isdigit() and (not sep or hi.isdigit()):
            a, b = int(lo), int(hi) if sep else int(lo)
            if b < a:
                raise SurgeryError(f"bad layer range {part!r}; write LOW-HIGH with LOW <= HIGH")
            missing = [i for i in (a, b) if i not in by_index]
            if missing:
                last = lg.layers[-1].index if lg.layers else -1
                raise SurgeryError(f"layer {missing[0]} does not exist; this model has layers 0..{last}")
            chosen.update(i for i in range(a, b + 1) if i in by_index)
        elif any(c in part for c in "*?["):
            hits = [l.index for l in lg.layers if fnmatch.fnmatchcase(l.name, part)]
            if not hits:
                raise SurgeryError(f"no layer matches {part!r}; `surgery layers MODEL` lists them")
            chosen.update(hits)
        else:
            chosen.add(resolve(lg, part).index)
    if not chosen:
        raise SurgeryError(f"empty layer selection {text!r}; give indices, ranges or names, e.g. 0-74,layer4.*")
    return [l for l in lg.layers if l.index in chosen]
