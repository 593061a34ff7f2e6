"""Floating-point dtype names: the one copy of the aliases users may type.

Torch is imported only by :func:`torch_dtype`, so the CLI can check a name without it.
"""

from __future__ import annotations

from surgery.core.errors import SurgeryError, suggest

# canonical names (torch's attribute names) of the float dtypes a model may run in
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
ALIASES = {"fp32": "float32", "float": "float32", "single": "float32", "fp16": "float16", "half": "float16",
           "bf16": "bfloat16", "fp64": "float64", "double": "float64"}


def dtype_name(name, allowed=FLOAT_DTYPES) -> str:
    """``"fp16"``/``"half"``/``torch.float16`` -> ``"float16"``; anything outside ``allowed`` is a
    :class:`SurgeryError` naming the choices."""
    key = str(name).strip().lower().replace("torch.", "")
    key = ALIASES.get(key, key)
    if key not in allowed:
        raise SurgeryError(f"unknown dtype {name!r}{suggest(key, allowed)}; use {', '.join(allowed)}")
    return key


def torch_dtype(name, allowed=FLOAT_DTYPES):
    """The ``torch.dtype`` for a name or alias (``None`` stays ``None``; a dtype passes through)."""
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    return getattr(torch, dtype_name(name, allowed))
