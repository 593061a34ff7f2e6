"""ONNX ops that are tensor arithmetic and plumbing: elementwise maths, reshapes, concat,
split, slice, transpose, reductions. Shapes are Python constants (folded by the pre-pass);
a dimension that follows the batch is read from the input at run time (``x.size(0)``)."""

from __future__ import annotations

import numpy as np

from surgery.core.onnx_import.convert import Converter, attr, handles

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "truediv", "Pow": "pow"}
_UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Neg": "neg", "Abs": "abs", "Reciprocal": "reciprocal",
          "Erf": "erf", "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos"}


@handles(*_BINARY)
def binary(cv: Converter, node):
    a, b = node.input
    if a in cv.consts and b in cv.consts:
        cv.fail("both inputs are constants (the pre-pass should have folded it)")
    ra = cv.ref(a, rank_of=b if b not in cv.consts else None)
    rb = cv.ref(b, rank_of=a if a not in cv.consts else None)
    if node.op_type == "Pow" and isinstance(ra, dict):
        ra = {"t": cv.tensor(a, cv.consts[a])}
    cv.call(_BINARY[node.op_type], [ra, rb], node.output[:1])


@handles("Sum")
def sum_(cv: Converter, node):
    acc = cv.ref(node.input[0])
    for i, v in enumerate(node.input[1:], 1):
        out = node.output[0] if i == len(node.input) - 1 else cv.temp("sum")
        cv.call("add", [acc, cv.ref(v)], [out])
        acc = out
    if len(node.input) == 1:
        cv.alias[node.output[0]] = acc


@handles("Max", "Min")
def max_min(cv: Converter, node):
    data = [v for v in node.input if v not in cv.consts]
    consts = [v for v in node.input if v in cv.consts]
    if len(data) == 1 and len(consts) == 1 and cv.consts[consts[0]].size == 1:
        bound = float(cv.consts[consts[0]].reshape(()))
        kw = {"min": bound} if node.op_type == "Max" else {"max": bound}
        cv.call("clamp", [cv.ref(data[0])], node.output[:1], kw)
        return
    fn = "maximum" if node.op_type == "Max" else "minimum"
    acc = cv.ref(node.input[0], scalar_ok=False)
    for i, v in enumerate(node.input[1:], 1):
        out = node.output[0] if i == len(node.input) - 1 else cv.temp(fn)
        cv.call(fn, [acc, cv.ref(v, scalar_ok=False)], [out])
        acc = out


@handles(*_UNARY)
def unary(cv: Converter, node):
    cv.call(_UNARY[node.op_type], [cv.ref(node.input[0])], node.output[:1])


@handles("Identity", "Dropout")
def identity(cv: Converter, node):
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        cv.fail("Dropout with a mask output is not supported")
    cv.alias[node.output[0]] = cv.ref(node.input[0])


@handles("Cast", "CastLike")
def cast(cv: Converter, node):
    to = attr(node, "to") if node.op_type == "Cast" else 1
    if to != 1:  # FLOAT
        cv.fail(f"a Cast to ONNX type {to} at run time is not supported (only float32 data flows through a "
                f"network surgery imports)")
    cv.alias[node.output[0]] = cv.ref(node.input[0])


def _batch_copy(cv: Converter, x: str, out_value: str) -> list:
    """The target of a reshape of ``x`` to ``out_value``'s shape: numbers, with the dimension
    that follows the batch read from ``x`` (``x.size(i)``) or left as -1."""
    out_shape = cv.shape(out_value)
    in_shape = cv.shape(x)
    entries: list = []
    for i, d in enumerate(out_shape):
        if cv.tied(out_value, i) or (i == 0 and cv.tied(x, 0) and d == in_shape[0]):
            entries.append({"size": [cv.ref(x), i]} if i < len(in_shape) and cv.tied(x, i) else -1)
        else:
            entries.append(int(d))
    if sum(1 for e in entries if e == -1) > 1:
        cv.fail("more than one dimension of the result follows the batch size; not supported")
    return entries


def _reshape(cv: Converter, node, x: str):
    out = node.output[0]
    in_shape, out_shape = cv.shape(x), cv.shape(out)
    target = _batch_copy(cv, x, out)
    if (len(in_shape) >= 2 and len(out_shape) == 2 and isinstance(target[0], dict)
            and out_shape[1] == int(np.prod(in_shape[1:]))):
        cv.module(node, "Flatten", {"start_dim": 1, "end_dim": -1}, [cv.ref(x)])
        return
    if list(out_shape) == list(in_shape) and all(not isinstance(t, dict) or t["size"][1] == i
                                                 for i, t in enumerate(target)):
        cv.alias[out] = cv.ref(x)  # a reshape to its own shape
        return
    cv.call("reshape", [cv.ref(x), target], [out], method=True)


