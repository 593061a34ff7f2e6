"""ONNX ops that are standard torch modules: convolutions, normalisation, linear layers,
pooling, activations, padding, resizing."""

from __future__ import annotations

import math

import numpy as np

from surgery.core.onnx_import.convert import Converter, attr, handles, pads_of, torch_pad

_NEG_INF = float("-inf")


def _pad_module(cv: Converter, node, x: str, begin, end, value: float = 0.0) -> str:
    """An explicit pad module before a conv/pool whose ONNX padding torch cannot express
    (asymmetric); returns the padded value's name."""
    nd = len(begin)
    out = cv.temp("pad")
    args = {"padding": torch_pad(begin, end), "value": value}
    cv.module(node, f"ConstantPad{nd}d", args, [cv.ref(x)], [out], name=cv.module_name(node) + "_pad")
    cv.shapes[out] = (*cv.shape(x)[:2], *(s + lo + hi for s, lo, hi in zip(cv.shape(x)[2:], begin, end)))
    return out


@handles("Conv")
def conv(cv: Converter, node):
    x = node.input[0]
    w = cv.const(node.input[1], "weight")
    b = cv.opt_const(node, 2)
    if b is not None and node.input[2] in cv.prep.a.folded and not b.any():
        b = None  # a zero bias the exporter synthesised (Expand of 0): the torch conv had none
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        cv.fail(f"a {nd}-D convolution is not supported")
    kernel = attr(node, "kernel_shape", list(w.shape[2:]))
    strides = attr(node, "strides", [1] * nd)
    dil = attr(node, "dilations", [1] * nd)
    groups = attr(node, "group", 1)
    begin, end = pads_of(cv, node, x, kernel, strides, dil)
    if begin != end:
        x = _pad_module(cv, node, x, begin, end)
        begin = [0] * nd
    args = {"in_channels": int(w.shape[1] * groups), "out_channels": int(w.shape[0]), "kernel_size": list(kernel),
            "stride": list(strides), "padding": list(begin), "dilation": list(dil), "groups": int(groups),
            "bias": b is not None}
    weights = {"weight": w} | ({"bias": b.reshape(-1)} if b is not None else {})
    cv.module(node, f"Conv{nd}d", args, [cv.ref(x)], weights=weights)


@handles("ConvTranspose")
def conv_transpose(cv: Converter, node):
    x = node.input[0]
    w = cv.const(node.input[1], "weight")
    b = cv.opt_const(node, 2)
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        cv.fail(f"a {nd}-D transposed convolution is not supported")
    if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", ""):
        cv.fail("auto_pad on a transposed convolution is not supported")
    kernel = attr(node, "kernel_shape", list(w.shape[2:]))
    strides = attr(node, "strides", [1] * nd)
    dil = attr(node, "dilations", [1] * nd)
    groups = attr(node, "group", 1)
    pads = attr(node, "pads", [0] * (2 * nd))
    if pads[:nd] != pads[nd:]:
        cv.fail(f"asymmetric pads {pads} on a transposed convolution are not supported")
    out_pad = attr(node, "output_padding", [0] * nd)
    out_shape = attr(node, "output_shape", None)
    if out_shape:
        size = cv.shape(x)[2:]
        out_pad = [int(o) - ((i - 1) * s - 2 * p + d * (k - 1) + 1)
                   for o, i, s, p, d, k in zip(out_shape[-nd:], size, strides, pads[:nd], dil, kernel)]
    args = {"in_channels": int(w.shape[0]), "out_channels": int(w.shape[1] * groups), "kernel_size": list(kernel),
            "stride": list(strides), "padding": list(pads[:nd]), "output_padding": list(out_pad),
            "groups": int(groups), "bias": b is not None, "dilation": list(dil)}
    weights = {"weight": w} | ({"bias": b.reshape(-1)} if b is not None else {})
    cv.module(node, f"ConvTranspose{nd}d", args, [cv.ref(x)], weights=weights)


