"""Building modules for weights about to be loaded: the fixed seed, size checks before any
allocation, strict state_dict loading (shapes and kinds named in one line), and the
first-line summary of a third-party exception. Shared by every loader (core and zoo)."""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from torch import nn

from surgery.core import safety
from surgery.core.errors import SurgeryError, first_line

DEFAULT_SEED = 0


@contextlib.contextmanager
def seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_build(build: Callable[[], nn.Module], what: str) -> nn.Module:
    """Build on the meta device (no memory, no init) and refuse, with the amount, when the
    real weights would not fit in memory; returns the meta module."""
    try:
        with torch.device("meta"):
            module = build()
    except SurgeryError:
        raise
    except (RuntimeError, ValueError, OverflowError, MemoryError) as e:  # sizes torch cannot represent
        raise SurgeryError(f"{what}: the sizes it asks for cannot be built ({type(e).__name__}: {first_line(e)})") from None
    safety.check_memory(safety.module_nbytes(module), f"{what}: its weights", "check the sizes it asks for")
    return module


def find_state_dict(obj) -> dict | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj:
                found = find_state_dict(obj[key])
                if found is not None:
                    return found
    return None


def load_state_strict(module: nn.Module, state: Mapping, path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise SurgeryError(f"{path}: keys do not fit the architecture: {'; '.join(parts)}; check --arch")
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise SurgeryError(
                f"{path}: {k} has shape {list(v.shape)} but the architecture needs {list(own[k].shape)}; check --arch"
            )
        kind_given = (v.is_floating_point(), v.is_complex(), v.dtype == torch.bool)
        kind_needed = (own[k].is_floating_point(), own[k].is_complex(), own[k].dtype == torch.bool)
        if kind_given != kind_needed:
            raise SurgeryError(
                f"{path}: {k} holds {str(v.dtype).replace('torch.', '')} values but the architecture needs "
                f"{str(own[k].dtype).replace('torch.', '')}; the file is damaged or not for this architecture"
            )
    module.load_state_dict(state, strict=True, assign=on_meta(module))
    if on_meta(module):
        raise SurgeryError(f"{path}: the architecture has tensors the checkpoint does not carry; it cannot be loaded")


def on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


def structure(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module for weights that are about to be loaded: on the meta device (no random
    init, no memory) when every tensor it holds is in its state_dict; otherwise for real."""
    with torch.device("meta"):
        module = build()
    persistent = set(module.state_dict())
    tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    if set(tensors) <= persistent:
        return module
    safety.check_memory(safety.module_nbytes(module), "the checkpoint's architecture: its weights")
    return build()  # non-persistent buffers (e.g. constants computed at init) need real values
