"""The zoo's part of the core's registries (:mod:`surgery.core.plugins`): arch specs of kind
``zoo`` and ``zoo:NAME[:k=v,...]`` references."""

from __future__ import annotations

from typing import Mapping

from surgery.core import plugins, safety
from surgery.core.build import DEFAULT_SEED, check_build, seeded
from surgery.core.net import ArchSpec, Net
from surgery.core.refs import parse_zoo_ref
from zoo import registry


@plugins.arch_kind("zoo")
def _build(spec: ArchSpec, **_options):
    return registry.get(spec.name).build(**dict(spec.kwargs))


@plugins.prefix_loader("zoo:")
def _load(ref: str, **_options) -> Net:
    name, kwargs = parse_zoo_ref(ref)
    return build_zoo(name, kwargs)


def _zoo_arch(name: str, kwargs: Mapping) -> tuple[ArchSpec, tuple[int, ...]]:
    entry = registry.get(name)
    full = entry.resolve_kwargs(dict(kwargs))
    # keep only what differs from the defaults, so the spec reads like what the user asked
    defaults = entry.defaults()
    given = {k: v for k, v in full.items() if k in kwargs or v != defaults.get(k)}
    return ArchSpec("zoo", name, given), entry.shape_for(full)


def build_zoo(name: str, kwargs: Mapping | None = None, *, seed: int = DEFAULT_SEED) -> Net:
    arch, shape = _zoo_arch(name, kwargs or {})
    safety.check_shape(shape, f"zoo:{name}: input shape")
    check_build(arch.build, f"zoo:{name}")
    with seeded(seed):
        module = arch.build()
    module.eval()
    return Net(module, arch, shape, source=arch.describe(), format="zoo", metadata={"seed": seed})
