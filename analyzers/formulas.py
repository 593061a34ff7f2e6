"""Per-aten-op cost formulas: the one place a count is defined.

Units (DESIGN.md): ``macs`` are multiply-accumulates; ``flops = 2 × macs``. Every aten op
the counter sees falls in exactly one *class*:

``matmul`` — convolutions (dense, grouped, depthwise, transposed) and matrix products
    (``mm``, ``addmm``, ``bmm``, ``baddbmm``, attention). MACs come from PyTorch's own
    registered formulas (``torch.utils.flop_counter.flop_registry``, which returns FLOPs =
    2 × MACs; we halve them). Bias additions are not counted (as in fvcore, Darknet,
    and the papers).
``other`` — BatchNorm, activations, pooling, element-wise arithmetic (the residual ``+``),
    upsampling, softmax, reductions. Counted in *MAC-equivalents*: one per elementary
    arithmetic operation per element (an add, a multiply or a fused multiply-add each
    occupy one FMA slot, so ``2 ×`` stays comparable with a device's peak FLOP/s). They go
    to ``other_macs`` so a convention can include or exclude them.
``movement`` — ``cat``, copies, padding, gathers, creation: no arithmetic, bytes only.
``view`` — aliasing ops (``view``, ``transpose``, ``slice``...): no arithmetic, no bytes.
``uncounted`` — no formula. Never silently zero: the counter lists them with how many
    elements passed through (and ``strict`` makes them an error).

Per-element costs of the ``other`` class (N = output elements unless stated):

====================================  =========================================
BatchNorm (eval)                      1·N   (x·a + b with per-channel a, b folded)
BatchNorm (training), Layer/GroupNorm  3·N, +1·N with an affine weight
activations (ReLU, leaky, SiLU, ...)  1·N
element-wise add/sub/mul/div/...      1·N   (addcmul/addcdiv 2·N)
max/avg pooling                       kernel area · N
adaptive pooling, reductions (mean)   input elements (var/std: 2 × input elements)
softmax / log-softmax                 3·N   (exp, sum, divide)
scatter-add / scatter-reduce          1 per source element (index_add/index_reduce too)
upsample nearest                      0     (a gather: movement)
upsample (bi/tri)linear / bicubic     4·N / 8·N / 16·N
====================================  =========================================

``fvcore_macs`` mirrors what fvcore's ``FlopCountAnalysis`` (its default handles) would
report for the same op, so the "fvcore" convention reproduces fvcore without running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten


@dataclass(frozen=True)
class Formula:
    cls: str  # matmul | other | movement | view | uncounted
    category: str  # conv, matmul, attention, batch_norm, activation, elementwise, pool, ...
    macs: int = 0  # matmul class
    other_macs: int = 0  # other class (MAC-equivalents)
    fvcore_macs: int = 0  # what fvcore would count for this op


def _numel(t) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _packet(name: str):
    return getattr(aten, name, None)


def _packets(*names: str) -> set:
    return {p for p in (_packet(n) for n in names) if p is not None}


# ----------------------------------------------------------------------------- op tables

_CONV = _packets("convolution", "_convolution", "cudnn_convolution", "_slow_conv2d_forward",
                 "convolution_overrideable", "mkldnn_convolution", "cudnn_convolution_transpose",
                 "slow_conv_transpose2d", "slow_conv3d_forward", "_convolution_mode")
_MATMUL = _packets("mm", "addmm", "bmm", "baddbmm", "_scaled_mm")

_BATCH_NORM = _packets("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                       "_native_batch_norm_legit_functional", "_batch_norm_with_update",
                       "_batch_norm_with_update_functional", "_batch_norm_no_update", "cudnn_batch_norm",
                       "miopen_batch_norm", "batch_norm")
_NORMS = _packets("native_layer_norm", "native_group_norm", "_fused_rms_norm", "rms_norm")

_ACTIVATIONS = _packets(
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "threshold", "threshold_",
    "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "hardsigmoid", "hardsigmoid_", "hardswish", "hardswish_", "mish", "mish_", "softplus",
    "softsign", "log_sigmoid_forward", "_prelu_kernel", "prelu", "rrelu_with_noise", "glu",
)
_ELEMENTWISE = _packets(
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide", "floor_divide",
    "remainder", "fmod", "pow", "pow_", "neg", "neg_", "exp", "exp_", "exp2", "expm1", "log", "log_", "log2",
    "log10", "log1p", "sqrt", "sqrt_", "rsqrt", "rsqrt_", "reciprocal", "reciprocal_", "abs", "abs_", "sign",
    "sgn", "floor", "ceil", "round", "trunc", "frac", "sin", "cos", "tan", "atan", "atan2", "erf", "erfc",
    "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "maximum", "minimum", "fmax",
    "fmin", "where", "lerp", "lerp_", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
    "logical_not", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor", "square",
    "masked_fill", "masked_fill_", "nan_to_num", "xlogy", "hypot", "isnan", "isinf", "isfinite", "sigmoid_backward",
)
_ELEMENTWISE_2 = _packets("addcmul", "addcmul_", "addcdiv", "addcdiv_")
_POOL = _packets("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
                 "avg_pool1d", "avg_pool2d", "avg_pool3d", "_max_pool2d", "mkldnn_max_pool2d")
_ADAPTIVE_POOL = _packets("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d",
                          "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
_REDUCE = _packets("mean", "sum", "amax", "amin", "max", "min", "prod", "argmax", "argmin", "logsumexp", "norm",
                   "linalg_vector_norm", "all", "any", "count_nonzero")
_REDUCE_2 = _packets("var", "std", "var_mean", "std_mean")
_SOFTMAX = _packets("_softmax", "_log_softmax", "softmax", "log_softmax", "_safe_softmax")
# (self, dim, index, src, ...): each source element is combined into self (add, max, mean...)
_SCATTER_REDUCE = _packets("scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_", "index_add",
                           "index_add_", "index_reduce", "index_reduce_")
_UPSAMPLE_NEAREST = _packets("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
                             "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d")
_UPSAMPLE_LINEAR = {p: k for names, k in ((("upsample_linear1d",), 2), (("upsample_bilinear2d",
                    "_upsample_bilinear2d_aa"), 4), (("upsample_trilinear3d",), 8), (("upsample_bicubic2d",
                    "_upsample_bicubic2d_aa"), 16), (("grid_sampler_2d", "grid_sampler"), 4)) for p in _packets(*names)}
_MOVEMENT = _packets(
    "cat", "stack", "clone", "_to_copy", "copy", "copy_", "contiguous", "repeat", "repeat_interleave", "tile",
    "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d", "pad",
    "index", "index_select", "gather", "scatter", "index_put", "index_put_", "index_copy",
    "masked_select", "flip", "roll", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
    "slice_scatter", "select_scatter", "expand_copy", "permute_copy", "view_copy", "transpose_copy", "_unsafe_index",
    "fill", "fill_", "zero_", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "arange",
    "linspace", "scalar_tensor", "new_zeros", "new_ones", "new_full", "eye", "tril", "triu", "lift_fresh_copy",
    "native_dropout", "bernoulli_", "uniform_", "normal_", "rand", "randn", "rand_like", "randn_like",
    "one_hot", "topk", "sort", "nonzero",
)
# allocation without writing: no bytes at all
_ALLOC = _packets("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
                  "resize_", "_local_scalar_dense", "lift_fresh", "set_", "detach", "detach_", "alias",
                  "_assert_tensor_metadata", "sym_constrain_range", "_assert_async", "dropout", "feature_dropout",
                  "item", "_has_compatible_shallow_copy_type", "is_same_size")
# views whose schema does not declare the alias
_VIEWS = _packets("_unsafe_view", "_reshape_alias", "reshape", "view_as", "flatten", "unflatten")
# ops that overwrite their first argument without reading it
OVERWRITE = _packets("copy_", "fill_", "zero_", "uniform_", "normal_", "bernoulli_", "index_put_", "resize_")
# ops whose extra outputs (indices, saved statistics) are not part of an inference result
FIRST_OUTPUT_ONLY = _BATCH_NORM | _NORMS | _packets("max_pool2d_with_indices", "max_pool3d_with_indices",
                                                    "native_dropout", "adaptive_max_pool2d", "topk", "sort")
# metadata queries: not ops at all (never recorded)
QUERIES = {getattr(aten, n).default for n in (
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "size", "stride", "numel", "dim",
    "storage_offset", "is_contiguous", "sym_is_contiguous", "is_strides_like_format",
    "is_non_overlapping_and_dense") if hasattr(aten, n) and hasattr(getattr(aten, n), "default")}

KNOWN = (_CONV | _MATMUL | _BATCH_NORM | _NORMS | _ACTIVATIONS | _ELEMENTWISE | _ELEMENTWISE_2 | _POOL
         | _ADAPTIVE_POOL | _REDUCE | _REDUCE_2 | _SOFTMAX | _SCATTER_REDUCE | _UPSAMPLE_NEAREST | set(_UPSAMPLE_LINEAR)
         | _MOVEMENT | _ALLOC | _VIEWS | set(flop_registry))

# Output-shape shortcuts (counting.py): ops whose meta kernels are slow Python decompositions
# but whose result is simply shaped like their first input.
SAME_AS_INPUT = (_ACTIVATIONS | _ELEMENTWISE | _ELEMENTWISE_2) - _packets(
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isinf",
    "isfinite", "where", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor", "glu", "masked_fill",
    "masked_fill_", "log_sigmoid_forward", "rrelu_with_noise", "_prelu_kernel", "prelu")
EVAL_BATCH_NORM = _packets("native_batch_norm", "_native_batch_norm_legit_no_training")

# Ops fvcore counts, at the level of the Python function it traced (``aten::adaptive_avg_pool2d``
# reaches the dispatcher as ``mean`` for a 1×1 output, so it is recognised by its function).
FVCORE_FUNCTIONS = {"adaptive_avg_pool2d"}


def is_view(func) -> bool:
    """An aliasing op (its output shares its input's storage and nothing is written)."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


# ----------------------------------------------------------------------------- the registry

# packet -> pure function (args, kwargs, out, ctx) -> Formula; one formula per op, as
# torch/utils/flop_counter.py's register_flop_formula (a second registration is a bug)
FORMULAS: dict = {}


@dataclass(frozen=True)
class _Ctx:
    """What every formula may need besides the op's own arguments."""

    packet: object
    fn: str  # the torch-level function that issued the op
    first_in: object
    first_out: object
    n_out: int
    fv: int  # fvcore's count when fvcore sees the op at the function level (adaptive_avg_pool2d)


def register_formula(packets):
    """Register one formula for every op packet in ``packets``; a packet that already has one
    is refused (ValueError), so two tables can never silently disagree."""
    packets = list(packets)

    def deco(f):
        for p in packets:
            if p in FORMULAS:
                raise ValueError(f"a cost formula for {p} is already registered ({FORMULAS[p].__name__})")
            FORMULAS[p] = f
        return f

    return deco


@register_formula(_CONV | _MATMUL | (set(flop_registry) - _CONV - _MATMUL))
def _matmul(args, kwargs, out, c: _Ctx) -> Formula:
    flops = int(flop_registry[c.packet](*args, **kwargs, out_val=out)) if c.packet in flop_registry else 0
    macs = flops // 2
    category = "conv" if c.packet in _CONV else "matmul" if c.packet in _MATMUL else "attention"
    return Formula("matmul", category, macs=macs, fvcore_macs=macs)


@register_formula(_BATCH_NORM)
def _batch_norm(args, kwargs, out, c: _Ctx) -> Formula:
    training = _bn_training(c.packet, args, kwargs)
    affine = len(args) > 1 and isinstance(args[1], torch.Tensor)
    n = _numel(c.first_in)
    if training:
        return Formula("other", "batch_norm", other_macs=n * (4 if affine else 3), fvcore_macs=n * (5 if affine else 4))
    return Formula("other", "batch_norm", other_macs=n, fvcore_macs=n * (2 if affine else 1))


@register_formula(_NORMS)
def _norm(args, kwargs, out, c: _Ctx) -> Formula:
    w = 2 if c.packet is _packet("native_layer_norm") else 1  # layer_norm(x, shape, w, b), group_norm(x, w, b, ...)
    affine = len(args) > w and isinstance(args[w], torch.Tensor)
    n = _numel(c.first_in)
    return Formula("other", "norm", other_macs=n * (4 if affine else 3), fvcore_macs=n * (5 if affine else 4))


@register_formula(_ACTIVATIONS)
def _activation(args, kwargs, out, c: _Ctx) -> Formula:
    return Formula("other", "activation", other_macs=c.n_out, fvcore_macs=c.fv)


@register_formula(_ELEMENTWISE | _ELEMENTWISE_2)
def _elementwise(args, kwargs, out, c: _Ctx) -> Formula:
    k = 2 if c.packet in _ELEMENTWISE_2 else 1
    return Formula("other", "elementwise", other_macs=k * c.n_out, fvcore_macs=c.fv)


@register_formula(_POOL)
def _pool(args, kwargs, out, c: _Ctx) -> Formula:
    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", [1])
    kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [int(kernel)]
    spatial = max(1, c.first_out.dim() - 2)
    area = prod(kernel * spatial if len(kernel) == 1 else kernel)
    return Formula("other", "pool", other_macs=area * c.n_out, fvcore_macs=c.fv)


@register_formula(_ADAPTIVE_POOL)
def _adaptive_pool(args, kwargs, out, c: _Ctx) -> Formula:
    return Formula("other", "pool", other_macs=_numel(c.first_in), fvcore_macs=c.fv)


@register_formula(_REDUCE | _REDUCE_2)
def _reduce(args, kwargs, out, c: _Ctx) -> Formula:
    k = 2 if c.packet in _REDUCE_2 else 1
    category = "pool" if c.fn in FVCORE_FUNCTIONS or "pool" in c.fn else "reduction"
    return Formula("other", category, other_macs=k * _numel(c.first_in), fvcore_macs=c.fv)


@register_formula(_SOFTMAX)
def _softmax(args, kwargs, out, c: _Ctx) -> Formula:
    return Formula("other", "softmax", other_macs=3 * c.n_out, fvcore_macs=c.fv)


@register_formula(_SCATTER_REDUCE)
def _scatter_reduce(args, kwargs, out, c: _Ctx) -> Formula:
    src = args[3] if len(args) > 3 else kwargs.get("src", kwargs.get("source"))
    return Formula("other", "reduction", other_macs=_numel(src), fvcore_macs=c.fv)


@register_formula(_UPSAMPLE_NEAREST)
def _upsample_nearest(args, kwargs, out, c: _Ctx) -> Formula:
    fv2 = c.n_out if c.packet is _packet("upsample_nearest2d") else 0
    return Formula("movement", "upsample", fvcore_macs=fv2)


@register_formula(_UPSAMPLE_LINEAR)
def _upsample_linear(args, kwargs, out, c: _Ctx) -> Formula:
    fv2 = 4 * c.n_out if c.packet in _packets("upsample_bilinear2d", "grid_sampler_2d", "grid_sampler") else 0
    return Formula("other", "upsample", other_macs=_UPSAMPLE_LINEAR[c.packet] * c.n_out, fvcore_macs=fv2)


@register_formula(_MOVEMENT - set(FORMULAS))
def _movement(args, kwargs, out, c: _Ctx) -> Formula:
    category = "concat" if c.packet in _packets("cat", "stack") else "movement"
    return Formula("movement", category, fvcore_macs=c.fv)


@register_formula(_ALLOC - set(FORMULAS))
def _alloc(args, kwargs, out, c: _Ctx) -> Formula:
    return Formula("view", "alloc")


@register_formula(_VIEWS - set(FORMULAS))
def _view(args, kwargs, out, c: _Ctx) -> Formula:
    return Formula("view", "view")


def formula(func, args, kwargs, out, fn: str = "") -> Formula:
    """The cost of one aten call. ``fn`` is the torch-level function that issued it."""
    packet = func._overloadpacket
    first_in = next((a for a in args if isinstance(a, torch.Tensor)), None)
    first_out = out[0] if isinstance(out, (tuple, list)) and out else out
    fv = _numel(first_in) if fn in FVCORE_FUNCTIONS else 0  # aten::adaptive_avg_pool2d in fvcore: one per input
    f = FORMULAS.get(packet)
    if f is not None:
        return f(args, kwargs, out, _Ctx(packet, fn, first_in, first_out, _numel(first_out), fv))
    if is_view(func):
        return Formula("view", "view")
    return Formula("uncounted", "uncounted")


def category_of(packet) -> str:
    """The category of an aten op packet from its name alone (what a profiler reports, no
    arguments): ``conv``, ``matmul``, ``batch_norm``, ``norm``, ``activation``, ``elementwise``,
    ``pool``, ``reduction``, ``softmax``, ``upsample``, ``concat``, ``movement``, ``view``,
    ``alloc``, or ``uncounted`` for a packet no table names (a composite such as ``conv2d``:
    look at what it runs)."""
    for table, category in ((_CONV, "conv"), (_MATMUL, "matmul"), (_BATCH_NORM, "batch_norm"), (_NORMS, "norm"),
                            (_ACTIVATIONS, "activation"), (_ELEMENTWISE | _ELEMENTWISE_2, "elementwise"),
                            (_POOL | _ADAPTIVE_POOL, "pool"), (_REDUCE | _REDUCE_2 | _SCATTER_REDUCE, "reduction"),
                            (_SOFTMAX, "softmax"), (_UPSAMPLE_NEAREST | set(_UPSAMPLE_LINEAR), "upsample"),
                            (_packets("cat", "stack"), "concat"), (_MOVEMENT, "movement"), (_VIEWS, "view"),
                            (_ALLOC, "alloc")):
        if packet in table:
            return category
    try:
        if any(is_view(getattr(packet, o)) for o in packet.overloads()):
            return "view"
    except (AttributeError, RuntimeError):
        pass
    return "uncounted"


def _bn_training(packet, args, kwargs) -> bool:
    if packet in _packets("_native_batch_norm_legit_no_training", "_batch_norm_no_update"):
        return False
    if packet in _packets("_batch_norm_with_update", "_batch_norm_with_update_functional"):
        return True
    if packet is _packet("_native_batch_norm_legit") and len(args) == 7:  # (x, w, b, rm, rv, training, ...)
        return bool(args[5])
    if packet is _packet("_native_batch_norm_legit"):  # no running stats: always batch statistics
        return True
    # native_batch_norm / batch_norm / cudnn: (input, weight, bias, running_mean, running_var, training, ...)
    return bool(args[5]) if len(args) > 5 else bool(kwargs.get("training", False))
