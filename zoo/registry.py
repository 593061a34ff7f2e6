"""A decorator registry of model builders (the timm ``_registry.py`` habit).

Each entry carries the metadata the tests are parametrised over: the default input shape
and the published parameter count with its source, so every new entry is tested
automatically (tests/test_zoo.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from surgery.core.errors import SurgeryError, suggest

_REGISTRY: dict[str, "ZooEntry"] = {}


@dataclass(frozen=True)
class ZooEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str
    # Shape without batch. A callable gets the builder's keyword arguments (defaults filled in).
    input_shape: tuple[int, ...] | Callable[[dict], tuple[int, ...]]
    published_params: int | None = None  # the published figure, for the registry test
    params_rtol: float = 0.01  # how close the built model must be to published_params
    source: str = ""  # where published_params comes from
    slow: bool = False  # large model: its registry test is marked slow
    extra: dict = field(default_factory=dict)  # further published figures (e.g. {"macs": ...})

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.builder)
        return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}

    def resolve_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``kwargs`` (strings coerced to the default's type)."""
        defaults = self.defaults()
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise SurgeryError(
                f"zoo:{self.name} has no argument {unknown[0]!r}{suggest(unknown[0], defaults)}; "
                f"it takes: {', '.join(sorted(defaults)) or 'none'}"
            )
        out = dict(defaults)
        for k, v in kwargs.items():
            out[k] = _coerce(self.name, k, v, defaults[k])
        return out

    def shape_for(self, kwargs: dict[str, Any]) -> tuple[int, ...]:
        full = self.resolve_kwargs(kwargs)
        shape = self.input_shape(full) if callable(self.input_shape) else self.input_shape
        return tuple(int(s) for s in shape)

    def build(self, **kwargs: Any) -> nn.Module:
        return self.builder(**self.resolve_kwargs(kwargs))


def _coerce(entry: str, key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise SurgeryError(
            f"zoo:{entry}: {key}={value!r} is not a valid {type(default).__name__}"
        ) from None
    return value


def register(
    name: str,
    *,
    family: str,
    input_shape,
    description: str = "",
    published_params: int | None = None,
    params_rtol: float = 0.01,
    source: str = "",
    slow: bool = False,
    extra: dict | None = None,
):
    """Register ``fn(**kwargs) -> nn.Module`` as ``zoo:name``."""

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"zoo entry {name!r} registered twice")
        _REGISTRY[name] = ZooEntry(
            name=name,
            builder=fn,
            family=family,
            description=description or (fn.__doc__ or "").strip().splitlines()[0] if (description or fn.__doc__) else "",
            input_shape=input_shape,
            published_params=published_params,
            params_rtol=params_rtol,
            source=source,
            slow=slow,
            extra=dict(extra or {}),
        )
        return fn

    return deco


def get(name: str) -> ZooEntry:
    _load_families()
    if name not in _REGISTRY:
        raise SurgeryError(f"unknown zoo model {name!r}{suggest(name, _REGISTRY)}; `surgery zoo list` shows them all")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_families()
    return list(_REGISTRY)


def entries() -> list[ZooEntry]:
    _load_families()
    return list(_REGISTRY.values())


def _load_families() -> None:
    # Importing the family modules runs their @register decorators.
    import zoo  # noqa: F401  (zoo/__init__.py imports every family)
