"""Writing a dataset folder the way every output is written: refused if it would replace a
non-empty folder without ``force``, built in a temporary sibling folder and renamed into place,
so a failure (or Ctrl-C) half-way leaves nothing behind. Shared by the dataset writers."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from surgery.core.errors import SurgeryError

MARKER = ".surgery-data"  # inside every folder `surgery data` writes: --force replaces nothing else


def check_new_folder(out_dir: str | Path, *, force: bool = False) -> Path:
    """``out_dir`` as a Path once it may be written: not a file, empty or absent (or ``force``
    when surgery wrote it: its marker file), inside an existing folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SurgeryError(f"output {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise SurgeryError(f"output directory {str(out)!r} exists and is not empty; pass --force to replace it")
        if not (out / MARKER).is_file():
            raise SurgeryError(f"output directory {str(out)!r} was not written by `surgery data` (no {MARKER} inside), "
                               f"so --force will not replace it; choose another folder or remove it yourself")
    if not out.parent.resolve().is_dir():
        raise SurgeryError(f"output directory {str(out.parent)!r} does not exist")
    return out


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; when the block ends without an error it
    replaces ``out`` (with the usual umask permissions, not mkdtemp's 0700); else it is removed."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise SurgeryError(f"output directory {str(out)!r} cannot be written ({e.strerror or e}); choose a writable "
                           f"place") from None
    try:
        yield tmp
        (tmp / MARKER).write_text("a data folder written by `surgery data`; --force may replace it\n")
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
