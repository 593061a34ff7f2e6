"""The project's one error type for bad input.

Anything a user can get wrong (a missing file, a truncated ``.weights``, an unknown layer,
mismatched architectures) raises :class:`SurgeryError` with a message that names the
file/layer and says what to do. ``cli.py`` prints the message as one line on stderr and
exits with code 2; a traceback only with ``SURGERY_DEBUG=1``.
"""

from __future__ import annotations

import difflib


class SurgeryError(Exception):
    """Bad input: the message is shown to the user verbatim (one line)."""


def suggest(name: str, choices, n: int = 3) -> str:
    """`` (did you mean: a, b?)`` for close matches of ``name`` in ``choices``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
