"""A monolithic chain network as the list of layers :mod:`surgery.onion.split` cuts in two.

The layer graph must be a chain of conv / BatchNorm / activation / pooling / LRN / dropout /
flatten / linear layers (the paper's three networks). A layer that joins branches (a residual
add, a concat) or feeds more than one layer is refused, named. Linear layers become
convolutions over their input's spatial size (the paper's "fully connected layers are
implemented as convolutions"): ``W.view(out, C, H, W)`` is exactly the flatten order.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import fx, nn

from surgery.core.errors import SurgeryError, first_line
from surgery.core.graph import layer_graph, meta_copy
from surgery.onion.elementwise import activation_groups
from zoo.onion import POST_TYPES

_FLATTEN = {"flatten", "view", "reshape"}
_FUNCTIONS = {"relu": nn.ReLU, "relu_": nn.ReLU, "dropout": nn.Dropout}


def _refuse(layer, what: str) -> SurgeryError:
    return SurgeryError(f"layer {layer.index} {layer.name!r} ({layer.type}) {what}; onion split needs a chain "
                        f"of conv/BN/ReLU/pool/LRN/dropout/linear layers")


def chain_layers(module: nn.Module, input_shape: Sequence[int]) -> tuple[list[nn.Module], list[str]]:
    """The model as a list of modules (Linear turned into Conv2d, functional ReLU into
    ``nn.ReLU``, flattens dropped) and the name of each; refuses anything but a chain."""
    lg = layer_graph(module)
    g = lg.nx.copy()
    acts = activation_groups(lg)  # x * clamp(x + 3, 0, 6) / 6 is one hardswish, not a join
    inner = {i for grp in acts.values() for i in grp.members[:-1]}
    for join, grp in acts.items():  # the group becomes one layer reading its source
        g.remove_nodes_from(grp.members[:-1])
        g.remove_edges_from(list(g.in_edges(join)))
        g.add_edge(grp.source, join)
    chain = [layer for layer in lg.layers if layer.index not in inner]
    for layer in chain:  # joins first: a residual add or concat is the layer to name
        if g.in_degree(layer.index) > 1:
            raise _refuse(layer, f"joins {g.in_degree(layer.index)} branches (a residual add or concat)")
    prev = "input"
    for layer in chain:
        preds = set(g.predecessors(layer.index))
        if preds != {prev}:
            raise _refuse(layer, "reads the input beside another layer" if "input" in preds else "is not in sequence")
        if g.out_degree(layer.index) > 1:
            raise _refuse(layer, f"feeds {g.out_degree(layer.index)} layers (a branch)")
        prev = layer.index
    if g.out_degree("input") > 1:
        raise SurgeryError("the input feeds more than one layer (a branch); onion split needs a chain")
    shapes = _shapes(lg.gm, input_shape)
    nodes = {n.name: n for n in lg.gm.graph.nodes}
    mods, names = [], []
    maps = None  # the (C, H, W) shape before the last flatten: what a following Linear reads
    for layer in chain:
        node = nodes[layer.node]
        in_shape = shapes.get(node.all_input_nodes[0].name) if node.all_input_nodes else None
        if in_shape is not None and len(in_shape) == 3:
            maps = in_shape
        if layer.index in acts:
            m = acts[layer.index].module
        elif layer.kind == "module":
            m = module.get_submodule(layer.name)
            if isinstance(m, nn.Flatten):
                continue
            if isinstance(m, nn.Linear):
                flat = in_shape is not None and len(in_shape) == 1 and maps is not None
                m = _linear_as_conv(m, maps if flat and math.prod(maps) == in_shape[0] else in_shape, layer)
                maps = None
            elif not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, *POST_TYPES)):
                raise _refuse(layer, f"is a {type(m).__name__}")
        else:
            fn = str(layer.type)
            if fn in _FLATTEN:
                continue
            if fn not in _FUNCTIONS:
                raise _refuse(layer, f"is the function {fn!r}")
            m = _FUNCTIONS[fn]()
        mods.append(m)
        names.append(layer.name)
    return mods, names


def _shapes(gm: fx.GraphModule, input_shape) -> dict[str, tuple[int, ...]]:
    """Output shape (no batch) of every node, by shape propagation on the meta device."""
    from torch.fx.passes.shape_prop import ShapeProp

    mgm = meta_copy(gm)
    try:
        dtype = next((p.dtype for p in mgm.parameters() if p.is_floating_point()), torch.float32)
        ShapeProp(mgm).propagate(torch.empty((1, *input_shape), device="meta", dtype=dtype))
    except Exception as e:  # shape errors in the model at this input size
        raise SurgeryError(f"cannot run the model at input {'x'.join(map(str, input_shape))} on the meta device "
                           f"({type(e).__name__}: {first_line(e)})") from None
    out = {}
    for n in mgm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            out[n.name] = tuple(tm.shape[1:])
    return out


def _linear_as_conv(lin: nn.Linear, in_shape, layer) -> nn.Conv2d:
    """A Linear over a flattened (C, H, W) input as a C→out conv with an H×W kernel."""
    if in_shape is None or len(in_shape) not in (1, 3):
        raise _refuse(layer, f"is a Linear over an input of shape {in_shape}")
    c, h, w = (in_shape[0], 1, 1) if len(in_shape) == 1 else in_shape
    if c * h * w != lin.in_features:
        raise _refuse(layer, f"reads {lin.in_features} features from a {c}x{h}x{w} input")
    conv = nn.Conv2d(c, lin.out_features, (h, w), bias=lin.bias is not None,
                     device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        if not lin.weight.is_meta:
            conv.weight.copy_(lin.weight.reshape(lin.out_features, c, h, w))
            if lin.bias is not None:
                conv.bias.copy_(lin.bias)
    return conv
