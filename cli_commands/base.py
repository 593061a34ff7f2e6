"""Shared pieces of the CLI: the typer app, model-loading options, rendering helpers.

Library code never prints; everything a user sees is rendered here or in a command module.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table

from surgery import io as sio
from surgery.errors import SurgeryError

app = typer.Typer(
    name="surgery",
    help="Model surgery and FLOP/latency analysis for PyTorch CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

# ------------------------------------------------------------------ common options

ArchOpt = typer.Option(None, "--arch", help="Architecture of a bare state_dict: zoo:NAME[:k=v] or a Darknet .cfg.")
WeightsOpt = typer.Option(None, "--weights", help="Darknet .weights for a .cfg (default: same stem).")
TrustOpt = typer.Option(False, "--trust-pickle", help="Allow loading a whole pickled module (runs code from the file).")
InputOpt = typer.Option(None, "--input", help="Input shape without batch, e.g. 3x416x416 (default: the model's).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
ForceOpt = typer.Option(False, "--force", help="Overwrite an existing output file.")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(p) for p in text.lower().strip().split("x"))
    except ValueError:
        raise SurgeryError(f"bad shape {text!r}; write it like 3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise SurgeryError(f"bad shape {text!r}; every dimension must be a positive integer")
    return dims


def parse_int_list(text: str, what: str, *, minimum: int = 1) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32]; every value at least ``minimum``."""
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SurgeryError(f"bad {what} {text!r}; write a comma-separated list of integers, e.g. 1,8,32") from None
    if not vals:
        raise SurgeryError(f"bad {what} {text!r}: empty")
    if any(v < minimum for v in vals):
        raise SurgeryError(f"bad {what} {text!r}: every value must be at least {minimum}")
    return vals


def parse_layer_list(text: str, what: str) -> list[int | str]:
    """``"40,48,layer3"`` -> [40, 48, "layer3"]: layer indices or module names."""
    vals: list[int | str] = []
    for p in (p.strip() for p in text.split(",")):
        if p:
            vals.append(int(p) if p.lstrip("-").isdigit() else p)
    if not vals:
        raise SurgeryError(f"bad {what} {text!r}: empty; give layer indices or names, e.g. 40,48,64")
    return vals


def load_model(ref: str, arch: str | None = None, weights: str | None = None, trust_pickle: bool = False,
               input_shape: str | None = None):
    return sio.load(ref, arch=arch, weights=weights, trust_pickle=trust_pickle, input_shape=parse_shape(input_shape))


# ------------------------------------------------------------------ rendering


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_json"):
            return to_jsonable(obj.to_json())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


def print_csv(header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(list(r))
    sys.stdout.write(buf.getvalue())


def table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]], *, right: Iterable[str] = ()) -> Table:
    right = set(right)
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI); used only for display, JSON keeps exact integers."""
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.4g}{unit}"


def shape_str(shape) -> str:
    return "x".join(str(s) for s in shape)


def progress():
    """A rich progress bar on stderr (so --json output stays clean)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)
