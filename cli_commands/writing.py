"""What the commands that write models share: default output names, a progress line on stderr
for the slow steps. The "wrote X" lines go through :func:`cli_commands.base.wrote` (stderr; with
--json the JSON's ``output`` says it).

Imports nothing heavy at module level (the CLI must start in a blink)."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from cli_commands.base import err_console, progress


def output_path(output: str | None, sources: Iterable[str], tag: str, suffix: str = ".pt") -> str:
    """``output`` as given, else the default name in the current directory
    (:func:`surgery.core.io.default_output`: the inputs' stems and ``tag``)."""
    from surgery.core import io as sio

    if output:
        return str(output)
    return str(sio.default_output(list(sources), tag, suffix))


@contextlib.contextmanager
def stages(*names: str) -> Iterator:
    """A progress bar on stderr over the named steps of a command; ``step(name)`` starts one.
    Transient: it disappears when the command ends; nothing at all when stderr is not a terminal
    (a log or a test reads exactly the lines the command prints)."""
    if not err_console.is_terminal:
        yield lambda name: None
        return
    with progress() as bar:
        task = bar.add_task(names[0] if names else "", total=len(names))
        started = [False]

        def step(name: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=name)

        yield step
        bar.update(task, completed=len(names))
