"""The registry of fold kinds: ``@register("bn", order=2)`` on a pass ``run(ctx, kinds)``.

Kind modules import this module (and :mod:`surgery.fold.context`); nothing here imports a
kind, so there is no import circle. :mod:`surgery.fold` imports the kinds, which registers
them. Like ``zoo.registry``, a second registration under the same name is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from surgery.fold.context import FoldContext

FoldPass = Callable[["FoldContext", tuple[str, ...]], None]


@dataclass(frozen=True)
class FoldKind:
    name: str
    order: int  # folds run in increasing order
    run: FoldPass
    summary: str  # one line, for --help


_KINDS: dict[str, FoldKind] = {}


def register(name: str, *, order: int, summary: str):
    def deco(fn: FoldPass) -> FoldPass:
        if name in _KINDS:
            raise RuntimeError(f"fold kind {name!r} is registered twice ({_KINDS[name].run.__module__} and "
                               f"{fn.__module__})")
        _KINDS[name] = FoldKind(name, order, fn, summary)
        return fn

    return deco


def kinds() -> tuple[FoldKind, ...]:
    """Every registered kind, in run order."""
    return tuple(sorted(_KINDS.values(), key=lambda k: k.order))
