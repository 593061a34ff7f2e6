"""Defences against hostile or broken input that do not belong to one format.

- :func:`escape` — control characters in text quoted from an input file (a cfg section name
  holding ESC sequences, a file name with a newline) are shown as ``\\x1b``-style escapes,
  never sent raw to a terminal. The CLI's error printer and the renderers call it.
- Temporary files and signals — :func:`register_temp` / :func:`unregister_temp` keep the list
  of half-written outputs; :func:`install_signal_handlers` makes SIGTERM/SIGINT remove them
  and exit with 128 + the signal number (at start-up: one line, no traceback).
- :func:`link_exclusive` — put a finished temporary file at its final name only if no file
  has that name (``link(2)`` semantics), so of two racing writers the second gets the usual
  "exists, pass --force" refusal instead of silently replacing the first.
- Sizes — :func:`available_memory`, :func:`check_memory` (refuse with the amount it would
  need before allocating), :func:`module_nbytes`, :func:`forward_nbytes` (a lower bound of
  what a real forward at a given input shape needs, measured on the meta device) and
  :func:`check_shape` (refuse absurd dimensions before they reach torch).
- :func:`nonfinite` — names of tensors holding NaN/Inf (fold/verify say where).
- :func:`check_finite_nonneg` — tolerances such as ``--rtol``: finite and >= 0.

This module imports no torch at module level: ``cli.py`` uses it at start-up.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Iterable

from surgery.core.errors import SurgeryError

# ------------------------------------------------------------------------ escaping

# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text
# (bidi overrides/isolates, zero-width joiners are harmless; these are not), line/paragraph
# separators, and lone surrogates (from surrogateescape-decoded bytes).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _esc(m: re.Match) -> str:
    c = ord(m.group(0))
    if 0xDC80 <= c <= 0xDCFF:  # a byte kept by surrogateescape: show the byte
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: object) -> str:
    """``text`` with every control character written as a visible escape (``\\x1b``,
    ``\\n``-as-``\\x0a``...), safe to print on one terminal line."""
    text = _CONTROL.sub(_esc, str(text))
    # anything else a terminal would not print as itself (private-use, unassigned, format
    # characters): str.isprintable is the test the CLI contract uses
    if not text.isprintable():
        text = "".join(c if c.isprintable() else (f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
                       for c in text)
    return text


# ------------------------------------------------------------------------ temp files, signals

_TEMPS: set[str] = set()
_LOCK = threading.Lock()
_RAISE = False  # False during start-up: a signal prints one line and exits at once
_OWNER_PID = -1  # the process that installed the handlers (forked children keep them)


class Interrupted(BaseException):
    """SIGTERM/SIGINT while a command runs; ``cli.main`` turns it into exit 128 + signum.
    A BaseException so that ``except Exception`` in library code does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def register_temp(path: str | os.PathLike) -> None:
    with _LOCK:
        _TEMPS.add(os.fspath(path))


def unregister_temp(path: str | os.PathLike) -> None:
    with _LOCK:
        _TEMPS.discard(os.fspath(path))


def remove_temps() -> list[str]:
    """Delete every registered temporary file; returns the ones removed."""
    with _LOCK:
        temps = list(_TEMPS)
        _TEMPS.clear()
    removed = []
    for t in temps:
        try:
            os.unlink(t)
            removed.append(t)
        except OSError:
            pass
    return removed


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum, frame):
    if os.getpid() != _OWNER_PID:  # a forked child (DataLoader worker): the default behaviour
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    removed = remove_temps()
    if _RAISE:
        raise Interrupted(signum)
    # start-up (imports): nothing to unwind; one line, no traceback (SystemExit prints none)
    note = f"; removed {len(removed)} partial file(s)" if removed else ""
    with _suppress_os_errors():
        sys.stderr.write(f"surgery: interrupted ({_signal_name(signum)}){note}\n")
        sys.stderr.flush()
    raise SystemExit(128 + signum)


class _suppress_os_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


def install_signal_handlers(*, running: bool) -> dict:
    """SIGINT and SIGTERM remove the registered temporary files. ``running=False`` (start-up):
    then print one line and exit with 128 + signum; ``running=True``: raise
    :class:`Interrupted` so that ``finally`` blocks run and ``cli.main`` prints one line.
    Returns the previous handlers (for :func:`restore_signal_handlers`)."""
    global _RAISE, _OWNER_PID
    _RAISE = running
    _OWNER_PID = os.getpid()
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, _handler)
    return previous


