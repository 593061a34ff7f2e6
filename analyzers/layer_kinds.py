"""Operator kinds of the layer profile (:mod:`analyzers.layer_profile`): the ShuffleNet v2 thesis'
split of inference time (§3.1.1, Table 3.1) into Conv / Data / Element-wise / Shuffle / Other.

Kinds (:data:`KINDS`, the seed's categories): ``convolution`` (conv, depthwise or not);
``data movement`` (copies, reshapes, transposes, concatenation, slicing, layout reorders);
``element-wise`` (activations, BatchNorm at inference, adds, multiplies); ``channel shuffle``
(the reshape → transpose → copy → reshape of ShuffleNet, found structurally from the layer
shapes: :func:`shuffle_layers`); ``other`` (pooling, reductions, fully-connected/matmul,
softmax, upsampling). One table maps the cost analyzer's op categories, the aten ops the torch
profiler names and ONNX Runtime's op types to them.
"""

from __future__ import annotations

import torch

KINDS = ("convolution", "data movement", "element-wise", "channel shuffle", "other")

# the cost analyzer's op categories (analyzers.formulas) -> the seed's kinds; one table for both
# the counted side (MACs, bytes) and the measured side (aten ops the profiler names)
KIND_OF_CATEGORY = {
    "conv": "convolution",
    "batch_norm": "element-wise", "norm": "element-wise", "activation": "element-wise", "elementwise": "element-wise",
    "concat": "data movement", "movement": "data movement", "view": "data movement",
    "matmul": "other", "attention": "other", "pool": "other", "reduction": "other", "softmax": "other",
    "upsample": "other", "alloc": "other", "uncounted": "other",
}
# ONNX Runtime op types (optimized graph, CPU and CUDA providers) -> kinds; anything else is "other"
ORT_KINDS = {
    **dict.fromkeys(("Conv", "FusedConv", "NhwcFusedConv", "NhwcConv", "ConvTranspose", "QLinearConv", "ConvInteger"),
                    "convolution"),
    **dict.fromkeys(("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
                     "PRelu", "Softplus", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Add", "Sub", "Mul", "Div",
                     "Sum", "Max", "Min", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Erf", "Reciprocal",
                     "BatchNormalization", "InstanceNormalization", "LayerNormalization", "Where", "Equal", "Less",
                     "Greater", "Not", "And", "Or", "Mish", "Swish"), "element-wise"),
    **dict.fromkeys(("Reshape", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "Identity",
                     "Flatten", "Squeeze", "Unsqueeze", "Pad", "Expand", "Tile", "Cast", "Shape", "ReorderInput",
                     "ReorderOutput", "MemcpyToHost", "MemcpyFromHost", "DepthToSpace", "SpaceToDepth",
                     "ScatterND", "ScatterElements", "Constant", "ConstantOfShape"), "data movement"),
}
_SHUFFLE_TYPES = {"channel_shuffle", "ChannelShuffle", "native_channel_shuffle"}



def kind_of_category(category: str) -> str:
    """The seed's kind of a cost-analyzer op category (``conv`` -> ``convolution``...)."""
    return KIND_OF_CATEGORY.get(category, "other")


_NAME_KINDS: dict[str, str | None] = {}


def kind_of_aten(name: str) -> str | None:
    """The kind of an op the torch profiler names (``aten::relu_``); None for a composite op
    no table names (``aten::conv2d``: what it runs decides)."""
    if name not in _NAME_KINDS:
        from analyzers.formulas import category_of

        kind = None
        if name.startswith("aten::"):
            packet = getattr(torch.ops.aten, name[6:], None)
            if packet is not None:
                cat = category_of(packet)
                kind = None if cat == "uncounted" else kind_of_category(cat)
        _NAME_KINDS[name] = kind
    return _NAME_KINDS[name]


def kind_of_ort(op_type: str) -> str:
    return ORT_KINDS.get(op_type, "other")


def shuffle_layers(lg, cost) -> set[int]:
    """Indices of the layers that make up a channel shuffle: a ``channel_shuffle`` op, or a reshape
    that splits the channels into (g, c/g), a transpose of those two axes, the copies after it and
    the reshape back (ShuffleNet's ``view → transpose → contiguous → view``). Shapes come from the
    cost report (without batch), edges from the layer graph."""
    by = {l.index: l for l in cost.layers}
    g = lg.nx
    found: set[int] = set()
    for lay in lg.layers:
        if lay.type in _SHUFFLE_TYPES:
            found.add(lay.index)
            continue
        c = by.get(lay.index)
        if lay.type not in ("transpose", "permute", "swapaxes") or c is None or not c.input_shapes:
            continue
        ins = tuple(c.input_shapes[0])
        preds = [p for p in g.predecessors(lay.index) if p != "input"]
        if len(ins) < 2 or len(preds) != 1 or tuple(c.output_shape) != (ins[1], ins[0], *ins[2:]):
            continue
        v = by.get(preds[0])
        if v is None or v.type not in ("view", "reshape", "unflatten") or not v.input_shapes:
            continue
        src = tuple(v.input_shapes[0])
        if len(src) != len(ins) - 1 or src[0] != ins[0] * ins[1] or src[1:] != ins[2:] or min(ins[:2]) < 2:
            continue
        chain, cur = [v.index, lay.index], lay.index
        while True:
            succ = list(g.successors(cur))
            s = by.get(succ[0]) if len(succ) == 1 else None
            if s is None:
                break
            if s.type in ("contiguous", "clone"):
                chain.append(s.index)
                cur = s.index
                continue
            if s.type in ("view", "reshape", "flatten") and tuple(s.output_shape) == src:
                chain.append(s.index)
            break
        found.update(chain)
    return found
