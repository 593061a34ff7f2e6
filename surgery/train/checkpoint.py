"""Resumable run directories with pickle-free checkpoints.

A run directory holds::

    RUN/.surgery-run  marker: a run directory of surgery (``--force`` removes nothing else)
    RUN/config.json   what was asked (written once, when training starts): training options
                      and the sha256 of the files it read — data, never trust (``--resume``
                      restores the options alone; see ``cli_commands/training_options.resumed``)
    RUN/state.pt      the training state after the last finished epoch (rewritten atomically)
    RUN/log.jsonl     one JSON line per finished epoch (loss terms, held-out metrics)

``state.pt`` is a plain dict of tensors, numbers, strings and lists, loadable with
``torch.load(..., weights_only=True)``: model and optimizer state_dicts, the LR scheduler's
state_dict, the step, the steps per epoch, the RNG states (torch CPU, and CUDA when used) and,
inside an epoch, its loss sums so far. The sampler position follows from the step (epoch =
step // steps per epoch, the samples taken in it from the rest); data augmentation draws from
generators seeded by (seed, epoch, sample), so it needs no saved state either.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from surgery.core import files
from surgery.core.errors import SurgeryError
from surgery.core.files import atomic_write

RUN_FORMAT = "surgery-run"
RUN_VERSION = 1
CONFIG, STATE, LOG, MARKER = "config.json", "state.pt", "log.jsonl", ".surgery-run"


def _overlap(run: Path, inputs: Iterable[str | Path]) -> str | None:
    """Why ``run`` may not be (re)made given the inputs: it is one, holds one, or lies inside
    an input folder (a data set). None when it touches none of them."""
    try:
        r = run.resolve()
    except OSError:
        return None
    for i in inputs:
        if not i or str(i).startswith(("zoo:", "py:")):
            continue
        try:
            q = Path(i).resolve()
        except OSError:
            continue
        if q == r:
            return f"is the input {str(i)!r}"
        if q.is_relative_to(r):
            return f"holds the input {str(i)!r}"
        if r.is_relative_to(q):
            return f"lies inside the input folder {str(i)!r}"
    return None


def check_new(path: str | Path, *, force: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse to start a run in ``path`` when it is, holds or lies inside any input (models,
    teacher, data, weights — and every file the loader read), when it exists without
    ``force``, and when ``force`` would remove a directory that is not a run directory of
    surgery (it has no marker file)."""
    p = Path(path)
    read, _ = files.read_inputs()
    why = _overlap(p, [*inputs, *read])
    if why:
        raise SurgeryError(f"run directory {str(p)!r} {why}; choose another --run-dir (surgery never removes or "
                           f"writes into its inputs)")
    if p.exists() and not p.is_dir():
        raise SurgeryError(f"run directory {str(p)!r} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not force:
            raise SurgeryError(f"run directory {str(p)!r} exists; continue it with --resume {p}, or pass --force to "
                               "start again")
        if not (p / MARKER).is_file():
            raise SurgeryError(f"{str(p)!r} is not a run directory of surgery (no {MARKER} inside), so --force will "
                               f"not remove it; choose another --run-dir or remove it yourself")
    if not p.parent.resolve().is_dir():
        raise SurgeryError(f"parent of run directory {str(p)!r} does not exist")
    return p


def create(path: str | Path, config: Mapping[str, Any], *, force: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Make the run directory with its config and marker (atomically: a temporary sibling
    renamed); an old run directory is replaced only under :func:`check_new`'s rules."""
    p = check_new(path, force=force, inputs=inputs)
    tmp = p.parent / f".{p.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / MARKER).write_text("a run directory of surgery: `surgery ... --resume DIR` continues it\n")
        (tmp / CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p


def discard_unstarted(path: str | Path) -> None:
    """Remove a run directory this invocation made when the run failed before its first saved
    state (a refused device, an unreadable data set): the next run must not find it."""
    p = Path(path)
    if p.is_dir() and (p / MARKER).is_file() and not (p / STATE).exists():
        shutil.rmtree(p, ignore_errors=True)


def read_config(path: str | Path) -> dict:
    p = Path(path)
    if not (p / CONFIG).is_file():
        raise SurgeryError(f"{str(p)!r} is not a run directory (no {CONFIG}); give the folder a previous run wrote")
    try:
        config = json.loads((p / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise SurgeryError(f"{p / CONFIG}: not valid JSON ({type(e).__name__}); the run directory is damaged") from None
    except OSError as e:
        raise SurgeryError(f"{p / CONFIG}: cannot be read ({e.strerror or e})") from None
    if not isinstance(config, dict):
        raise SurgeryError(f"{p / CONFIG}: holds a JSON {type(config).__name__}, not the object surgery writes; the run "
                           f"directory is damaged")
    return config


def save_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    out = Path(path) / STATE
    blob = {"format": RUN_FORMAT, "format_version": RUN_VERSION, **state}
    return atomic_write([out], lambda tmps: torch.save(blob, tmps[0]), force=True)[0]


def load_state(path: str | Path) -> dict | None:
    """The saved training state, or None when the run has not finished an epoch yet."""
    f = Path(path) / STATE
    if not f.exists():
        return None
    try:
        state = torch.load(str(f), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise SurgeryError(f"{f}: not a readable training state ({type(e).__name__}); the run directory is damaged") from None
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise SurgeryError(f"{f}: not a surgery training state")
    if state.get("format_version") != RUN_VERSION:
        raise SurgeryError(f"{f}: training state version {state.get('format_version')} is not supported")
    return state


def write_log(path: str | Path, history) -> None:
    """Rewrite the log from the state's history (so it always agrees with ``state.pt``)."""
    text = "".join(json.dumps(dict(r)) + "\n" for r in history)
    atomic_write([Path(path) / LOG], lambda tmps: tmps[0].write_text(text), force=True)


def rng_state(device: str) -> dict:
    out = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: Mapping, device: str) -> None:
    torch.set_rng_state(state["torch"])
    if device.startswith("cuda") and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
