"""The project's one error type for bad input.

Anything a user can get wrong (a missing file, a truncated ``.weights``, an unknown layer,
mismatched architectures) raises :class:`SurgeryError` with a message that names the
file/layer and says what to do. ``cli.py`` prints the message as one line on stderr and
exits with code 2; a traceback only with ``SURGERY_DEBUG=1``.
"""

from __future__ import annotations

import difflib
import re


class SurgeryError(Exception):
    """Bad input: the message is shown to the user verbatim (one line)."""


def suggest(name: str, choices, n: int = 3) -> str:
    """`` (did you mean: a, b?)`` for close matches of ``name`` in ``choices``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(e: BaseException | str, limit: int = 200) -> str:
    """The gist of a third-party exception (or any text) for a one-line message: its first
    non-empty line without terminal colours, cut at ``limit`` characters; the exception's type
    name when it says nothing. torch's weights-only unpickler buries its reason after
    boilerplate, and its "Could this error message be improved?" tails are dropped."""
    text = _ANSI.sub("", str(e))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    line = lines[0].split("  (Could this error message be improved?")[0].strip() if lines else ""
    if not line:
        line = type(e).__name__ if isinstance(e, BaseException) else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
