"""The pre-pass over an ONNX graph before conversion.

1. read and validate the file (truncated, not ONNX, an opset outside what ``onnx`` knows, a
   custom domain, more than one data input: one line each);
2. weights stored as ``Constant`` nodes (as Paddle and many converters write them) become
   initializers;
3. the input is pinned to ``--input`` (or the graph's static shape) and ONNX shape inference
   runs; every node whose inputs are all known (``Shape`` of a tensor of known shape, and the
   arithmetic on it: ``Gather``, ``Concat``, ``Cast``, ``Slice``, ...) is evaluated with ONNX's
   reference implementation and becomes a constant — repeated until nothing changes. Dead
   nodes are dropped.

The pass runs twice, at two batch sizes: a folded value that changes with the batch (a
``Reshape`` target ``[N, -1]`` computed from ``Shape``) is known to follow the batch, so the
converter can write it as "the input's dimension 0" instead of a number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery.core.errors import SurgeryError, first_line as _first_line

MIN_OPSET = 7
_MAX_FOLD_ELEMENTS = 1 << 24  # a folded value larger than this stays a node (it is data, not a shape)
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


@dataclass
class Folded:
    """One pinned pass: the nodes left, every constant, every known value shape."""

    nodes: list  # onnx.NodeProto
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    batch: int
    folded: set = field(default_factory=set)  # constants computed by the pass (not stored in the file)


@dataclass
class Prepared:
    path: str
    model: object  # onnx.ModelProto as read (Constant nodes and all): what onnxruntime checks against
    opset: int
    input_name: str
    input_shape: tuple[int, ...]  # without batch
    static_batch: int | None  # the graph's own fixed batch, None when symbolic
    outputs: list[str]
    a: Folded
    b: Folded | None  # the same pass at another batch, None when it could not run
    notes: list[str] = field(default_factory=list)


def read_model(path: Path):
    import onnx

    try:
        data = path.read_bytes()
    except OSError as e:
        raise SurgeryError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not data:
        raise SurgeryError(f"{path} is empty (0 bytes); it holds no ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise SurgeryError(f"{path}: not a readable ONNX model ({type(e).__name__}: {_first_line(e)}); the file is "
                           f"truncated or not ONNX") from None
    if not model.graph.node:
        raise SurgeryError(f"{path}: the ONNX graph has no nodes; the file is truncated or not an ONNX model")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise SurgeryError(f"{path}: its external weight files cannot be read ({_first_line(e)}); keep them "
                               f"beside the .onnx file") from None
    return model


def opset_of(model, path) -> int:
    import onnx

    max_known = onnx.defs.onnx_opset_version()
    opset = None
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            opset = int(o.version)
    if opset is None:
        raise SurgeryError(f"{path}: the model imports no default-domain opset; the file is damaged or not ONNX")
    if not MIN_OPSET <= opset <= max_known:
        raise SurgeryError(f"{path}: ONNX opset {opset} is not supported (this onnx {onnx.__version__} reads "
                           f"{MIN_OPSET}..{max_known}); re-export the model with an opset in that range")
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            raise SurgeryError(f"{path}: node {n.name or n.op_type!r} is {n.domain}::{n.op_type}, outside the standard "
                               f"ONNX operator set; surgery imports standard-domain CNN graphs only")
    return opset


def prepare(path: Path, input_shape: tuple[int, ...] | None) -> Prepared:
    model = read_model(path)
    opset = opset_of(model, path)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise SurgeryError(f"{path}: the graph has {len(inputs)} data inputs ({names}); surgery imports single-input "
                           f"networks")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type not in (1, 0):
        import onnx

        raise SurgeryError(f"{path}: input {inp.name!r} is {onnx.TensorProto.DataType.Name(tt.elem_type).lower()}; "
                           f"surgery imports float32 networks")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
    if not tt.HasField("shape") or len(dims) < 2:
        if input_shape is None:
            raise SurgeryError(f"{path}: input {inp.name!r} records no shape; pass --input CxHxW")
        dims = [None] * (len(input_shape) + 1)
    if input_shape is not None:
        if len(input_shape) != len(dims) - 1:
            raise SurgeryError(f"{path}: input {inp.name!r} has {len(dims)} dimensions (batch first); --input gives "
                               f"{len(input_shape)}, it needs {len(dims) - 1}")
        fixed = [(i, d, g) for i, (d, g) in enumerate(zip(dims[1:], input_shape), 1) if d is not None and d != g]
        if fixed:
            i, d, g = fixed[0]
            raise SurgeryError(f"{path}: input {inp.name!r} fixes dimension {i} to {d}; --input gives {g}")
        shape = tuple(int(s) for s in input_shape)
    else:
        if any(d is None for d in dims[1:]):
            shown = "x".join("?" if d is None else str(d) for d in dims[1:])
            raise SurgeryError(f"{path}: input {inp.name!r} has symbolic dimensions ({shown}); pass --input CxHxW")
        shape = tuple(int(d) for d in dims[1:])
    static_batch = dims[0]
    batch_a = static_batch or 1
    a = fold(model, opset, inp.name, (batch_a, *shape), path, strict=True)
    try:
        b = fold(model, opset, inp.name, (batch_a + 1, *shape), path, strict=False)
        if [n.name + n.op_type for n in b.nodes] != [n.name + n.op_type for n in a.nodes]:
            b = None
    except Exception:  # a graph fixed to its batch: the second pass is a hint, not a requirement
        b = None
    outputs = [o.name for o in graph.output]
    return Prepared(str(path), model, opset, inp.name, shape, static_batch, outputs, a, b)


def constant_value(node):
    """The array of a ``Constant`` node."""
    from onnx import helper, numpy_helper

    for attr in node.attribute:
        v = helper.get_attribute_value(attr)
        if attr.name == "value":
            return numpy_helper.to_array(v)
        if attr.name == "value_float":
            return np.array(v, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(v), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(v, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(v), dtype=np.int64)
    return None


def fold(model, opset: int, input_name: str, full_shape: tuple[int, ...], path, *, strict: bool) -> Folded:
    """Constants in, shapes known, foldable nodes evaluated: see the module docstring."""
    from onnx import numpy_helper

    consts: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception as e:
            raise SurgeryError(f"{path}: initializer {t.name!r} cannot be read ({_first_line(e)}); the file is "
                               f"truncated or damaged") from None
    nodes = []
    for n in model.graph.node:
        if n.op_type == "Constant":
            v = constant_value(n)
            if v is None:
                raise SurgeryError(f"{path}: Constant node {n.name or n.output[0]!r} holds a sparse or string value; "
                                   f"not supported")
            consts[n.output[0]] = v
        else:
            nodes.append(n)
    shapes: dict[str, tuple[int, ...]] = {input_name: tuple(full_shape)}
    folded: set[str] = set()
    for _ in range(256):  # each round may resolve one more Reshape level (a ShuffleNet has 16)
        shapes.update(infer_shapes(model, opset, input_name, full_shape, nodes, consts, path, strict=strict))
        changed = False
        kept = []
        for n in nodes:
            value = _evaluate(n, consts, shapes, opset)
            if value is None:
                kept.append(n)
                continue
            for name, v in zip(n.output, value):
                consts[name] = v
                folded.add(name)
                shapes[name] = tuple(v.shape)
            changed = True
        nodes = kept
        if not changed:
            break
    outputs = {o.name for o in model.graph.output}
    nodes = _live(nodes, outputs)
    used = {i for n in nodes for i in n.input} | outputs
    consts = {k: v for k, v in consts.items() if k in used}
    return Folded(nodes, consts, shapes, full_shape[0], folded)


def infer_shapes(model, opset, input_name, full_shape, nodes, consts, path, *, strict: bool) -> dict:
    """Static shapes of every value ONNX shape inference can derive for this pinned input."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    small_inits = [numpy_helper.from_array(v, k) for k, v in consts.items() if v.size <= 64]
    # big constants take part by shape only: declared as graph inputs (no bytes copied)
    big = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for k, v in consts.items() if v.size > 64]
    inp = helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, list(full_shape))
    outs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in g.output]
    graph = helper.make_graph(nodes, "pinned", [inp, *big], outs, small_inits)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=strict, data_prop=True)
    except Exception as e:
        raise SurgeryError(f"{path}: ONNX shape inference fails at input {'x'.join(map(str, full_shape[1:]))} "
                           f"({_first_line(e)}); check --input") from None
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    return out


