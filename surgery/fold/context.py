"""What every fold pass works on: a traced copy of the model and the record of what was done.

A pass finds its candidates in ``ctx.graph`` and edits through the context, so that every
graph edit ends in ``graph.lint()`` + ``recompile()`` (:meth:`FoldContext.commit`) and per-node
data lives in ``node.meta["surgery.fold"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from torch import fx, nn


@dataclass(frozen=True)
class FoldAction:
    """One fold done: ``target`` holds the result; ``merged`` were folded into it and removed."""

    kind: str  # "dirac" | "bn" | "branches" | "identity"
    target: str
    merged: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class FoldSkip:
    """A candidate left as it was, and why."""

    kind: str
    target: str
    reason: str


@dataclass
class FoldContext:
    """A GraphModule being folded, with the record of what was done and skipped."""

    gm: fx.GraphModule
    folds: list[FoldAction] = field(default_factory=list)
    skips: list[FoldSkip] = field(default_factory=list)

    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def module(self, node) -> nn.Module | None:
        if isinstance(node, fx.Node) and node.op == "call_module":
            return self.gm.get_submodule(str(node.target))
        return None

    def references(self, target: str) -> int:
        """How many graph nodes call ``target`` or read one of its attributes."""
        n = 0
        for node in self.graph.nodes:
            t = str(node.target)
            if (node.op == "call_module" and t == target) or (node.op == "get_attr" and t.startswith(target + ".")):
                n += 1
        return n

    def replace_module(self, target: str, new: nn.Module) -> None:
        """Install ``new`` under ``target`` (same qualified name, same position)."""
        if not self.gm.add_submodule(target, new):
            raise RuntimeError(f"fold: cannot install a module at {target!r}")

    def remove_node(self, node: fx.Node) -> None:
        """Erase a call_module node that has no users left, and its module if nothing else uses it."""
        target = str(node.target) if node.op == "call_module" else None
        self.graph.erase_node(node)
        if target is not None and self.references(target) == 0:
            self.gm.delete_submodule(target)

    def note(self, node: fx.Node, **data) -> None:
        node.meta.setdefault("surgery.fold", []).append(data)

    def done(self, kind: str, target: str, merged: Iterable[str] = (), detail: str = "") -> None:
        self.folds.append(FoldAction(kind, target, tuple(merged), detail))

    def skip(self, kind: str, target: str, reason: str) -> None:
        self.skips.append(FoldSkip(kind, target, reason))

    def commit(self) -> None:
        self.graph.lint()
        self.gm.recompile()


def drop_identities(ctx: FoldContext) -> None:
    for node in list(ctx.graph.nodes):
        if isinstance(ctx.module(node), nn.Identity) and len(node.args) == 1 and not node.kwargs:
            src = node.args[0]
            node.replace_all_uses_with(src)
            target = str(node.target)
            ctx.remove_node(node)
            ctx.done("identity", target, (target,), "nn.Identity removed")
    ctx.commit()


def prune_empty(gm: nn.Module) -> None:
    """Delete plain containers left with no children, parameters or buffers."""
    changed = True
    while changed:
        changed = False
        for name, m in list(gm.named_modules()):
            if not name or next(m.children(), None) is not None or m._parameters or m._buffers:
                continue
            if type(m) in (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict):
                parent, _, leaf = name.rpartition(".")
                delattr(gm.get_submodule(parent) if parent else gm, leaf)
                changed = True
