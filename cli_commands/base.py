"""Shared pieces of the CLI: the typer app, model-loading options, rendering helpers.

Library code never prints; everything a user sees is rendered here or in a command module.
This module and every ``cli_commands/*.py`` import no torch and no heavy library module at
module level (``surgery --help`` must start in a blink): commands import them inside their
functions; ``tests/test_cli.py`` checks that ``import cli`` leaves torch unimported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from typing import Any, Iterable, Optional

import typer
from rich.console import Console
from rich.table import Table

from cli_commands.lazy import LazyGroup
from surgery.core.errors import SurgeryError
from surgery.core.safety import escape

app = typer.Typer(
    name="surgery",
    cls=LazyGroup,  # command modules load when their command runs (cli_commands/lazy.py)
    help="Model surgery and FLOP/latency analysis for PyTorch CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Output to a pipe or a file (a log) is never cut or wrapped in the middle of a value: its width
# is COLUMNS when set, else unlimited (rich would take 80). A terminal sets its own width.
NO_WIDTH_LIMIT = 100_000


def _console(**kw) -> Console:
    c = Console(highlight=False, **kw)
    if c.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return c
    return Console(highlight=False, width=NO_WIDTH_LIMIT, **kw)


console = _console()
err_console = _console(stderr=True)

# ------------------------------------------------------------------ common options

# The loader options mean the same in every command that loads a model (README "Model
# references"). Commands loading SEVERAL models (share BASE TASK..., diff A B, profile M...,
# heal STUDENT --teacher T, onion curve/train/calibrate with --baseline/--teacher) take the
# per-model ones (--arch, --weights) REPEATED, in the order the command names its models
# (positional arguments first, then --teacher/--baseline): given once, the value applies to
# every model; given once per model, the i-th goes to the i-th model, "-" meaning none for that
# one. --trust-code and --input apply to every model. One place implements it: load_models().
_ARCH_HELP = "Architecture of a bare state_dict: zoo:NAME[:k=v], py:module:factory or a Darknet .cfg."
_WEIGHTS_HELP = ("Weights to load into the architecture: a Darknet .weights for a .cfg (default: the same stem), or a "
                 "state_dict (.pt/.safetensors) for a py: reference.")
_EACH = (" Several models: repeat it once per model, in order ('-': none for that model); once applies to every "
         "model.")
ArchOpt = typer.Option(None, "--arch", metavar="REF", help=_ARCH_HELP)
WeightsOpt = typer.Option(None, "--weights", metavar="FILE", help=_WEIGHTS_HELP)
ArchEachOpt = typer.Option(None, "--arch", metavar="REF", help=_ARCH_HELP + _EACH)  # List[str]: multi-model commands
WeightsEachOpt = typer.Option(None, "--weights", metavar="FILE", help=_WEIGHTS_HELP + _EACH)
WeightsCutoffOpt = typer.Option(None, "--weights-cutoff", min=0, metavar="N",
                                help="The Darknet .weights holds layers 0..N-1 only (darknet53.conv.74: 74); the rest "
                                     "keep the seeded init. Default: inferred from the file size.")
TrustOpt = typer.Option(False, "--trust-code", "--trust-pickle",
                        help="Allow files whose loading or running executes code from the file: a whole pickled "
                             "module, TorchScript, a .pt2 run on real tensors (--trust-pickle: old name).")
InputOpt = typer.Option(None, "--input", metavar="CxHxW", help="Input shape without batch, e.g. 3x416x416 (default: the model's).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table (schema: docs/JSON.md).")
CsvOpt = typer.Option(False, "--csv", help="Print CSV instead of a table.")
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


def parse_shapes(text: str | None) -> list[tuple[int, ...]] | None:
    """``3x224x224,3x416x416`` -> two shapes (a sweep); ``3x224x224`` -> one."""
    if text is None:
        return None
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) > 1 and all("x" in p.lower() for p in parts):
        return [parse_shape(p) for p in parts]
    return [parse_shape(text)]


def parse_int_list(text: str, what: str, *, minimum: int = 1) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32]; every value at least ``minimum``."""
    if any(not p.strip() for p in text.split(",")) and text.strip():
        raise SurgeryError(f"bad {what} {text!r}: an empty value between commas; write e.g. 1,8,32")
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


def check_formats(json_out: bool, csv_out: bool) -> None:
    """``--json`` and ``--csv`` exclude each other (checked before anything slow happens)."""
    if json_out and csv_out:
        raise SurgeryError("--json and --csv exclude each other; pick one")