def restore_signal_handlers(previous: dict) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, h in previous.items():
        signal.signal(sig, h if h is not None else signal.SIG_DFL)


_HINT: list[str] = []  # what to do next after an interruption (a training run: how to resume it)


def set_hint(text: str) -> None:
    _HINT[:] = [text]


def interrupted_message(signum: int | None) -> str:
    what = f"interrupted ({_signal_name(signum)})" if signum is not None else "interrupted"
    return f"{what}; partial outputs removed" + (f"; {_HINT[0]}" if _HINT else "")


# ------------------------------------------------------------------------ sizes

MAX_DIM = 2**31 - 1  # torch kernels index with int32 in places; no real input dimension is larger


def fmt_bytes(n: float) -> str:
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} bytes"


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                left = int(limit) - int(Path(usage_file).read_text().strip())
                avail = left if avail is None else min(avail, left)
            break
        except (OSError, ValueError):
            continue
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    return max(0, avail)


def check_memory(nbytes: int, what: str, hint: str = "") -> None:
    """Refuse (SurgeryError) when ``nbytes`` exceeds the memory available, saying how much."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise SurgeryError(f"{what} would need {fmt_bytes(nbytes)} of memory but {fmt_bytes(avail)} is available"
                           + (f"; {hint}" if hint else ""))


def check_shape(shape: Iterable[int], what: str) -> tuple[int, ...]:
    """Every dimension a positive integer no larger than :data:`MAX_DIM`."""
    dims = tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise SurgeryError(f"{what}: dimension {d!r} is not an integer")
        if d <= 0:
            raise SurgeryError(f"{what}: dimension {d} must be a positive integer")
        if d > MAX_DIM:
            raise SurgeryError(f"{what}: dimension {d} is larger than {MAX_DIM}; no input is that large")
    return dims


def module_nbytes(module) -> int:
    """Bytes of a module's parameters and buffers (works on the meta device)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def forward_nbytes(module, input_shape, *, batch: int = 1, dtype=None) -> int | None:
    """A lower bound of the memory a real forward at ``(batch, *input_shape)`` needs: the
    weights plus, at the busiest leaf module, its inputs and its output — measured by a
    forward on a meta-device copy (no memory, no compute). None when the module cannot run
    on meta (TorchScript, some exported programs)."""
    import torch

    from surgery.core.graph import meta_copy

    dtype = dtype or torch.float32
    x_bytes = math.prod((batch, *input_shape)) * torch.empty((), dtype=dtype).element_size()
    peak = [x_bytes]

    def nbytes(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, (list, tuple)):
            return sum(nbytes(o) for o in obj)
        if isinstance(obj, dict):
            return sum(nbytes(o) for o in obj.values())
        return 0

    def hook(mod, args, out):
        peak[0] = max(peak[0], nbytes(args) + nbytes(out))

    try:
        m = meta_copy(module, dtype)
        handles = [sub.register_forward_hook(hook) for sub in m.modules() if not list(sub.children())]
        try:
            with torch.no_grad():
                m(torch.empty((batch, *input_shape), dtype=dtype, device="meta"))
        finally:
            for h in handles:
                h.remove()
    except Exception:  # not runnable on meta: no estimate (the caller goes ahead)
        return None
    return module_nbytes(module) + peak[0]


def check_forward_memory(module, input_shape, *, batch: int = 1, dtype=None, what: str = "a forward pass",
                         copies: int = 1) -> None:
    """Refuse a real forward at ``input_shape`` that cannot fit, with the estimate.
    ``copies``: how many such forwards are alive at once (a reference and a candidate)."""
    need = forward_nbytes(module, input_shape, batch=batch, dtype=dtype)
    if need is not None:
        shape = "x".join(str(d) for d in input_shape)
        check_memory(need * copies, f"{what} at input {shape} (batch {batch})",
                     "pass a smaller --input")


# ------------------------------------------------------------------------ values


def nonfinite(module) -> list[str]:
    """Names of parameters/buffers holding NaN or Inf."""
    import torch

    bad = []
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite_nonneg(value: float, what: str) -> float:
    """A tolerance: a finite number >= 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SurgeryError(f"{what}={value!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise SurgeryError(f"{what}={value} must be a finite number >= 0, e.g. 1e-4")
    return v
