"""``Net``: the one object everything passes around.

A Net is the ``nn.Module``, the architecture spec it was built from, the ordered list of
surgeries applied to it (the *recipe*), and the default input shape (without batch).
Surgeries are functions ``Net -> (Net, Report)`` that never mutate their input; they call
:meth:`Net.evolve` to make the result.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from surgery.core import plugins
from surgery.core.errors import SurgeryError


def describe_py(module: str, factory: str, kwargs: Mapping[str, Any]) -> str:
    """``py:module:factory[:k=v,...]``, as the user writes it (lists as comma lists)."""
    def show(v: Any) -> str:
        return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)

    args = ",".join(f"{k}={show(v)}" for k, v in kwargs.items())
    return f"py:{module}:{factory}" + (f":{args}" if args else "")


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild the network's structure without pickle.

    ``kind="zoo"``: ``zoo.get(name).build(**kwargs)``.
    ``kind="darknet"``: the Darknet cfg text in ``cfg`` (``name`` is where it came from).
    ``kind="py"``: the user's own factory, ``name="package.module:factory"`` called with
    ``kwargs`` (``surgery.core.pyref``); named by a file, so :meth:`build` calls only classes or
    the user's own functions (:meth:`build_own`: what the user named on the command line).
    """

    kind: str
    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cfg: str | None = None

    def build(self, *, own: bool = False) -> nn.Module:
        """Build the structure with the builder registered for ``kind``
        (:mod:`surgery.core.plugins`). ``own``: the user named this spec themselves (a ``py:``
        reference on the command line, a trusted pickle's class), not a file."""
        return plugins.arch_builder(self.kind)(self, own=own)

    def build_own(self) -> nn.Module:
        """Build what the user named themselves: its ``py:`` module counts as named."""
        return self.build(own=True)

    def describe(self) -> str:
        if self.kind == "zoo":
            args = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
            return f"zoo:{self.name}" + (f":{args}" if args else "")
        if self.kind == "py":
            return describe_py(*self.name.partition(":")[::2], self.kwargs)
        if self.kind == "onnx":
            return f"onnx:{self.name}"
        return f"darknet:{self.name}"

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "kwargs": dict(self.kwargs)}
        if self.cfg is not None:
            d["cfg"] = self.cfg
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArchSpec":
        try:
            return cls(kind=str(d["kind"]), name=str(d["name"]), kwargs=dict(d.get("kwargs", {})), cfg=d.get("cfg"))
        except (KeyError, TypeError) as e:
            raise SurgeryError(f"malformed arch spec in checkpoint (missing {e}); was it written by surgery?") from None


@dataclass(frozen=True)
class Step:
    """One applied surgery: its name and JSON-able arguments (enough to replay the structure)."""

    op: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"op": self.op, "args": _plain(self.args)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Step":
        if not isinstance(d, Mapping) or "op" not in d:
            raise SurgeryError("malformed recipe step in checkpoint; was it written by surgery?")
        return cls(op=str(d["op"]), args=dict(d.get("args", {})))


def _plain(x):
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


@dataclass(frozen=True)
class Net:
    module: nn.Module
    arch: ArchSpec | None  # None: analysis only (TorchScript, ExportedProgram, trusted pickle)
    input_shape: tuple[int, ...]
    recipe: tuple[Step, ...] = ()
    source: str = ""  # the reference the user gave
    format: str = ""  # zoo | checkpoint | state_dict | darknet | torchscript | exported | pickle
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "recipe", tuple(self.recipe))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def params(self) -> int:
        return count_params(self.module)

    @property
    def editable(self) -> bool:
        return self.arch is not None

    def require_editable(self, what: str) -> None:
        if self.arch is None and self.metadata.get("not_editable"):
            raise SurgeryError(f"cannot {what} {self.source or 'this model'} (analysis only): "
                               f"{self.metadata['not_editable']}")
        if self.arch is None:
            kind = {"exported": "a torch.export .pt2 program", "torchscript": "a TorchScript archive"}.get(
                self.format, f"a {self.format or 'loaded'} model")
            raise SurgeryError(
                f"{self.source or 'this model'} is {kind}, which surgery can analyse but not "
                f"{what}; load it from a .pt checkpoint, a Darknet cfg, a py: reference or zoo:NAME instead"
            )

    def evolve(self, module: nn.Module, step: Step | None = None, **changes) -> "Net":
        """A new Net with ``module`` (and ``step`` appended to the recipe)."""
        recipe = self.recipe + ((step,) if step is not None else ())
        return replace(self, module=module, recipe=recipe, **changes)

    def clone_module(self) -> nn.Module:
        return copy.deepcopy(self.module)

    @property
    def batch_unit(self) -> int:
        """The batch a forward needs a multiple of: :func:`batch_unit` of the module."""
        return batch_unit(self.module)

    def example_input(self, batch: int | None = None, *, device="cpu", dtype=torch.float32,
                      seed: int = 0) -> torch.Tensor:
        """A seeded random input of ``batch`` rows (default :attr:`batch_unit`)."""
        batch = self.batch_unit if batch is None else batch
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, *self.input_shape), generator=g, dtype=torch.float32)
        return x.to(device=device, dtype=dtype)


def batch_unit(module: nn.Module) -> int:
    """The batch a forward of ``module`` needs a multiple of: the least common multiple of the
    ``batch_unit`` its modules declare (a Darknet recurrent net with ``[net] time_steps=T`` takes T
    rows per sequence, also inside a shared or wrapped network), else 1."""
    units = {int(getattr(m, "batch_unit", 1)) for m in module.modules()} if isinstance(module, nn.Module) else set()
    return math.lcm(*units) if units else 1


def count_params(module: nn.Module) -> int:
    """Unique parameters (shared tensors once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
