"""The ``surgery`` command line: one command per verb (modules in ``cli_commands/``).

Bad input raises :class:`surgery.errors.SurgeryError`; it is printed as one line on stderr
and the exit code is 2. ``SURGERY_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

import typer

import surgery
from cli_commands.base import app, err_console
from surgery.errors import SurgeryError

# Each module adds its command(s) to ``app``; the order here is the order in --help.
_COMMANDS = ("info", "zoo_cmd", "layers", "flops", "share", "retarget", "diff", "fold", "profile", "export")
for _name in _COMMANDS:
    import_module(f"cli_commands.{_name}")


def _version(value: bool):
    if value:
        typer.echo(f"surgery {surgery.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")):
    """Model surgery and FLOP/latency analysis for PyTorch CNNs."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (typer's own usage errors exit 2 via SystemExit)."""
    debug = os.environ.get("SURGERY_DEBUG") == "1"
    try:
        app(args=argv, prog_name="surgery")
    except SurgeryError as e:
        if debug:
            raise
        err_console.print(f"surgery: error: {e}", markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
