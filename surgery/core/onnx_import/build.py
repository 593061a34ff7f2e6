"""Build the ``torch.fx.GraphModule`` of an imported ONNX network from its *graph spec*.

The spec is plain JSON (what ``ArchSpec(kind="onnx").cfg`` carries in a checkpoint): the
input and output value names, the tensors that are not module weights (``consts.*``: shape,
dtype, whether a parameter), and the nodes in execution order. A node is either a standard
torch module (``{"module": name, "type": "Conv2d", "args": {...}, "in": [...], "out": [...]}``)
or a call of an allow-listed function (``{"fn": "add", "in": [...], "out": [...], "kw": {...}}``).
An input reference is a value name, ``{"c": number}`` (a Python constant), ``{"t": "consts.x"}``
(a tensor attribute), ``{"size": [value, dim]}`` (a dimension read at run time: the batch) or
a list of references. Nothing in a spec names code: module types and functions come from the
allow-lists below, so a spec read from a checkpoint builds only standard torch modules.
"""

from __future__ import annotations

import json
import operator
from typing import Any, Mapping

import torch
from torch import fx, nn

from surgery.core.errors import SurgeryError

SPEC_FORMAT = "surgery-onnx-graph"
SPEC_VERSION = 1

# Standard torch modules an imported graph may hold (a spec names nothing else).
MODULES = {name: getattr(nn, name) for name in (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "LayerNorm", "Linear",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "Sigmoid", "Tanh", "Hardsigmoid", "Hardswish", "Hardtanh",
    "SiLU", "Mish", "GELU", "Softplus", "Softmax", "LogSoftmax",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d", "Flatten", "Upsample", "ZeroPad2d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
    "ReflectionPad1d", "ReflectionPad2d", "ReplicationPad1d", "ReplicationPad2d", "Identity",
)}

# Functions (call_function targets) and tensor methods (call_method) an imported graph may call.
FUNCTIONS = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
    "pow": torch.pow, "matmul": torch.matmul, "cat": torch.cat, "split": torch.split, "getitem": operator.getitem,
    "squeeze": torch.squeeze, "unsqueeze": torch.unsqueeze, "mean": torch.mean, "sum": torch.sum,
    "amax": torch.amax, "amin": torch.amin, "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log,
    "neg": torch.neg, "abs": torch.abs, "reciprocal": torch.reciprocal, "erf": torch.erf, "floor": torch.floor,
    "ceil": torch.ceil, "clamp": torch.clamp, "maximum": torch.maximum, "minimum": torch.minimum,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "flatten": torch.flatten,
    "softmax": torch.softmax, "sin": torch.sin, "cos": torch.cos,
}
METHODS = {"reshape", "permute", "size", "contiguous"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64,
           "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def spec_text(spec: Mapping) -> str:
    return json.dumps(spec, separators=(",", ":"), sort_keys=False)


def parse_spec(text: str | Mapping, source: str = "onnx graph") -> dict:
    try:
        spec = dict(text) if isinstance(text, Mapping) else json.loads(text)
    except (TypeError, ValueError) as e:
        raise SurgeryError(f"{source}: the imported ONNX graph description is not valid JSON ({e}); the checkpoint is "
                           f"damaged") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise SurgeryError(f"{source}: not an imported ONNX graph description; the checkpoint is damaged")
    if spec.get("version") != SPEC_VERSION:
        raise SurgeryError(f"{source}: ONNX graph description version {spec.get('version')} is not supported "
                           f"(this surgery reads {SPEC_VERSION}); upgrade surgery")
    return spec


def build_module(spec_or_text, *, source: str = "onnx graph") -> fx.GraphModule:
    """The GraphModule a spec describes (weights uninitialised: ``torch.empty``/module init;
    the loader or the checkpoint fills them)."""
    spec = parse_spec(spec_or_text, source)
    try:
        return _build(spec)
    except SurgeryError as e:
        raise SurgeryError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise SurgeryError(f"{source}: the imported ONNX graph description cannot be built ({type(e).__name__}: "
                           f"{e}); the checkpoint is damaged or from another version") from None


def _build(spec: Mapping) -> fx.GraphModule:
    root: dict[str, Any] = {}
    graph = fx.Graph()
    env: dict[str, fx.Node] = {spec["input"]: graph.placeholder("x")}
    for name, t in spec.get("tensors", {}).items():
        if not name.startswith("consts."):
            raise SurgeryError(f"tensor {name!r} is outside consts.")
        dt = _DTYPES[t["dtype"]]
        value = torch.empty(tuple(int(s) for s in t["shape"]), dtype=dt)
        root[name] = nn.Parameter(value) if t.get("param") and value.is_floating_point() else value

    def ref(r):
        if isinstance(r, str):
            if r not in env:
                raise SurgeryError(f"value {r!r} is read before it is computed")
            return env[r]
        if isinstance(r, list):
            return [ref(v) for v in r]
        if isinstance(r, dict):
            if "c" in r:
                return r["c"]
            if "t" in r:
                if r["t"] not in root:
                    raise SurgeryError(f"tensor {r['t']!r} is not declared")
                return graph.get_attr(r["t"])
            if "size" in r:
                value, dim = r["size"]
                return graph.call_method("size", (ref(value), int(dim)))
            if "slice" in r:
                return slice(*r["slice"])
            if "tuple" in r:
                return tuple(ref(v) for v in r["tuple"])
            if "dtype" in r:
                return _DTYPES[r["dtype"]]
        if r is None or isinstance(r, (int, float, bool)):
            return r
        raise SurgeryError(f"bad input reference {r!r}")

    for node in spec["nodes"]:
        args = tuple(ref(a) for a in node["in"])
        kwargs = {k: ref(v) for k, v in dict(node.get("kw", {})).items()}
        if "module" in node:
            cls = MODULES.get(node["type"])
            if cls is None:
                raise SurgeryError(f"module type {node['type']!r} is not one surgery builds")
            name = str(node["module"])
            if name in root or not name or name.startswith("consts"):
                raise SurgeryError(f"module name {name!r} is used twice")
            root[name] = cls(**_module_args(node["args"]))
            out = graph.call_module(name, args, kwargs)
        elif node.get("fn") in FUNCTIONS:
            out = graph.call_function(FUNCTIONS[node["fn"]], args, kwargs)
        elif node.get("method") in METHODS:
            out = graph.call_method(node["method"], args, kwargs)
        else:
            raise SurgeryError(f"function {node.get('fn') or node.get('method')!r} is not one surgery calls")
        outs = node["out"]
        if len(outs) == 1:
            env[outs[0]] = out
        else:  # a tuple result (split): one getitem per output
            for i, o in enumerate(outs):
                env[o] = graph.call_function(operator.getitem, (out, i))
    outputs = [ref(o) for o in spec["outputs"]]
    graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name="OnnxNet")
    gm.recompile()
    return gm


def _module_args(args: Mapping) -> dict:
    out = {}
    for k, v in args.items():
        out[str(k)] = tuple(v) if isinstance(v, list) else v
    return out
