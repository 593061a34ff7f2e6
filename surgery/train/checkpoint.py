"""Resumable run directories with pickle-free checkpoints.

A run directory holds::

    RUN/config.json   what was asked (written once, when training starts)
    RUN/state.pt      the training state after the last finished epoch (rewritten atomically)
    RUN/log.jsonl     one JSON line per finished epoch (loss terms, held-out metrics)

``state.pt`` is a plain dict of tensors, numbers, strings and lists, loadable with
``torch.load(..., weights_only=True)``: model and optimizer state_dicts, the LR scheduler's
state_dict, the step and epoch, the RNG states (torch CPU, and CUDA when used) and the
sampler position (epoch, samples already taken in it). Data augmentation draws from
generators seeded by (seed, epoch, sample), so it needs no saved state.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from surgery.core.errors import SurgeryError
from surgery.core.io import atomic_write

RUN_FORMAT = "surgery-run"
RUN_VERSION = 1
CONFIG, STATE, LOG = "config.json", "state.pt", "log.jsonl"


def check_new(path: str | Path, *, force: bool) -> Path:
    """Refuse to start a run in an existing run directory without ``force``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SurgeryError(f"run directory {str(p)!r} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not force:
        raise SurgeryError(f"run directory {str(p)!r} exists; continue it with --resume {p}, or pass --force to "
                           "start again")
    if not p.parent.resolve().is_dir():
        raise SurgeryError(f"parent of run directory {str(p)!r} does not exist")
    return p


def create(path: str | Path, config: Mapping[str, Any], *, force: bool) -> Path:
    """Make the run directory with its config (atomically: a temporary sibling renamed)."""
    p = check_new(path, force=force)
    tmp = p.parent / f".{p.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return p


def read_config(path: str | Path) -> dict:
    p = Path(path)
    if not (p / CONFIG).is_file():
        raise SurgeryError(f"{str(p)!r} is not a run directory (no {CONFIG}); give the folder a previous heal wrote")
    try:
        return json.loads((p / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise SurgeryError(f"{p / CONFIG}: not valid JSON ({e}); the run directory is damaged") from None


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
