"""The checkpoint format: a plain dict loadable with ``torch.load(..., weights_only=True)`` —
format version, arch spec, recipe, input shape, state_dict, content hashes, metadata — written
atomically (:func:`save`) and read back pickle-free (:func:`from_checkpoint`: rebuild the arch,
replay the recipe structurally, load the weights strictly)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

import torch

from surgery.core import pyref, safety
from surgery.core.build import first_line, load_state_strict, structure
from surgery.core.errors import SurgeryError
from surgery.core.files import atomic_write, check_outputs
from surgery.core.net import ArchSpec, Net, Step
from surgery.core.recipe import rebuild
from surgery.core.version import __version__

CHECKPOINT_FORMAT = "surgery-checkpoint"


CHECKPOINT_VERSION = 1


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and bytes (in name order): what a
    checkpoint records at save and :func:`load` checks, so flipped bytes are caught."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}\0{str(t.dtype)}\0{list(t.shape)}\0".encode())
        if t.numel():
            flat = t.reshape(-1).contiguous().cpu()
            h.update(flat.view(torch.uint8).numpy() if flat.element_size() > 0 else b"")
    return h.hexdigest()


def content_hash(arch, recipe, input_shape, weights_sha256: str) -> str:
    """sha256 over everything a checkpoint rebuilds from: the arch spec (which may name code),
    the recipe, the input shape and the weights (:func:`state_hash`). An edited arch is a
    tampered file. (A hash is no signature: whoever edits the file can recompute it; what
    keeps a file from running code is the naming rule of :mod:`surgery.core.pyref`.)"""
    import json

    head = json.dumps({"arch": _jsonable(arch), "recipe": _jsonable(recipe), "input_shape": list(input_shape)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{head}\0{weights_sha256}".encode()).hexdigest()


def from_checkpoint(path: Path, ckpt: Mapping, meta: dict) -> Net:
    version = ckpt.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise SurgeryError(f"{path}: checkpoint format version {version} is not supported (this surgery reads {CHECKPOINT_VERSION})")
    for key in ("arch", "recipe", "input_shape", "state_dict"):
        if key not in ckpt:
            raise SurgeryError(f"{path}: checkpoint lacks {key!r}; the file is damaged or was not written by surgery")
    state = ckpt["state_dict"]
    if not (isinstance(state, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in state.items())):
        raise SurgeryError(f"{path}: the checkpoint's state_dict is not a mapping of names to tensors; the file is damaged")
    shape = ckpt["input_shape"]
    if not (isinstance(shape, (list, tuple)) and shape and all(type(d) is int for d in shape)):
        raise SurgeryError(f"{path}: the checkpoint's input_shape {shape!r} is not a list of integers; the file is damaged")
    shape = safety.check_shape(shape, f"{path}: the checkpoint's input_shape")
    recorded, weights_sha256 = ckpt.get("state_dict_sha256"), state_hash(state)
    if recorded is not None and recorded != weights_sha256:
        raise SurgeryError(f"{path}: its weights do not match the content hash recorded when it was saved; "
                           f"the file is damaged or was edited (restore it from a good copy)")
    content = ckpt.get("content_sha256")
    if content is not None and content != content_hash(ckpt["arch"], ckpt["recipe"], shape, weights_sha256):
        raise SurgeryError(f"{path}: its architecture, recipe or weights do not match the content hash recorded when "
                           f"it was saved; the file is damaged or was edited (restore it from a good copy)")
    try:
        arch = ArchSpec.from_dict(ckpt["arch"])
        recipe = tuple(Step.from_dict(s) for s in ckpt["recipe"])
        module = structure(lambda: rebuild(arch, recipe))
    except pyref.CodeNotNamed as e:
        raise SurgeryError(f"{path} {e}") from None
    except SurgeryError as e:
        raise SurgeryError(f"{path}: {e}") from None
    except Exception as e:  # untrusted data: a damaged arch/recipe fails in many ways
        raise SurgeryError(f"{path}: the checkpoint's arch/recipe cannot be rebuilt ({type(e).__name__}: "
                           f"{first_line(e)}); the file is damaged or was written by another version") from None
    load_state_strict(module, state, path)
    module.eval()
    metadata = dict(ckpt.get("metadata", {})) if isinstance(ckpt.get("metadata", {}), Mapping) else {}
    metadata["sources"] = {**dict(metadata.get("sources", {}) if isinstance(metadata.get("sources"), Mapping) else {}),
                           **meta["sources"]}
    return Net(module, arch, shape, recipe, source=str(path), format="checkpoint", metadata=metadata)


def checkpoint_dict(net: Net, extra_metadata: Mapping | None = None) -> dict:
    net.require_editable("save as a checkpoint")
    state = {k: v.detach().cpu().contiguous() for k, v in net.module.state_dict().items()}
    metadata = {**dict(net.metadata), **dict(extra_metadata or {}), "tool_version": __version__}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": net.arch.to_dict(),
        "recipe": [s.to_dict() for s in net.recipe],
        "input_shape": list(net.input_shape),
        "state_dict": state,
        "state_dict_sha256": state_hash(state),
        "metadata": _jsonable(metadata),
    }
    ckpt["content_sha256"] = content_hash(ckpt["arch"], ckpt["recipe"], ckpt["input_shape"], ckpt["state_dict_sha256"])
    return ckpt


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def save(net: Net, path: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write ``net`` as a pickle-free checkpoint, atomically (named ``.pt`` or ``.pth``)."""
    inputs = [*inputs, *dict(net.metadata.get("sources", {}))]  # the files the net was read from
    check_outputs([path], force=force, inputs=inputs)  # an input named as output is the first thing to say
    check_checkpoint_name(path)
    ckpt = checkpoint_dict(net)
    return atomic_write([path], lambda tmps: torch.save(ckpt, tmps[0]), force=force, inputs=inputs)[0]


def check_checkpoint_name(path: str | Path) -> None:
    """A checkpoint is a ``.pt`` (or ``.pth``) file: refuse another name, e.g. ``-o out.onnx``
    (that is ``--onnx``), before anything is written."""
    if Path(path).suffix.lower() not in (".pt", ".pth"):
        raise SurgeryError(f"{path}: a surgery checkpoint is a .pt file; give a path ending in .pt "
                           f"(ONNX and Darknet files have their own options: --onnx, --darknet)")