# Notes (e.g. "its weights are random") are held until the command succeeds: a command that
# fails prints exactly one line (the error), never a note before it.
_PENDING_NOTES: list[str] = []


def note(text: str) -> None:
    """A one-line stderr note, shown when the command succeeds (before its "wrote" lines)."""
    _PENDING_NOTES.append(text)


def flush_notes() -> None:
    while _PENDING_NOTES:
        err_console.print(f"note: {_PENDING_NOTES.pop(0)}", markup=False, soft_wrap=True)


def discard_notes() -> None:
    _PENDING_NOTES.clear()


def wrote(path, detail: str = "") -> None:
    """The one "wrote X" line of every command that writes a file: on stderr, so ``--json``
    on stdout stays clean."""
    flush_notes()
    err_console.print(f"wrote {path}" + (f": {detail}" if detail else ""), markup=False, soft_wrap=True)


def examples(*lines: str) -> str:
    """A command's --help epilog: example command lines, kept as typed (no re-wrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {l}" for l in lines)


def load_model(ref: str, arch: str | None = None, weights: str | None = None, trust_pickle: bool = False,
               input_shape: str | None = None, weights_cutoff: int | None = None, from_file: bool = False):
    """``from_file``: ``ref``/``arch`` were read from a file (a run directory), not typed."""
    from surgery.core import io as sio

    net = sio.load(ref, arch=arch, weights=weights, trust_pickle=trust_pickle, input_shape=parse_shape(input_shape),
                   weights_cutoff=weights_cutoff, from_file=from_file)
    load = net.metadata.get("weights_load") or {}
    if load.get("cutoff_inferred"):  # a partial .weights (darknet53.conv.74): say what was guessed
        note(describe_weights(net.metadata))  # held until the command succeeds, as every note
    return net


def per_model(values, refs: list[str], opt: str) -> list:
    """One value per model from a per-model option (see the comment above ``ArchOpt``): None or
    nothing -> None for all; one value -> that value for all; one per model -> in order, "-" ->
    None. Anything else is refused naming the models."""
    if values is None or isinstance(values, (str, int)):
        values = [] if values is None else [values]
    values = [None if v in ("-", "") else v for v in values]
    if not values:
        return [None] * len(refs)
    if len(values) == 1:
        return values * len(refs)
    if len(values) == len(refs):
        return list(values)
    raise SurgeryError(f"{opt} given {len(values)} times for {len(refs)} models ({', '.join(refs)}): give it once "
                       f"(every model) or once per model in that order, '-' for a model that needs none")


def load_models(refs: list[str], arch=None, weights=None, trust_pickle: bool = False, input_shape: str | None = None,
                weights_cutoff=None, from_file: bool = False) -> list:
    """Load several model references with the loader options, the one implementation of the
    multi-model convention: ``arch``, ``weights``, ``weights_cutoff`` per model (:func:`per_model`),
    ``trust_pickle`` and ``input_shape`` for all."""
    archs = per_model(arch, refs, "--arch")
    weights_ = per_model(weights, refs, "--weights")
    cutoffs = per_model(weights_cutoff, refs, "--weights-cutoff")
    nets = []
    for ref, a, w, c in zip(refs, archs, weights_, cutoffs):
        if c is not None:
            try:
                c = int(c)
            except ValueError:
                raise SurgeryError(f"--weights-cutoff {c!r}: give a layer count (or '-')") from None
        nets.append(load_model(ref, a, w, trust_pickle, input_shape, c, from_file))
    return nets


def describe_weights(meta) -> str | None:
    """One line on where a Darknet net's weights came from (``metadata`` set by the loader):
    None for anything else."""
    seed = meta.get("seed", 0)
    if meta.get("random_weights"):
        return f"none (random init, seed {seed})"
    load = meta.get("weights_load")
    if not load:
        return None
    if load.get("cutoff") is None:
        return f"{load['file']} (every layer)"
    got, rest = load["layers_from_file"], load["layers_initialised"]
    how = "inferred from its size" if load.get("cutoff_inferred") else "given"
    return (f"{load['file']} holds layers 0..{load['cutoff'] - 1} (cutoff {load['cutoff']}, {how}): "
            f"{len(got)} weighted layers from the file, {len(rest)} random (seed {seed}) from layer "
            f"{rest[0] if rest else load['cutoff']}")


def note_random_weights(net) -> None:
    """Every command that writes a model calls this: a one-line stderr note when the weights it
    writes are the seeded random init of a Darknet .cfg that came without .weights."""
    if net.metadata.get("random_weights"):
        seed = net.metadata.get("seed", 0)
        what = f"{net.source} has no .weights" if net.format == "darknet" else \
            f"{net.source} was made from a Darknet .cfg without .weights"
        note(f"{what}; its weights are random (seed {seed})")


# ------------------------------------------------------------------ rendering


def to_jsonable(obj: Any) -> Any:
    """The JSON of a report (one implementation: :func:`surgery.core.jsonable.to_jsonable`)."""
    from surgery.core.jsonable import to_jsonable as impl

    return impl(obj)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


def print_csv(header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(list(r))
    sys.stdout.write(buf.getvalue())


def out() -> Console:
    """The console for results. A terminal (or an explicit ``COLUMNS``) sets the width; a pipe
    or file without ``COLUMNS`` has no width limit (nothing is wrapped or left out)."""
    return console


def table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]], *, right: Iterable[str] = (),
          fold: Iterable[str] = ("name", "model", "tensor", "value", "source", "description", "arguments",
                                 "module", "operator", "reason", "notes"),
          drop: Iterable[str] = (), width: int | None = None) -> Table:
    """A rich table that never cuts a value with an ellipsis.

    Columns in ``fold`` (names, paths: text) fold onto more lines when the table is too wide;
    every other column (numbers, shapes) keeps its full width. If the table still cannot fit
    ``width`` (default: the result console's), the columns in ``drop`` are left out, in that
    order, until it fits (the JSON keeps them all)."""
    right, fold = set(right), set(fold)
    body = [[escape(v) for v in r] for r in rows]  # cells quote input files: no raw control characters
    columns = list(columns)
    width = width or out().width

    def natural(i: int) -> int:
        return max([len(columns[i])] + [len(r[i]) for r in body if i < len(r)])

    def word(i: int) -> int:  # a foldable column wraps at spaces; a word (num_classes=1000,) stays whole up to 40
        return min(40, max([len(w) for r in body if i < len(r) for w in str(r[i]).split()] or [0]))

    def need(cols: list[int]) -> int:  # fixed columns at full width, foldable ones at 24
        return sum(natural(i) if columns[i] not in fold else min(natural(i), 24) for i in cols) + 3 * len(cols) + 1

    keep = list(range(len(columns)))
    for name in drop:
        if need(keep) <= width:
            break
        keep = [i for i in keep if columns[i] != name]
    left_out = [columns[i] for i in range(len(columns)) if i not in keep]
    caption = f"left out at {width} columns: {', '.join(left_out)} (--json has every field)" if left_out else None
    # as wide as its title (up to the width), so that a title is never wrapped mid-phrase
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left",
              min_width=min(len(title), width) if title else None)
    # foldable columns keep their longest word whole (num_classes=1000,) as far as the width allows:
    # the room the fixed columns leave is shared among them
    folds = [i for i in keep if columns[i] in fold]
    room = width - sum(natural(i) for i in keep if i not in folds) - 3 * len(keep) - 1
    share = max(0, room) // max(1, len(folds))
    for i in keep:
        c = columns[i]
        if c in fold:
            t.add_column(c, justify="right" if c in right else "left", overflow="fold",
                         min_width=min(word(i), share) or None)
        else:
            t.add_column(c, justify="right" if c in right else "left", no_wrap=True, min_width=natural(i),
                          overflow="fold")
    for r in body:
        t.add_row(*[r[i] for i in keep if i < len(r)])
    return t


def fmt_ms(x: float | None, none: str = "–") -> str:
    """A time in ms for people: three significant digits, thousands separated, never an
    exponent (1250.3 -> '1,250', 12.345 -> '12.3', 0.01234 -> '0.0123')."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    x = float(x)
    if x == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{min(decimals, 6)}f}"


def fmt_num(x: float | None, none: str = "–") -> str:
    """A plain number with three significant digits and no exponent for everyday magnitudes
    (ratios, statistics); exponents only outside 1e-4..1e6."""
    if x is None:
        return none
    x = float(x)
    if x != x:
        return "nan"
    if x == 0 or 1e-4 <= abs(x) < 1e6:
        return fmt_ms(x)
    return f"{x:.3g}"


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
    """Progress on stderr (so --json output stays clean): a rich bar with the time left on a
    terminal; a plain line every few seconds in a log or pipe (:mod:`cli_commands.progress_lines`)."""
    if not err_console.is_terminal:
        from cli_commands.progress_lines import LineProgress

        return LineProgress(err_console)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=True)
