"""surgery: model surgery and FLOP/latency analysis for PyTorch CNNs — the Python API.

``import surgery`` is the way in (docs/API.md, whose examples the tests run)::

    import surgery

    net = surgery.load("zoo:resnet18")                 # a Net: module, arch spec, recipe, input shape
    cost = surgery.analyze(net)                        # CostReport: cost.totals.macs, cost.to_json()
    folded, report = surgery.fold(net)                 # every surgery: Net -> (Net, report)
    surgery.save(folded, "resnet18-folded.pt")

The names in ``__all__`` are the public API: the functions the CLI itself calls, returning the
report objects it renders (each with ``to_json()``, the docs/JSON.md schema). Everything else
is internal. Names resolve on first use (PEP 562), so ``import surgery`` imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from surgery.core.version import __version__

# public name -> (module, attribute); a surgery whose module has the same name (surgery.fold) is
# the module itself, made callable (surgery.core.callable_module)
_API: dict[str, tuple[str, str | None]] = {
    # models
    "load": ("surgery.core.io", "load"),
    "save": ("surgery.core.io", "save"),
    "Net": ("surgery.core.net", "Net"),
    "SurgeryError": ("surgery.core.errors", "SurgeryError"),
    "to_json": ("surgery.core.jsonable", "to_jsonable"),
    # analyzers
    "analyze": ("analyzers.cost", "analyze"),
    "diff": ("analyzers.diff", "diff"),
    "profile": ("analyzers.profile", "profile"),
    "profile_layers": ("analyzers.layer_profile", "profile_layers"),
    "evaluate": ("surgery.evaluate", "evaluate"),
    # surgeries
    "fold": ("surgery.fold", None),
    "share": ("surgery.share", None),
    "retarget": ("surgery.retarget", None),
    "regroup": ("surgery.regroup", None),
    "onion": ("surgery.onion", None),
    "heal": ("surgery.heal", None),
    "export_onnx": ("surgery.export", "export_onnx"),
    # training configuration
    "HealConfig": ("surgery.heal", "HealConfig"),
    "TrainConfig": ("surgery.train.loop", "TrainConfig"),
    "LossSpec": ("surgery.train.losses", "LossSpec"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}; the public API is {', '.join(_API)}")
    module, attr = _API[name]
    mod = import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
