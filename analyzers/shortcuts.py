"""Outputs of the commonest aten ops on the meta device, made without their meta kernels.

Those kernels are Python decompositions costing 1-3 ms a call (BatchNorm, activations) or
importing torch._dynamo and sympy on first use (conv, cat, upsample, max-pool: 1.5 s per
process). Only the plain cases are handled — results that are exactly a fresh contiguous
tensor, or one shaped and strided like the input; ``None`` means "run the real kernel".
tests/test_cost.py checks every shortcut against the real meta kernels.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from analyzers.formulas import EVAL_BATCH_NORM, SAME_AS_INPUT

_CONV = torch.ops.aten.convolution.default
_CAT = torch.ops.aten.cat.default
_UPSAMPLE = {torch.ops.aten.upsample_nearest2d.default, torch.ops.aten.upsample_nearest2d.vec}
_MAXPOOL = torch.ops.aten.max_pool2d_with_indices.default


def shortcut(func, args, kwargs):
    """What ``func(*args, **kwargs)`` returns on meta, or ``None`` when the real kernel must run.

    Only meta tensors are stood in for: a model that does shape arithmetic on the host (a
    ``cat`` of CPU int64 shape tensors feeding a ``reshape``) needs the real values."""
    if not all(t.is_meta for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
        return None
    if func is _CONV:
        return _conv_shortcut(*args, **kwargs)
    if func is _CAT:
        return _cat_shortcut(*args, **kwargs)
    if func in _UPSAMPLE:
        return _upsample_shortcut(func, *args, **kwargs)
    if func is _MAXPOOL:
        return _maxpool_shortcut(*args, **kwargs)
    packet = func._overloadpacket
    schema = func._schema
    if "out" in schema.overload_name or not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if not x.is_floating_point():
        return None
    if packet in SAME_AS_INPUT:
        others = [a for a in tree_leaves((args[1:], kwargs)) if isinstance(a, torch.Tensor)]
        if any(o.shape != x.shape or o.dtype != x.dtype or o.stride() != x.stride() for o in others):
            return None
        if any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments):
            return x  # in place: meta does nothing and returns self
        return _like(x)
    if packet in EVAL_BATCH_NORM:
        training = args[5] if packet.__name__ == "native_batch_norm" and len(args) > 5 else False
        if training or x.dim() < 2:
            return None
        stat = torch.float64 if x.dtype == torch.float64 else torch.float32
        c = x.shape[1]
        y = _like(x)
        if y is None:
            return None
        return y, torch.empty((c,), dtype=stat, device=x.device), torch.empty((c,), dtype=stat, device=x.device)
    return None


def _like(x: torch.Tensor) -> torch.Tensor | None:
    """``empty_like(x)`` for dense layouts (meta ``empty_like`` imports sympy on first use)."""
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return None


def _conv_shortcut(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    nd = x.dim() - 2
    if not (1 <= nd <= 3 and w.dim() == nd + 2 and x.is_contiguous() and w.is_contiguous() and x.dtype == w.dtype
            and len(stride) == len(padding) == len(dilation) == nd and x.shape[1] > 0 and x.shape[0] > 0):
        return None
    k = w.shape[2:]
    if transposed:
        if len(output_padding) != nd or x.shape[1] != w.shape[0]:
            return None
        c = w.shape[1] * groups
        spatial = [(i - 1) * s - 2 * p + d * (kk - 1) + op + 1
                   for i, s, p, d, kk, op in zip(x.shape[2:], stride, padding, dilation, k, output_padding)]
    else:
        if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
            return None
        c = w.shape[0]
        spatial = [(i + 2 * p - d * (kk - 1) - 1) // s + 1
                   for i, s, p, d, kk in zip(x.shape[2:], stride, padding, dilation, k)]
    if any(v <= 0 for v in spatial) or any(v <= 0 for v in stride):
        return None  # let the real kernel raise its own error
    return torch.empty((x.shape[0], c, *spatial), dtype=x.dtype, device=x.device)


def _cat_shortcut(tensors, dim=0):
    if not tensors or not all(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        return None
    if not tensors[0].is_floating_point():
        return None  # integer cats are shape arithmetic: cheap, and their values matter
    first = tensors[0]
    nd = first.dim()
    if nd == 0:
        return None
    dim = dim % nd
    for t in tensors:
        if (t.dim() != nd or t.dtype != first.dtype or not t.is_contiguous() or t.numel() == 0
                or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != dim)):
            return None
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(shape, dtype=first.dtype, device=first.device)


def _upsample_shortcut(func, x, output_size=None, *scales, **kw):
    if x.dim() != 4 or not x.is_contiguous() or x.numel() == 0:
        return None
    if func is torch.ops.aten.upsample_nearest2d.vec and output_size is None:
        factors = scales[0] if scales else kw.get("scale_factors")
        if not factors or len(factors) != 2:
            return None
        output_size = [int(x.shape[2] * factors[0]), int(x.shape[3] * factors[1])]  # floor, as ATen
    if output_size is None or len(output_size) != 2 or min(output_size) <= 0:
        return None
    return torch.empty((*x.shape[:2], *output_size), dtype=x.dtype, device=x.device)


def _pool_out(size: int, k: int, pad: int, stride: int, dil: int, ceil: bool) -> int:
    """ATen's pooling_output_shape."""
    out = (size + 2 * pad - dil * (k - 1) - 1 + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _maxpool_shortcut(x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    two = lambda v, d: (list(v) * 2 if len(v) == 1 else list(v)) if v else d  # noqa: E731
    k = two(kernel_size, None)
    s, p, d = two(stride, k), two(padding, [0, 0]), two(dilation, [1, 1])
    if x.dim() != 4 or not x.is_contiguous() or x.numel() == 0 or any(len(v) != 2 for v in (k, s, p, d)):
        return None
    if any(pp * 2 > kk for pp, kk in zip(p, k)) or min(s) <= 0:
        return None  # the kernel raises its own error
    hw = [_pool_out(x.shape[2 + i], k[i], p[i], s[i], d[i], bool(ceil_mode)) for i in range(2)]
    if min(hw) <= 0:
        return None
    shape = (*x.shape[:2], *hw)
    return (torch.empty(shape, dtype=x.dtype, device=x.device),
            torch.empty(shape, dtype=torch.int64, device=x.device))