@handles("Reshape", "Flatten")
def reshape(cv: Converter, node):
    if node.op_type == "Reshape" and cv.opset >= 5:
        cv.const(node.input[1], "target shape")
    _reshape(cv, node, node.input[0])


@handles("Squeeze", "Unsqueeze")
def squeeze(cv: Converter, node):
    # the result's shape is known: write it as a reshape (one node, batch-aware)
    _reshape(cv, node, node.input[0])


@handles("Transpose")
def transpose(cv: Converter, node):
    r = cv.rank(node.input[0])
    perm = attr(node, "perm", list(range(r))[::-1])
    cv.call("permute", [cv.ref(node.input[0]), [int(p) for p in perm]], node.output[:1], method=True)


@handles("Concat")
def concat(cv: Converter, node):
    r = cv.rank(node.output[0])
    axis = int(attr(node, "axis")) % r
    parts = [cv.ref(v, scalar_ok=False) for v in node.input if v]
    cv.call("cat", [parts], node.output[:1], {"dim": axis})


@handles("Split")
def split(cv: Converter, node):
    x = node.input[0]
    shape = cv.shape(x)
    axis = int(attr(node, "axis", 0)) % len(shape)
    if cv.opset < 13:
        sizes = attr(node, "split", None)
    else:
        v = cv.opt_const(node, 1)
        sizes = None if v is None else [int(s) for s in v]
    if sizes is None:
        sizes = [cv.shape(o)[axis] for o in node.output]
    if cv.tied(x, axis):
        cv.fail("splitting along the batch dimension is not supported")
    cv.call("split", [cv.ref(x), [int(s) for s in sizes]], list(node.output), {"dim": axis})


@handles("Slice")
def slice_(cv: Converter, node):
    x = node.input[0]
    shape = cv.shape(x)
    if cv.opset < 10:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in cv.const(node.input[1], "starts")]
        ends = [int(v) for v in cv.const(node.input[2], "ends")]
        a = cv.opt_const(node, 3)
        axes = list(range(len(starts))) if a is None else [int(v) for v in a]
        s = cv.opt_const(node, 4)
        steps = [1] * len(starts) if s is None else [int(v) for v in s]
    index = [{"slice": [None, None, None]} for _ in shape]
    last = 0
    for st, en, ax, step in zip(starts, ends, axes, steps):
        ax %= len(shape)
        if step <= 0:
            cv.fail("Slice with a negative or zero step is not supported")
        size = shape[ax]
        st = max(st + size if st < 0 else st, 0)
        en = en + size if en < 0 else en
        if cv.tied(x, ax) and not (st == 0 and en >= size):
            cv.fail("slicing the batch dimension is not supported")
        index[ax] = {"slice": [None if st == 0 else min(st, size), None if en >= size else en,
                               None if step == 1 else step]}
        last = max(last, ax)
    cv.call("getitem", [cv.ref(x), {"tuple": index[: last + 1]}], node.output[:1])


@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def reduce(cv: Converter, node):
    x = node.input[0]
    r = cv.rank(x)
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in cv.const(node.input[1], "axes")]
    if axes is None or not len(axes):
        if attr(node, "noop_with_empty_axes", 0):
            cv.alias[node.output[0]] = cv.ref(x)
            return
        axes = list(range(r))
    axes = sorted(int(a) % r for a in axes)
    if any(cv.tied(x, a) for a in axes):
        cv.fail("reducing over the batch dimension is not supported")
    keep = bool(attr(node, "keepdims", 1))
    if keep and r >= 3 and axes == list(range(2, r)) and node.op_type in ("ReduceMean", "ReduceMax"):
        kind = "Avg" if node.op_type == "ReduceMean" else "Max"  # a global pool, as torch.onnx writes it
        cv.module(node, f"Adaptive{kind}Pool{r - 2}d", {"output_size": 1}, [cv.ref(x)])
        return
    fn = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin"}[node.op_type]
    cv.call(fn, [cv.ref(x), axes], node.output[:1], {"keepdim": bool(attr(node, "keepdims", 1))})
