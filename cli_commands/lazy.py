"""Command modules load when their command runs, not at start-up (click's "lazy group" pattern:
https://click.palletsprojects.com/en/stable/complex/#lazily-loading-subcommands).

``surgery --help`` lists every command from :data:`COMMANDS` (name, the modules that define it,
its one-line summary) without importing a command module; ``surgery CMD ...`` imports only the
modules of CMD. ``tests/test_cli.py`` checks that each summary here is the one the command's
own help gives, so the table cannot drift from the commands.
"""

from __future__ import annotations

from difflib import get_close_matches
from importlib import import_module

import typer.main
from typer import _click as click  # the click that typer 0.28 vendors (pyproject pins it)
from typer.core import TyperCommand, TyperGroup

# name -> (modules under cli_commands/ that register it on ``app``, its summary); help order.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "info": (("info",), "Show what a model reference loads: format, arch, recipe, params, input shape, hashes."),
    "zoo": (("zoo_cmd",), "List and build zoo architectures (zoo:NAME references)."),
    "layers": (("layers",), "Per-layer table: index, name, type, input/output shapes, params, MACs, bytes; totals "
                            "at the bottom."),
    "flops": (("flops",), "MACs/FLOPs under a named convention (printed with the result), by layer, module or "
                          "operator; roofline latency floor with --device-spec; sweeps with --input A,B and --batch "
                          "1,8,64."),
    "share": (("share",), "One network from BASE and TASK models: layers 0..K run once, then every head."),
    "retarget": (("retarget",), "A task model from BASE: layers 0..K kept, the rest fresh for N classes."),
    "diff": (("diff",), "Relative weight differences of B against A per layer (|B-A| / mean|A|: mean, quartiles, "
                        "whiskers at 1.5 IQR, outliers) and a suggested layer to cut a shared backbone: the "
                        "least-squares change point of the per-layer weight medians, printed as \"first changed "
                        "layer\" s and \"share at\" s-1 (share layers 0..s-1), with the rule and the cost savings."),
    "fold": (("fold",), "Fold Dirac convs, BatchNorm and parallel linear branches into plain convs; verify, then "
                        "write."),
    "profile": (("profile",), "Time models (PyTorch eager, CUDA graphs, torch.compile, ONNX Runtime) beside their "
                              "MACs."),
    "export": (("export",), "Export a model to ONNX and/or Darknet cfg+weights, verified before anything is "
                            "written."),
    "data": (("data",), "Write bundled real data as image folders (nothing is downloaded)."),
    "heal": (("heal",), "Train STUDENT until it behaves like TEACHER again (distillation, attention transfer)."),
    "train": (("heal",), "Train MODEL with the folder's labels (cross entropy): the same loop as heal, no teacher."),
    "eval": (("eval",), "Measure models on labelled image folders: accuracy, and top-1 agreement and KL to a "
                        "teacher."),
    "onion": (("onion", "onion_train"), "OnionNet cascades: split, run (skipping S2 for rejected samples), t(p) "
                                        "curves, two-graph ONNX export."),
    "regroup": (("regroup",), "Regroup dense spatial convs into root (filter-group) convs, keeping the most weight "
                              "energy."),
}


def load(name: str) -> None:
    """Import the modules that register command ``name`` on the app."""
    for module in COMMANDS[name][0]:
        import_module(f"cli_commands.{module}")


def load_all() -> None:
    """Register every command (tests and the start-up benchmark walk the whole app)."""
    for name in COMMANDS:
        load(name)


class LazyGroup(TyperGroup):
    """The root group: lists :data:`COMMANDS` and builds a command on first use."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        if self._listing:  # the root's --help: the summary is all it shows
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
        load(cmd_name)
        cmd = _built(cmd_name)
        if cmd is not None:
            self.add_command(cmd, cmd_name)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return self._click_resolve_command(ctx, args)
        except click.exceptions.UsageError as e:  # typer suggests from loaded commands only
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches:
                e.message = f"{e.message.rstrip('.')}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise


def _built(name: str) -> click.Command | None:
    """The click command typer builds for ``name`` from what its module registered."""
    from cli_commands.base import app

    for info in app.registered_commands:
        if (info.name or info.callback.__name__) == name:
            return typer.main.get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                    rich_markup_mode=app.rich_markup_mode)
    for info in app.registered_groups:
        if info.name == name:
            return typer.main.get_group_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                                  suggest_commands=app.suggest_commands,
                                                  rich_markup_mode=app.rich_markup_mode)
    return None
