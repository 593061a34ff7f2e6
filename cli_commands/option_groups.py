"""Options many commands declare the same way, declared once.

A command names such options as keyword-only parameters without a default, and
:func:`declared` gives each its type and typer option from the tables here (or a command
module's own, e.g. :data:`cli_commands.training_options.TRAINING`)::

    @app.command("fold")
    @declared(ONE_MODEL)
    def fold_cmd(model: str = typer.Argument(...), ..., *, force, json_out, arch, weights, weights_cutoff,
                 trust_pickle, input):

The function keeps its plain parameters (its body reads ``arch``, ``force``...); typer sees the
options after the command's own, in the order the function names them. Imports nothing heavy
(the CLI must start in a blink).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Mapping, Optional

from cli_commands.base import (ArchEachOpt, ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsCutoffOpt,
                               WeightsEachOpt, WeightsOpt)

Declarations = Mapping[str, tuple[Any, Any]]  # parameter name -> (its type, its typer.Option)

# writing and the loader options (cli_commands.base: what each one means) of a one-model command
ONE_MODEL: Declarations = {
    "force": (bool, ForceOpt),
    "json_out": (bool, JsonOpt),
    "arch": (Optional[str], ArchOpt),
    "weights": (Optional[str], WeightsOpt),
    "weights_cutoff": (Optional[int], WeightsCutoffOpt),
    "trust_pickle": (bool, TrustOpt),
    "trust_code": (bool, TrustOpt),
    "input": (Optional[str], InputOpt),
}
# ... and of a command loading several models: --arch/--weights once per model (base.load_models)
EACH_MODEL: Declarations = {
    **ONE_MODEL,
    "arch": (Optional[List[str]], ArchEachOpt),
    "weights": (Optional[List[str]], WeightsEachOpt),
}


def declared(*tables: Declarations) -> Callable:
    """Decorator (under ``@app.command``): every keyword-only parameter of the command without a
    default becomes the option ``tables`` declare under its name (the last table naming it wins)."""
    found = {k: v for t in tables for k, v in t.items()}

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        params = []
        for p in sig.parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                if p.name not in found:
                    raise TypeError(f"{fn.__qualname__}: no shared declaration of option {p.name!r}")
                kind, option = found[p.name]
                p = p.replace(annotation=kind, default=option)
                fn.__annotations__[p.name] = kind
            params.append(p)
        fn.__signature__ = sig.replace(parameters=params)
        return fn

    return deco