def _evaluate(node, consts, shapes, opset) -> list[np.ndarray] | None:
    """The node's outputs when every input is known (and ``Shape`` of a known shape); else None."""
    if node.op_type in _NONDETERMINISTIC or not node.output:
        return None
    if node.op_type == "Shape" and node.input[0] not in consts:
        s = shapes.get(node.input[0])
        if s is None:
            return None
        start = end = None
        for a in node.attribute:
            if a.name == "start":
                start = a.i
            if a.name == "end":
                end = a.i
        return [np.array(s[start:end], dtype=np.int64)]
    if node.op_type == "Size" and node.input[0] not in consts:
        s = shapes.get(node.input[0])
        return None if s is None else [np.array(int(np.prod(s)), dtype=np.int64)]
    if node.op_type == "CastLike" and node.input[0] in consts and node.input[1] not in consts:
        return [consts[node.input[0]].astype(np.float32)]  # data in a graph surgery imports is float32
    if not all(i == "" or i in consts for i in node.input):
        return None
    if node.input and all(i == "" for i in node.input):
        return None
    try:
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        names = [i for i in node.input if i]
        g = helper.make_graph([node], "fold", [helper.make_tensor_value_info(i, 0, None) for i in names],
                              [helper.make_tensor_value_info(o, 0, None) for o in node.output])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        out = ReferenceEvaluator(m).run(None, {i: consts[i] for i in names})
    except Exception:
        return None  # not foldable here: the converter meets it (and names it if unsupported)
    out = [np.asarray(o) for o in out]
    if any(o.size > _MAX_FOLD_ELEMENTS for o in out):
        return None
    return out


def _live(nodes, outputs: set[str]) -> list:
    needed = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    return keep[::-1]
