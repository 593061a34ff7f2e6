"""The registries the layers above the core fill, so the core imports none of them.

- **architecture kinds** (:class:`~surgery.core.net.ArchSpec` ``kind``): how a checkpoint's arch
  spec is built (``zoo``, ``darknet`` from the zoo; ``py`` and ``onnx`` from the core itself);
- **model-reference loaders** for :func:`surgery.core.io.load`: by prefix (``zoo:``, ``py:``)
  and by file suffix (``.cfg``, ``.weights``, ``.onnx``);
- **recipe replays** live in :mod:`surgery.core.recipe` (``@replayable``), filled the same way.

Which modules register is said once, in ``pyproject.toml``'s entry points of the group
``surgery.plugins`` (the habit of pytest's and setuptools' plugins: the core knows the group's
name, never the modules). :func:`load_plugins` imports them on first need. A module can also
register by being imported (a user's own package adding a zoo family or a loader).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable

from surgery.core.errors import SurgeryError, suggest

GROUP = "surgery.plugins"

_ARCH_KINDS: dict[str, Callable[[Any], Any]] = {}
_PREFIXES: dict[str, Callable[..., Any]] = {}
_SUFFIXES: dict[str, Callable[..., Any]] = {}
_LOADED = False


def register(table: dict, key: str, fn: Callable, what: str) -> Callable:
    """``table[key] = fn``; the same key registered by another function is refused (RuntimeError):
    two builders for one key would make loading depend on import order."""
    old = table.get(key)
    if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
        raise RuntimeError(f"{what} {key!r} registered twice: {old.__module__}.{old.__qualname__} and "
                           f"{fn.__module__}.{fn.__qualname__}")
    table[key] = fn
    return fn


def arch_kind(kind: str):
    """Register ``fn(spec) -> nn.Module`` as the builder of arch specs of ``kind``."""
    return lambda fn: register(_ARCH_KINDS, kind, fn, "architecture kind")


def prefix_loader(prefix: str):
    """Register ``fn(ref, **options) -> Net`` for references starting with ``prefix``."""
    return lambda fn: register(_PREFIXES, prefix, fn, "reference prefix")


def suffix_loader(*suffixes: str):
    """Register ``fn(path, **options) -> Net`` for files ending in any of ``suffixes``."""
    def deco(fn):
        for s in suffixes:
            register(_SUFFIXES, s.lower(), fn, "file suffix")
        return fn

    return deco


def load_plugins() -> None:
    """Import every module of the entry-point group once (they fill the registries)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True  # first: a plugin that imports the core must not come back here
    eps = sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name)
    if not eps:
        raise SurgeryError(f"no {GROUP} entry points: the package is not installed (run `make venv` or "
                           f"`pip install -e .` in the repository)")
    for ep in eps:
        importlib.import_module(ep.value)


def arch_builder(kind: str) -> Callable[[Any], Any]:
    load_plugins()
    if kind not in _ARCH_KINDS:
        raise SurgeryError(f"unknown architecture kind {kind!r}{suggest(kind, _ARCH_KINDS)} (known: "
                           f"{', '.join(sorted(_ARCH_KINDS))})")
    return _ARCH_KINDS[kind]


def loader_for(ref: str) -> Callable[..., Any] | None:
    """The loader of a reference by its prefix, else by its file suffix; None: the core's own."""
    load_plugins()
    for prefix, fn in _PREFIXES.items():
        if ref.startswith(prefix):
            return fn
    low = ref.lower()
    for suffix, fn in _SUFFIXES.items():
        if low.endswith(suffix):
            return fn
    return None
