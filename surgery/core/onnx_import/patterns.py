"""Rewrites on the folded ONNX node list before conversion, so that what an exporter spelled
out in pieces becomes the one standard torch module it is:

- hardswish written as ``x * Clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``, or ``x * HardSigmoid(x)``
  with alpha 1/6) -> one ``HardSwish`` node;
- swish ``x * Sigmoid(x)`` -> ``Swish`` (nn.SiLU);
- a bias added after a bias-free ``Conv``/``ConvTranspose`` (``Add(conv, const[1,C,1,1])``) ->
  the conv's bias; ``MatMul(x, W)`` followed by ``Add(., b)`` -> ``Gemm`` (nn.Linear with bias).

Only single-consumer intermediates are fused, so no value anyone else reads disappears. The
result is onnx ``NodeProto``s with standard op types (``Swish`` is the one private name).
"""

from __future__ import annotations

import numpy as np


def _consumers(nodes) -> dict[str, list]:
    users: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _scalar(consts, name) -> float | None:
    v = consts.get(name)
    if v is None or v.size != 1:
        return None
    return float(np.asarray(v).reshape(()))


def _clip_bounds(node, consts) -> tuple[float | None, float | None]:
    lo = hi = None
    for a in node.attribute:
        if a.name == "min":
            lo = a.f
        if a.name == "max":
            hi = a.f
    if len(node.input) > 1 and node.input[1]:
        lo = _scalar(consts, node.input[1])
    if len(node.input) > 2 and node.input[2]:
        hi = _scalar(consts, node.input[2])
    return lo, hi


def rewrite(nodes, consts, outputs: set[str]):
    from onnx import helper

    users = _consumers(nodes)

    def only_user(value):
        u = users.get(value, [])
        return u[0] if len(u) == 1 and value not in outputs else None

    def other(node, value):
        ins = list(node.input)
        if len(ins) != 2 or value not in ins:
            return None
        return ins[1] if ins[0] == value else ins[0]

    drop: set[int] = set()
    replace: dict[int, object] = {}
    by_id = {id(n): n for n in nodes}

    for n in nodes:
        if id(n) in drop:
            continue
        # --- hardswish: Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) | Mul(., 1/6)
        if n.op_type == "Add" and len(n.input) == 2:
            x = next((i for i in n.input if i not in consts), None)
            three = other(n, x) if x else None
            if three is not None and _scalar(consts, three) == 3.0:
                clip = only_user(n.output[0])
                if clip is not None and clip.op_type == "Clip" and _clip_bounds(clip, consts) == (0.0, 6.0):
                    mul = only_user(clip.output[0])
                    if mul is not None and mul.op_type == "Mul" and other(mul, clip.output[0]) == x:
                        last = only_user(mul.output[0])
                        k = _scalar(consts, other(last, mul.output[0])) if last is not None else None
                        if last is not None and ((last.op_type == "Div" and last.input[0] == mul.output[0] and k == 6.0)
                                                 or (last.op_type == "Mul" and k is not None and abs(k - 1 / 6) < 1e-6)):
                            fused = helper.make_node("HardSwish", [x], [last.output[0]], name=last.name or n.name)
                            replace[id(n)] = fused
                            drop.update({id(clip), id(mul), id(last)})
                            continue
        # --- x * HardSigmoid(x) (alpha 1/6, beta 0.5) -> hardswish; x * Sigmoid(x) -> swish
        if n.op_type in ("HardSigmoid", "Sigmoid"):
            x = n.input[0]
            mul = only_user(n.output[0])
            if mul is not None and mul.op_type == "Mul" and other(mul, n.output[0]) == x:
                if n.op_type == "HardSigmoid":
                    alpha = next((a.f for a in n.attribute if a.name == "alpha"), 0.2)
                    beta = next((a.f for a in n.attribute if a.name == "beta"), 0.5)
                    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
                        continue
                op = "HardSwish" if n.op_type == "HardSigmoid" else "Swish"
                replace[id(mul)] = helper.make_node(op, [x], [mul.output[0]], name=mul.name or n.name)
                drop.add(id(n))
                continue
        # --- Conv without bias, then Add(const per channel) -> conv bias
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) == 2 and n.input[1] in consts:
            add = only_user(n.output[0])
            b = other(add, n.output[0]) if add is not None and add.op_type == "Add" else None
            w = consts[n.input[1]]
            cout = w.shape[0] if n.op_type == "Conv" else w.shape[1] * next(
                (a.i for a in n.attribute if a.name == "group"), 1)
            if b is not None and b in consts and _per_channel(consts[b], cout, w.ndim):
                name = f"{n.input[1]}__bias"
                consts[name] = consts[b].reshape(cout).astype(w.dtype)
                fused = helper.make_node(n.op_type, [n.input[0], n.input[1], name], [add.output[0]], name=n.name)
                fused.attribute.extend(n.attribute)
                replace[id(n)] = fused
                drop.add(id(add))
                continue
        # --- MatMul(x, W) + b -> Gemm(x, W, b)
        if n.op_type == "MatMul" and n.input[1] in consts and consts[n.input[1]].ndim == 2:
            add = only_user(n.output[0])
            b = other(add, n.output[0]) if add is not None and add.op_type == "Add" else None
            nout = consts[n.input[1]].shape[1]
            if b is not None and b in consts and consts[b].size == nout and consts[b].ndim <= 2:
                name = f"{n.input[1]}__bias"
                consts[name] = consts[b].reshape(nout)
                replace[id(n)] = helper.make_node("MatMul", [n.input[0], n.input[1], name], [add.output[0]],
                                                  name=n.name)
                drop.add(id(add))
                continue
    out = []
    for n in nodes:
        if id(n) in drop:
            continue
        out.append(replace.get(id(n), by_id[id(n)]))
    return out


def _per_channel(b: np.ndarray, c: int, wdim: int) -> bool:
    if b.size != c:
        return False
    shape = list(b.shape)
    if len(shape) == wdim:  # [1, C, 1, 1]
        return shape[0] == 1 and shape[1] == c and all(s == 1 for s in shape[2:])
    if len(shape) == wdim - 1:  # [C, 1, 1]
        return shape[0] == c and all(s == 1 for s in shape[1:])
    return False
