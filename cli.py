"""The ``surgery`` command line: one command per verb (modules in ``cli_commands/``).

Bad input raises :class:`surgery.core.errors.SurgeryError`; it is printed as one line on stderr
and the exit code is 2. ``SURGERY_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import warnings

from surgery.core import safety

# Ctrl-C (or SIGTERM) while the imports below run: one line and exit 130/143, no traceback.
_STARTUP_HANDLERS = safety.install_signal_handlers(running=False)

import typer  # noqa: E402

import surgery
from cli_commands.base import app, discard_notes, err_console, flush_notes
from surgery.core import files
from surgery.core.errors import SurgeryError

# Command modules register on ``app`` when their command runs (cli_commands/lazy.py).
safety.restore_signal_handlers(_STARTUP_HANDLERS)  # start-up is over; main() installs its own


def _one_line_usage_error(self, file=None) -> None:
    """Typer's usage errors (a missing option, a value of the wrong type) as every other error:
    one line on stderr, ``surgery: error: ...``, exit 2 (click's default prints the usage block
    and a hint over three lines). The vendored click of the pinned typer (pyproject.toml)."""
    where = self.ctx.command_path if getattr(self, "ctx", None) is not None else "surgery"
    err_console.print(f"surgery: error: {safety.escape(self.format_message())} (see `{where} -h`)", markup=False,
                      emoji=False, highlight=False, soft_wrap=True)


from typer._click.exceptions import UsageError  # noqa: E402

UsageError.show = _one_line_usage_error


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
    previous = safety.install_signal_handlers(running=True)  # SIGTERM/SIGINT remove temp files
    files.track_inputs(True)  # every file a command reads is an input, never an output
    try:
        with warnings.catch_warnings():
            if not debug:  # libraries' warnings (torch's pickle protocol, Pillow's decompression bomb)
                warnings.simplefilter("ignore")  # never reach the terminal ahead of the one line
            app(args=argv, prog_name="surgery")
        flush_notes()
    except SystemExit as e:  # click ends every command with SystemExit
        if e.code in (0, None):
            flush_notes()
        else:
            discard_notes()
        raise
    except SurgeryError as e:
        discard_notes()
        if debug:
            raise
        # input-derived text (cfg section names, file names) may hold control characters
        msg = safety.escape(str(e).strip()) or f"{type(e).__name__} (no message)"
        err_console.print(f"surgery: error: {msg}", markup=False, emoji=False, highlight=False, soft_wrap=True)
        return 2
    except safety.Interrupted as e:
        err_console.print(f"surgery: {safety.interrupted_message(e.signum)}", markup=False, emoji=False,
                          highlight=False, soft_wrap=True)
        return 128 + e.signum
    except KeyboardInterrupt:
        err_console.print(f"surgery: {safety.interrupted_message(None)}", markup=False, emoji=False, highlight=False,
                          soft_wrap=True)
        return 130
    finally:
        safety.remove_temps()
        files.track_inputs(False)
        safety.restore_signal_handlers(previous)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
