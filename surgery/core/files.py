"""Files: what a command reads and what it writes — the leaf of the core that every layer
writing a file uses (checkpoints, Darknet cfg/weights, ONNX, plots, run directories).

- **inputs**: :func:`existing` (a readable file, one-line errors), :func:`sha256`, and the
  process's record of every file it read (:func:`track_inputs`, :func:`note_input`,
  :func:`read_inputs`), so no output can name one of them;
- **outputs**: :func:`check_outputs` (never an input, with or without ``force``; never an
  existing file without ``force``; a writable place) and :func:`atomic_write` (temporary files
  beside the outputs, renamed into place all or nothing; :func:`link_exclusive` without
  ``force``, so a racing writer gets "exists" instead of a silent replace).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from surgery.core import safety
from surgery.core.errors import SurgeryError

# ---------------------------------------------------------------- inputs of this process

_READ_PATHS: set[Path] = set()
_READ_INODES: set[tuple[int, int]] = set()
_TRACKING = False


def track_inputs(on: bool = True) -> None:
    """Record every model file read (``surgery.core.io.load``) as an input of this process;
    the CLI turns this on (one process, one command), so no output of the command can name
    any file it read — implicit ones included (a same-stem .weights, --weights, --arch)."""
    global _TRACKING
    _TRACKING = on
    if not on:
        _READ_PATHS.clear()
        _READ_INODES.clear()


def note_input(path: str | os.PathLike) -> None:
    if not _TRACKING:
        return
    p = Path(path)
    try:
        st = p.stat()
        _READ_PATHS.add(p.resolve())
    except (OSError, RuntimeError):
        return
    _READ_INODES.add((st.st_dev, st.st_ino))


def read_inputs() -> tuple[set[Path], set[tuple[int, int]]]:
    return set(_READ_PATHS), set(_READ_INODES)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def existing(path: str | Path, what: str = "model file") -> Path:
    p = Path(path)
    try:
        if not p.exists():
            raise SurgeryError(f"{what} {str(p)!r} does not exist")
        if p.is_dir():
            raise SurgeryError(f"{what} {str(p)!r} is a directory, not a file")
    except OSError as e:  # a name too long, a loop of links...
        raise SurgeryError(f"{what} {str(p)!r} cannot be read ({e.strerror or e})") from None
    note_input(p)
    return p


# ---------------------------------------------------------------- outputs


def link_exclusive(tmp: Path, out: Path) -> None:
    """Give ``tmp`` the name ``out`` only if ``out`` does not exist (atomic: ``link(2)``
    fails with EEXIST), then drop the temporary name. Raises :class:`FileExistsError` when
    another writer got there first. Filesystems without hard links get an ``O_EXCL``
    placeholder that is then replaced by the finished file."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
            raise
        fd = os.open(out, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # FileExistsError if taken
        os.close(fd)
        os.replace(tmp, out)
        return
    os.unlink(tmp)


def _implicit_inputs(p: Path) -> list[Path]:
    """Files a reference reads besides itself: a cfg's same-stem ``.weights``."""
    return [p.with_suffix(".weights")] if p.suffix.lower() == ".cfg" else []


def _same_file(out: Path, ins: set[Path], inodes: set[tuple[int, int]]) -> bool:
    try:
        if out.resolve() in ins:
            return True
        st = out.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in inodes


def check_outputs(paths: Iterable[str | Path], *, force: bool, inputs: Iterable[str | Path] = ()) -> list[Path]:
    """Refuse outputs that would overwrite an input (always, ``force`` or not) or an existing
    file (without ``force``), or that cannot be written (no such directory, a file where a
    directory should be, a read-only place). Inputs are the given ones, their implicit
    companions (a cfg's same-stem ``.weights``) and every file :func:`load` has read."""
    outs = [Path(p) for p in paths]
    given = [Path(p) for p in inputs if p and not str(p).startswith("zoo:")]
    given += [q for p in given for q in _implicit_inputs(p)]
    read_paths, inodes = read_inputs()
    ins = {p.resolve() for p in given} | read_paths
    for p in given:
        with contextlib.suppress(OSError):
            st = p.stat()
            inodes.add((st.st_dev, st.st_ino))
    seen: set[Path] = set()
    for out in outs:
        shown = repr(str(out))
        if str(out).startswith("zoo:"):
            raise SurgeryError(f"output {shown} is a zoo reference, not a file name; give a path like model.pt")
        if _same_file(out, ins, inodes):
            raise SurgeryError(f"output {shown} is also an input; surgery never overwrites its inputs (not even with --force)")
        if out.resolve() in seen:
            raise SurgeryError(f"output {shown} is named twice; give each output its own name")
        seen.add(out.resolve())
        try:
            exists, is_dir = out.exists(), out.is_dir()
            parent = out.parent
            parent_ok, parent_dir = parent.exists(), parent.is_dir()
        except OSError as e:
            raise SurgeryError(f"output {shown} cannot be written ({e.strerror or e})") from None
        if is_dir:
            raise SurgeryError(f"output {shown} is a directory")
        if exists and not force:
            raise SurgeryError(f"output {shown} exists; pass --force to overwrite it")
        if not parent_ok:
            raise SurgeryError(f"output directory {str(parent)!r} does not exist")
        if not parent_dir:
            raise SurgeryError(f"output {shown}: {str(parent)!r} is a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SurgeryError(f"output {shown}: the directory {str(parent)!r} is not writable")
    return outs


def _write_error(out: Path, e: OSError) -> SurgeryError:
    why = e.strerror or str(e)
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why += " (a read-only or protected place; write somewhere else)"
    elif e.errno == errno.ENOSPC:
        why += " (free some space or write elsewhere)"
    return SurgeryError(f"cannot write output {str(out)!r}: {why}; nothing was written")


def atomic_write(
    paths: Iterable[str | Path],
    writer: Callable[[list[Path]], None],
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
) -> list[Path]:
    """Call ``writer`` with temporary paths beside each output, then move them all into place.

    If the writer fails (or SIGTERM/SIGINT arrives), nothing is left behind: the temporary
    files are removed. Without ``force`` each final name is created exclusively, so a second
    process racing for the same name gets "exists; pass --force" instead of replacing the
    first one's file. Outputs never name an input (:func:`check_outputs`). An atomic_write
    called from inside another one's ``writer`` (a Darknet cfg's tree file, placed so the cfg
    can be read back) joins it: its outputs are taken back too if the enclosing write fails.
    """
    outs = check_outputs(paths, force=force, inputs=inputs)
    tmps: list[Path] = []
    placed: list[Path] = []
    joined: list[tuple[Path, bool]] = []  # what atomic_writes inside `writer` placed: it stands or falls with ours
    try:
        for out in outs:
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            except OSError as e:
                raise _write_error(out, e) from None
            safety.register_temp(tmp)
            os.close(fd)
            tmps.append(Path(tmp))
        _ENCLOSING.append(joined)
        try:
            writer(tmps)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG):
                raise _write_error(outs[0], e) from None
            raise
        finally:
            _ENCLOSING.pop()
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual permissions
        for tmp, out in zip(tmps, outs):
            os.chmod(tmp, mode)
        # inputs may have been read after the first check (a --weights file): check again
        check_outputs(outs, force=force, inputs=inputs)
        for tmp, out in zip(tmps, outs):
            try:
                if force:
                    os.replace(tmp, out)
                else:
                    link_exclusive(tmp, out)
            except FileExistsError:
                raise SurgeryError(f"output {str(out)!r} exists (another process wrote it meanwhile); "
                                   f"pass --force to overwrite it") from None
            except OSError as e:
                raise _write_error(out, e) from None
            placed.append(out)
    except BaseException:
        for out, forced in [*((o, force) for o in placed), *joined]:  # all or nothing: take back the names created
            if not forced:
                out.unlink(missing_ok=True)
        raise
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
            safety.unregister_temp(tmp)
    if _ENCLOSING:  # called from another atomic_write's writer (a Darknet cfg's tree file): taken back if it fails
        _ENCLOSING[-1].extend([*((o, force) for o in outs), *joined])
    return outs


# One list per atomic_write whose writer is running: the outputs nested atomic_writes placed meanwhile.
_ENCLOSING: list[list[tuple[Path, bool]]] = []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