@handles("BatchNormalization")
def batch_norm(cv: Converter, node):
    if attr(node, "training_mode", 0):
        cv.fail("training-mode BatchNormalization is not supported (export the model in eval mode)")
    scale, bias, mean, var = (cv.const(node.input[i], what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    r = cv.rank(node.input[0])
    kind = {2: 1, 3: 1, 4: 2, 5: 3}.get(r)
    if kind is None:
        cv.fail(f"BatchNormalization of a rank-{r} tensor is not supported")
    momentum = float(attr(node, "momentum", 0.9))
    args = {"num_features": int(scale.size), "eps": float(attr(node, "epsilon", 1e-5)),
            "momentum": round(1.0 - momentum, 7)}
    cv.module(node, f"BatchNorm{kind}d", args, [cv.ref(node.input[0])],
              weights={"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
                       "num_batches_tracked": np.array(0, dtype=np.int64)})


@handles("InstanceNormalization")
def instance_norm(cv: Converter, node):
    scale, bias = cv.const(node.input[1], "scale"), cv.const(node.input[2], "bias")
    kind = {3: 1, 4: 2}.get(cv.rank(node.input[0]))
    if kind is None:
        cv.fail("InstanceNormalization is supported on 1-D and 2-D feature maps")
    cv.module(node, f"InstanceNorm{kind}d", {"num_features": int(scale.size), "eps": float(attr(node, "epsilon", 1e-5)),
                                            "affine": True}, [cv.ref(node.input[0])],
              weights={"weight": scale, "bias": bias})


@handles("LayerNormalization")
def layer_norm(cv: Converter, node):
    r = cv.rank(node.input[0])
    axis = attr(node, "axis", -1) % r
    scale = cv.const(node.input[1], "scale")
    bias = cv.opt_const(node, 2)
    shape = list(cv.shape(node.input[0])[axis:])
    if len(node.output) > 1 and any(node.output[1:]):
        cv.fail("LayerNormalization with mean/inv-std outputs is not supported")
    cv.module(node, "LayerNorm", {"normalized_shape": shape, "eps": float(attr(node, "epsilon", 1e-5)),
                                  "bias": bias is not None}, [cv.ref(node.input[0])],
              weights={"weight": np.broadcast_to(scale, shape)} |
                      ({"bias": np.broadcast_to(bias, shape)} if bias is not None else {}))


@handles("Gemm")
def gemm(cv: Converter, node):
    if attr(node, "transA", 0):
        cv.fail("Gemm with transA=1 is not supported")
    b = cv.const(node.input[1], "weight (B)")
    w = b if attr(node, "transB", 0) else b.T
    w = w * np.float32(attr(node, "alpha", 1.0))
    c = cv.opt_const(node, 2)
    if c is not None:
        if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            cv.fail(f"Gemm with a bias of shape {list(c.shape)} (not per output) is not supported")
        c = np.broadcast_to(c.reshape(-1) * np.float32(attr(node, "beta", 1.0)), (w.shape[0],)).astype(w.dtype)
    _linear(cv, node, w, c)


def _linear(cv: Converter, node, w: np.ndarray, bias):
    args = {"in_features": int(w.shape[1]), "out_features": int(w.shape[0]), "bias": bias is not None}
    cv.module(node, "Linear", args, [cv.ref(node.input[0])],
              weights={"weight": w} | ({"bias": bias} if bias is not None else {}))


@handles("MatMul")
def matmul(cv: Converter, node):
    a, b = node.input[0], node.input[1]
    if b in cv.consts and cv.consts[b].ndim == 2 and a not in cv.consts:
        bias = cv.consts[node.input[2]] if len(node.input) > 2 else None  # MatMul+Add fused (patterns.py)
        _linear(cv, node, cv.consts[b].T, bias)
        return
    cv.call("matmul", [cv.ref(a, scalar_ok=False), cv.ref(b, scalar_ok=False)], node.output[:1])


# ------------------------------------------------------------------------ activations

_SIMPLE = {"Relu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "HardSwish": "Hardswish", "Swish": "SiLU",
           "Mish": "Mish"}


@handles(*_SIMPLE)
def simple_activation(cv: Converter, node):
    cv.module(node, _SIMPLE[node.op_type], {}, [cv.ref(node.input[0])])


@handles("LeakyRelu")
def leaky_relu(cv: Converter, node):
    cv.module(node, "LeakyReLU", {"negative_slope": float(attr(node, "alpha", 0.01))}, [cv.ref(node.input[0])])


@handles("Elu")
def elu(cv: Converter, node):
    cv.module(node, "ELU", {"alpha": float(attr(node, "alpha", 1.0))}, [cv.ref(node.input[0])])


@handles("Softplus")
def softplus(cv: Converter, node):
    cv.module(node, "Softplus", {}, [cv.ref(node.input[0])])


@handles("Gelu")
def gelu(cv: Converter, node):
    cv.module(node, "GELU", {"approximate": attr(node, "approximate", "none")}, [cv.ref(node.input[0])])


@handles("PRelu")
def prelu(cv: Converter, node):
    slope = cv.const(node.input[1], "slope")
    channels = cv.shape(node.input[0])[1] if cv.rank(node.input[0]) > 1 else 1
    if slope.size not in (1, channels):
        cv.fail(f"PRelu with a slope of shape {list(slope.shape)} is not supported")
    cv.module(node, "PReLU", {"num_parameters": int(slope.size)}, [cv.ref(node.input[0])],
              weights={"weight": slope.reshape(-1)})


@handles("HardSigmoid")
def hard_sigmoid(cv: Converter, node):
    alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    x = cv.ref(node.input[0])
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        cv.module(node, "Hardsigmoid", {}, [x])
        return
    t1, t2 = cv.temp("hs"), cv.temp("hs2")  # Paddle's slope 0.2: clamp(alpha*x+beta, 0, 1)
    cv.call("mul", [x, {"c": alpha}], [t1])
    cv.call("add", [t1, {"c": beta}], [t2])
    cv.call("clamp", [t2], node.output[:1], {"min": 0.0, "max": 1.0})


@handles("Clip")
def clip(cv: Converter, node):
    lo, hi = attr(node, "min", None), attr(node, "max", None)
    if cv.opset >= 11:
        v = cv.opt_const(node, 1)
        lo = None if v is None else float(v.reshape(()))
        v = cv.opt_const(node, 2)
        hi = None if v is None else float(v.reshape(()))
    x = cv.ref(node.input[0])
    if lo == 0.0 and hi == 6.0:
        cv.module(node, "ReLU6", {}, [x])
    elif lo == 0.0 and (hi is None or math.isinf(hi)):
        cv.module(node, "ReLU", {}, [x])
    elif lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        cv.module(node, "Hardtanh", {"min_val": lo, "max_val": hi}, [x])
    else:
        cv.call("clamp", [x], node.output[:1], {"min": lo, "max": hi})


@handles("Softmax", "LogSoftmax")
def softmax(cv: Converter, node):
    r = cv.rank(node.input[0])
    axis = attr(node, "axis", -1 if cv.opset >= 13 else 1) % r
    if cv.opset < 13 and axis != r - 1 and any(d != 1 for d in cv.shape(node.input[0])[axis + 1:]):
        cv.fail(f"{node.op_type} before opset 13 over axes {axis}.. of a rank-{r} tensor is not supported")
    cv.module(node, node.op_type.replace("max", "max"), {"dim": axis}, [cv.ref(node.input[0])])


# ------------------------------------------------------------------------ pooling


@handles("MaxPool", "AveragePool")
def pool(cv: Converter, node):
    if len(node.output) > 1 and node.output[1]:
        cv.fail("MaxPool with an indices output is not supported")
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    nd = len(kernel)
    if nd not in (1, 2, 3):
        cv.fail(f"{nd}-D pooling is not supported")
    strides = attr(node, "strides", [1] * nd)
    dil = attr(node, "dilations", [1] * nd)
    ceil = bool(attr(node, "ceil_mode", 0))
    begin, end = pads_of(cv, node, x, kernel, strides, dil)
    is_max = node.op_type == "MaxPool"
    include = bool(attr(node, "count_include_pad", 0))
    if begin != end or any(2 * p > k for p, k in zip(begin, kernel)):
        if not is_max and not include and any(begin + end):
            cv.fail("asymmetric average pooling that excludes the padding is not supported")
        x = _pad_module(cv, node, x, begin, end, _NEG_INF if is_max else 0.0)
        begin = [0] * nd
    if is_max:
        args = {"kernel_size": kernel, "stride": list(strides), "padding": list(begin), "dilation": list(dil),
                "ceil_mode": ceil}
        cv.module(node, f"MaxPool{nd}d", args, [cv.ref(x)])
    else:
        if any(d != 1 for d in dil):
            cv.fail("dilated average pooling is not supported")
        args = {"kernel_size": kernel, "stride": list(strides), "padding": list(begin), "ceil_mode": ceil,
                "count_include_pad": include}
        cv.module(node, f"AvgPool{nd}d", args, [cv.ref(x)])


@handles("GlobalAveragePool", "GlobalMaxPool")
def global_pool(cv: Converter, node):
    nd = cv.rank(node.input[0]) - 2
    kind = "Avg" if node.op_type == "GlobalAveragePool" else "Max"
    cv.module(node, f"Adaptive{kind}Pool{nd}d", {"output_size": 1}, [cv.ref(node.input[0])])


# ------------------------------------------------------------------------ padding, resizing

_PAD_MODES = {"constant": "ConstantPad", "reflect": "ReflectionPad", "edge": "ReplicationPad"}


@handles("Pad")
def pad(cv: Converter, node):
    x = node.input[0]
    r = cv.rank(x)
    mode = attr(node, "mode", "constant")
    if cv.opset < 11:
        pads, value = list(attr(node, "pads")), float(attr(node, "value", 0.0))
    else:
        pads = [int(p) for p in cv.const(node.input[1], "pads")]
        v = cv.opt_const(node, 2)
        value = 0.0 if v is None else float(v.reshape(()))
        axes = cv.opt_const(node, 3)
        if axes is not None:
            full = [0] * (2 * r)
            for i, a in enumerate(int(a) % r for a in axes):
                full[a], full[a + r] = pads[i], pads[i + len(axes)]
            pads = full
    begin, end = pads[:r], pads[r:]
    if any(begin[:2]) or any(end[:2]) or any(p < 0 for p in pads) or r - 2 not in (1, 2, 3):
        cv.fail(f"padding {pads} touches the batch/channel dimensions or is negative; not supported")
    if mode not in _PAD_MODES or (mode != "constant" and r - 2 == 3):
        cv.fail(f"pad mode {mode!r} is not supported")
    args = {"padding": torch_pad(begin[2:], end[2:])}
    if mode == "constant":
        args["value"] = value
    cv.module(node, f"{_PAD_MODES[mode]}{r - 2}d", args, [cv.ref(x)])


@handles("Resize", "Upsample")
def resize(cv: Converter, node):
    x = node.input[0]
    in_shape, r = cv.shape(x), cv.rank(x)
    mode = attr(node, "mode", "nearest")
    if node.op_type == "Upsample" or cv.opset < 11:
        ctm, nearest = "asymmetric", "floor"
        scales = attr(node, "scales", None) if (node.op_type == "Upsample" and cv.opset < 9) else \
            cv.const(node.input[1], "scales")
        sizes = None
    else:
        ctm = attr(node, "coordinate_transformation_mode", "half_pixel")
        nearest = attr(node, "nearest_mode", "round_prefer_floor")
        scales = cv.opt_const(node, 2)
        scales = scales if scales is not None and np.asarray(scales).size else None
        sizes = cv.opt_const(node, 3)
        if attr(node, "axes", None) is not None:
            cv.fail("Resize with axes is not supported")
    if scales is None and sizes is None:
        cv.fail("Resize needs constant scales or sizes")
    if scales is not None:
        scales = [float(s) for s in np.asarray(scales).reshape(-1)]
        if scales[:2] != [1.0, 1.0]:
            cv.fail(f"Resize scales {scales} change the batch or channel dimension; not supported")
        factor = scales[2:]
        size = None
    else:
        sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        if sizes[1] != in_shape[1]:
            cv.fail("Resize sizes change the channel dimension; not supported")
        out = sizes[2:]
        if all(o % i == 0 for o, i in zip(out, in_shape[2:])):
            factor, size = [float(o // i) for o, i in zip(out, in_shape[2:])], None
        else:
            factor, size = None, out
    nd = r - 2
    if mode == "nearest":
        if ctm == "asymmetric" and nearest == "floor":
            tmode = "nearest"
        elif ctm in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn") and nearest.startswith("round"):
            tmode = "nearest-exact"
        elif ctm == "asymmetric" and factor and all(f == int(f) for f in factor) and nearest.startswith("round") \
                and all(int(f) in (1, 2) for f in factor):
            tmode = "nearest"  # x/2 rounded with ties to floor is floor(x/2)
        else:
            cv.fail(f"nearest Resize with coordinate_transformation_mode={ctm}, nearest_mode={nearest} is not "
                    f"supported")
        args = {"mode": tmode}
    elif mode in ("linear", "cubic"):
        if ctm == "align_corners":
            corners = True
        elif ctm in ("half_pixel", "pytorch_half_pixel"):
            corners = False
        else:
            cv.fail(f"{mode} Resize with coordinate_transformation_mode={ctm} is not supported")
        if mode == "cubic" and (nd != 2 or abs(float(attr(node, "cubic_coeff_a", -0.75)) + 0.75) > 1e-6):
            cv.fail("cubic Resize is supported in 2-D with cubic_coeff_a=-0.75 only")
        if mode == "linear" and nd not in (1, 2, 3):
            cv.fail(f"{nd}-D linear Resize is not supported")
        args = {"mode": "bicubic" if mode == "cubic" else {1: "linear", 2: "bilinear", 3: "trilinear"}[nd],
                "align_corners": corners}
    else:
        cv.fail(f"Resize mode {mode!r} is not supported")
    if size is not None:
        args["size"] = size
    else:
        args["scale_factor"] = factor
    cv.module(node, "Upsample", args, [cv.ref(x)])
