"""ONNX nodes -> the graph spec of :mod:`surgery.core.onnx_import.build`, plus the weights.

:class:`Converter` walks the folded, pattern-rewritten node list in order and asks the
handler registered for each op type (:data:`HANDLERS`, filled by ``layers.py`` for the ops that
are torch modules and by ``tensors.py`` for the tensor plumbing) to emit spec nodes. An op
without a handler is refused in one line naming the op and the node.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from surgery.core.errors import SurgeryError

HANDLERS: dict[str, Callable] = {}


def handles(*ops: str):
    def deco(fn):
        for op in ops:
            HANDLERS[op] = fn
        return fn

    return deco


def attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else (list(v) if isinstance(v, (list, tuple)) or
                                                               type(v).__name__ == "RepeatedScalarContainer" else v)
    return default


_NAME = re.compile(r"[^0-9A-Za-z_]")


class Converter:
    def __init__(self, prep):
        self.prep = prep
        self.opset = prep.opset
        self.consts = prep.a.consts
        self.shapes = prep.a.shapes
        self.shapes_b = prep.b.shapes if prep.b is not None else None
        self.spec_nodes: list[dict] = []
        self.tensors: dict[str, dict] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.alias: dict[str, object] = {}
        self._leaves: set[str] = set()
        self._prefixes: set[str] = set()
        self.node = None

    # ------------------------------------------------------------------ errors and lookups
    def where(self, node=None) -> str:
        n = node or self.node
        return f"{self.prep.path}: node {n.name or n.output[0]!r} ({n.op_type})"

    def fail(self, why: str):
        raise SurgeryError(f"{self.where()}: {why}")

    def const(self, name: str, what: str = "input") -> np.ndarray:
        if name not in self.consts:
            self.fail(f"its {what} {name!r} is computed at run time; surgery imports it only as a constant")
        return self.consts[name]

    def opt_const(self, node, i: int):
        if len(node.input) > i and node.input[i]:
            return self.const(node.input[i], f"input {i}")
        return None

    def shape(self, value: str) -> tuple[int, ...]:
        if value in self.consts:
            return tuple(self.consts[value].shape)
        s = self.shapes.get(value)
        if s is None:
            self.fail(f"the shape of {value!r} cannot be inferred at this input size; check --input")
        return s

    def rank(self, value: str) -> int:
        return len(self.shape(value))

    def tied(self, value: str, dim: int) -> bool:
        """Does dimension ``dim`` of ``value`` follow the batch size?"""
        a = self.shapes.get(value)
        if a is None or dim >= len(a):
            return False
        if self.shapes_b is not None and value in self.shapes_b and len(self.shapes_b[value]) == len(a):
            return self.shapes_b[value][dim] != a[dim]
        return dim == 0 and a[0] == self.prep.a.batch

    # ------------------------------------------------------------------ references
    def ref(self, value: str, *, scalar_ok: bool = True, rank_of: str | None = None):
        """The spec reference of an ONNX value: a computed value, a Python number (a scalar
        constant), or a ``consts.*`` tensor."""
        if value in self.alias:
            return self.alias[value]
        if value in self.consts:
            v = self.consts[value]
            other_rank = self.rank(rank_of) if rank_of else None
            if scalar_ok and v.size == 1 and (other_rank is None or v.ndim <= other_rank):
                x = v.reshape(()).item()
                return {"c": float(x) if v.dtype.kind == "f" else int(x)}
            return {"t": self.tensor(value, v)}
        return value

    def tensor(self, value: str, v: np.ndarray, *, param: bool | None = None) -> str:
        name = "consts." + (_NAME.sub("_", value).strip("_") or "t")
        key = name
        k = 1
        while key in self.tensors and self.weights.get(key) is not v:
            key = f"{name}_{k}"
            k += 1
        if key not in self.tensors:
            floating = v.dtype.kind == "f"
            v = v.astype(np.float32) if v.dtype == np.float64 else v
            self.tensors[key] = {"shape": list(v.shape), "dtype": str(v.dtype),
                                 "param": bool(floating if param is None else param)}
            self.weights[key] = v
        return key

    # ------------------------------------------------------------------ emitting
    def module_name(self, node) -> str:
        raw = node.name or f"{node.op_type.lower()}_{len(self.spec_nodes)}"
        segs = _name_scope(node)
        if not segs and raw.startswith("/"):  # the TorchScript exporter's scope path: /layer1/layer1.0/conv1/Conv
            segs = [s for s in raw.split("/") if s][:-1]
        path = ""
        for seg in segs:
            path = seg if (not path or seg.startswith(path + ".")) else f"{path}.{seg}"
        parts = [_NAME.sub("_", p) or "m" for p in path.split(".")] if path else []
        if not parts:
            parts = [_NAME.sub("_", raw).strip("_") or node.op_type.lower()]
        if parts[0] == "consts":
            parts[0] = "consts_"
        name, k = ".".join(parts), 1
        cand = name
        while not self._free(cand):  # a module called twice, or a name both a layer and a scope
            cand = f"{name}_{k}"
            k += 1
        return self._take(cand)

    def _free(self, name: str) -> bool:
        if name in self._leaves or name in self._prefixes:
            return False
        parts = name.split(".")
        return not any(".".join(parts[:i]) in self._leaves for i in range(1, len(parts)))

    def _take(self, name: str) -> str:
        self._leaves.add(name)
        parts = name.split(".")
        self._prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return name

    def module(self, node, type_: str, args: dict, inputs: list, outputs: list | None = None,
               weights: dict | None = None, name: str | None = None) -> str:
        name = name or self.module_name(node)
        self.spec_nodes.append({"module": name, "type": type_, "args": args, "in": inputs,
                                "out": list(outputs if outputs is not None else node.output[:1])})
        for k, v in (weights or {}).items():
            self.weights[f"{name}.{k}"] = np.ascontiguousarray(v)
        return name

    def call(self, fn: str, inputs: list, outputs: list, kw: dict | None = None, *, method: bool = False):
        entry = {("method" if method else "fn"): fn, "in": inputs, "out": list(outputs)}
        if kw:
            entry["kw"] = kw
        self.spec_nodes.append(entry)

    def temp(self, hint: str) -> str:
        return f"__{hint}_{len(self.spec_nodes)}"

    # ------------------------------------------------------------------ the walk
    def run(self, nodes) -> dict:
        from surgery.core.onnx_import.build import SPEC_FORMAT, SPEC_VERSION

        for node in nodes:
            self.node = node
            handler = HANDLERS.get(node.op_type)
            if handler is None:
                raise SurgeryError(f"{self.where(node)}: ONNX op {node.op_type} is not supported by the importer "
                                   f"(it converts the CNN operator set: see `surgery.core.onnx_import`)")
            handler(self, node)
        outs = []
        for o in self.prep.outputs:
            r = self.alias.get(o, o)
            if not isinstance(r, str) or r in self.consts:
                raise SurgeryError(f"{self.prep.path}: output {o!r} is a constant, not computed from the input; "
                                   f"nothing to import")
            outs.append(r)
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "input": self.prep.input_name,
                "outputs": outs, "tensors": self.tensors, "nodes": self.spec_nodes}


def _name_scope(node) -> list[str]:
    """The torch module path the dynamo exporter records on a node (``metadata_props``
    ``pkg.torch.onnx.name_scopes``: ['', 'layer1', '0', 'conv1', 'conv2d'], the last being the
    aten op) when the node is the op of a ``torch.nn`` module (``class_hierarchy``)."""
    import ast

    props = {p.key: p.value for p in getattr(node, "metadata_props", [])}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        return []
    if len(scopes) < 3 or len(classes) < 2 or not str(classes[-2]).startswith("torch.nn.modules."):
        return []
    kind = _KIND.get(node.op_type)
    if kind and kind not in str(classes[-2]).lower():  # a conv that swallowed its BN keeps the BN's scope
        return [*[str(s) for s in scopes[1:-2] if s], node.op_type.lower()]
    return [str(s) for s in scopes[1:-1] if s]


_KIND = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "linear", "BatchNormalization": "batchnorm"}


def pads_of(cv: Converter, node, x: str, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial dim, ``auto_pad`` resolved from the input's shape."""
    nd = len(kernel)
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = attr(node, "pads", [0] * (2 * nd))
        return list(pads[:nd]), list(pads[nd:])
    if auto == "VALID":
        return [0] * nd, [0] * nd
    size = cv.shape(x)[2:]
    begin, end = [], []
    for i in range(nd):
        out = -(-size[i] // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size[i], 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return begin, end


def torch_pad(begin, end) -> list[int]:
    """ONNX (begin..., end...) over spatial dims -> torch's (last_lo, last_hi, prev_lo, ...)."""
    out = []
    for lo, hi in zip(reversed(begin), reversed(end)):
        out += [int(lo), int(hi)]
    return out
