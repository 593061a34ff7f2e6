"""``describe(net)``: what was loaded (format, arch, recipe, params, input shape, hashes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgery.core.graph import output_tensors
from surgery.core.net import Net


@dataclass(frozen=True)
class ModelInfo:
    model: str  # the reference the user gave
    format: str
    arch: str | None  # ArchSpec.describe(), None for analysis-only formats
    recipe: tuple[dict, ...]
    params: int
    buffers: int  # elements of non-parameter buffers (BN running stats)
    input_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]  # without batch
    dtype: str
    editable: bool
    sources: dict  # path -> sha256
    metadata: dict


def describe(net: Net) -> ModelInfo:
    module = net.module
    first = next(iter(module.parameters()), None)
    dtype = first.dtype if first is not None else torch.float32
    meta = {k: v for k, v in net.metadata.items() if k != "sources"}
    return ModelInfo(
        model=net.source,
        format=net.format,
        arch=net.arch.describe() if net.arch else None,
        recipe=tuple(s.to_dict() for s in net.recipe),
        params=net.params,
        buffers=sum(b.numel() for b in module.buffers()),
        input_shape=net.input_shape,
        output_shapes=_output_shapes(net, dtype),
        dtype=str(dtype).replace("torch.", ""),
        editable=net.editable,
        sources=dict(net.metadata.get("sources", {})),
        metadata=meta,
    )


def _output_shapes(net: Net, dtype) -> tuple[tuple[int, ...], ...]:
    """Output shapes from a meta-device run: no memory, no compute."""
    from surgery.core.graph import meta_copy

    try:
        m = meta_copy(net.module)
        with torch.no_grad():
            out = m(torch.empty((net.batch_unit, *net.input_shape), device="meta", dtype=dtype))
        return tuple(tuple(t.shape[1:]) for t in output_tensors(out))
    except Exception:  # TorchScript / exported modules may not run on meta; shapes are optional
        with torch.no_grad():
            out = net.module(net.example_input(dtype=dtype))
        return tuple(tuple(t.shape[1:]) for t in output_tensors(out))
