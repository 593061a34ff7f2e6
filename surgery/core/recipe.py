"""Structural replay of recipes.

A checkpoint stores the arch spec and the list of surgeries applied. Loading rebuilds the
arch, replays each step *structurally* (module shapes only; values are irrelevant because
the state_dict is loaded strictly afterwards), so no pickle is ever needed.

Each surgery module registers its replay with ``@replayable("op")``; the modules that do are
the entry points of :data:`surgery.core.plugins.GROUP` (the core names none of them).
"""

from __future__ import annotations

from typing import Callable, Mapping

from torch import nn

from surgery.core import plugins
from surgery.core.errors import SurgeryError, suggest

ReplayFn = Callable[[nn.Module, Mapping], nn.Module]
_REPLAY: dict[str, ReplayFn] = {}


def replayable(op: str):
    """Register ``fn(module, args) -> module`` as the structural replay of recipe op ``op``.
    An op registered twice by different functions is refused (RuntimeError), as zoo entries
    are: two replays for one op would make checkpoints load differently by import order."""

    return lambda fn: plugins.register(_REPLAY, op, fn, "recipe op")


def rebuild(arch, recipe) -> nn.Module:
    """Build ``arch`` and replay every step of ``recipe`` structurally."""
    plugins.load_plugins()  # the surgeries' modules register their replays (pyproject.toml entry points)
    module = arch.build()
    for step in recipe:
        fn = _REPLAY.get(step.op)
        if fn is None:
            raise SurgeryError(
                f"checkpoint recipe uses surgery {step.op!r}, which this version of surgery does not know"
                f"{suggest(step.op, _REPLAY)}; upgrade surgery"
            )
        module = fn(module, step.args)
    return module
