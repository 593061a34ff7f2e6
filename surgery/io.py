"""Load and save every model format; the pickle gate; atomic output writes.

References (DESIGN.md contracts):
- ``zoo:NAME[:k=v,...]`` — a zoo architecture, initialised from a fixed seed;
- ``FILE.cfg`` — Darknet, with a same-stem ``.weights`` or ``weights=``;
- ``FILE.pt``/``.pth`` — surgery checkpoint, bare state_dict (needs ``arch=``), TorchScript
  archive (analysis only), or a whole pickled module (refused unless ``trust_pickle``);
- ``FILE.pt2`` — a torch.export ExportedProgram (analysis only).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

import surgery
from surgery.errors import SurgeryError
from surgery.net import ArchSpec, Net, Step
from surgery.recipe import rebuild

CHECKPOINT_FORMAT = "surgery-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_SEED = 0

# ---------------------------------------------------------------------------- references


def parse_zoo_ref(ref: str) -> tuple[str, dict[str, str]]:
    """``zoo:NAME[:k=v,k=v]`` -> (NAME, {k: v}). Values may contain commas (anchors)."""
    body = ref[len("zoo:"):]
    name, _, args = body.partition(":")
    kwargs: dict[str, str] = {}
    if args:
        # split on commas that start a new key=... so "anchors=10,13,16,30" stays whole
        for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", args):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise SurgeryError(f"bad zoo argument {part!r} in {ref!r}; write zoo:NAME:key=value,key=value")
            kwargs[key.strip()] = value.strip()
    if not name:
        raise SurgeryError(f"bad zoo reference {ref!r}; write zoo:NAME, e.g. zoo:resnet50")
    return name, kwargs


def _zoo_arch(name: str, kwargs: Mapping) -> tuple[ArchSpec, tuple[int, ...]]:
    from zoo import registry

    entry = registry.get(name)
    full = entry.resolve_kwargs(dict(kwargs))
    # keep only what differs from the defaults, so the spec reads like what the user asked
    defaults = entry.defaults()
    given = {k: v for k, v in full.items() if k in kwargs or v != defaults.get(k)}
    return ArchSpec("zoo", name, given), entry.shape_for(full)


def build_zoo(name: str, kwargs: Mapping | None = None, *, seed: int = DEFAULT_SEED) -> Net:
    arch, shape = _zoo_arch(name, kwargs or {})
    with seeded(seed):
        module = arch.build()
    module.eval()
    return Net(module, arch, shape, source=arch.describe(), format="zoo", metadata={"seed": seed})


@contextlib.contextmanager
def seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _existing(path: str | Path, what: str = "model file") -> Path:
    p = Path(path)
    if not p.exists():
        raise SurgeryError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise SurgeryError(f"{what} {str(p)!r} is a directory, not a file")
    return p


def load(
    ref: str,
    *,
    arch: str | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> Net:
    """Load a model reference into a :class:`Net` (eval mode)."""
    ref = str(ref)
    if ref.startswith("zoo:"):
        name, kwargs = parse_zoo_ref(ref)
        net = build_zoo(name, kwargs)
    else:
        path = _existing(ref)
        suffix = path.suffix.lower()
        if suffix == ".cfg":
            net = _load_darknet(path, weights)
        elif suffix == ".weights":
            raise SurgeryError(f"{ref}: a .weights file needs its cfg; pass the .cfg (with --weights {ref} if the stems differ)")
        elif suffix == ".pt2":
            net = _load_exported(path)
        elif suffix == ".onnx":
            raise SurgeryError(f"{ref}: ONNX files are outputs of surgery (--onnx); load the .pt or .cfg it came from")
        else:
            net = _load_torch_file(path, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape)
    if input_shape is not None:
        net = net.evolve(net.module, input_shape=tuple(input_shape))
    if net.format != "exported":  # an ExportedProgram's module is already fixed to its traced mode
        net.module.eval()
    return net


def _load_darknet(path: Path, weights: str | None) -> Net:
    from zoo.darknet import build_darknet, read_weights

    text = path.read_text()
    module = build_darknet(text, source=str(path))
    sources = {str(path): sha256(path)}
    wpath = Path(weights) if weights else path.with_suffix(".weights")
    if weights:
        _existing(wpath, "weights file")
    if wpath.exists():
        read_weights(module, wpath)
        sources[str(wpath)] = sha256(wpath)
    arch = ArchSpec("darknet", path.name, {}, cfg=text)
    meta = {"sources": sources, "weights": str(wpath) if wpath.exists() else None}
    return Net(module, arch, tuple(module.input_shape), source=str(path), format="darknet", metadata=meta)


def _load_exported(path: Path) -> Net:
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a bad archive
        raise SurgeryError(f"{path}: not a readable torch.export .pt2 archive ({type(e).__name__}: {e})") from None
    args = ep.example_inputs[0] if ep.example_inputs else ()
    shape = tuple(args[0].shape[1:]) if args else ()
    if not shape:
        raise SurgeryError(f"{path}: the ExportedProgram records no example input; pass --input CxHxW")
    meta = {"sources": {str(path): sha256(path)}}
    return Net(ep.module(), None, shape, source=str(path), format="exported", metadata=meta)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _load_torch_file(path: Path, *, arch: str | None, trust_pickle: bool, input_shape=None) -> Net:
    meta = {"sources": {str(path): sha256(path)}}
    if _is_torchscript(path):
        module = torch.jit.load(str(path), map_location="cpu")
        shape = input_shape or (_shape_from_arch(arch) if arch else None)
        if shape is None:
            raise SurgeryError(f"{path} is a TorchScript archive and records no input shape; pass --input CxHxW")
        return Net(module, None, shape, source=str(path), format="torchscript", metadata=meta)
    try:
        # mmap: tensors stay in the page cache instead of a second private copy (weights_only
        # still refuses any pickled code).
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise SurgeryError(
                f"{path} holds pickled Python objects (a whole module), which run arbitrary code when loaded; "
                f"refused. Re-run with --trust-pickle if you trust its source, or save its state_dict and pass --arch"
            ) from None
        return _load_pickled_module(path, arch, meta, input_shape)
    except Exception as e:  # torch.load raises many types (IndexError, RuntimeError...) on a damaged file
        raise SurgeryError(f"{path}: not a readable PyTorch file ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, obj, meta)
    state = _find_state_dict(obj)
    if state is None:
        raise SurgeryError(f"{path}: neither a surgery checkpoint nor a state_dict (found {type(obj).__name__})")
    if not arch:
        raise SurgeryError(f"{path} is a bare state_dict; pass --arch (zoo:NAME[:k=v] or a Darknet .cfg) to say what it is")
    net = load(arch)
    net.require_editable("load a state_dict into")
    _load_state_strict(net.module, state, path)
    return Net(net.module, net.arch, net.input_shape, net.recipe, source=str(path), format="state_dict",
               metadata={**meta, "arch": arch})


def _load_pickled_module(path: Path, arch: str | None, meta: dict, input_shape=None) -> Net:
    obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise SurgeryError(f"{path}: trusted pickle holds a {type(obj).__name__}, not an nn.Module")
    shape = input_shape or (_shape_from_arch(arch) if arch else getattr(obj, "input_shape", None))
    if not shape:
        raise SurgeryError(f"{path}: a pickled module records no input shape; pass --input CxHxW")
    return Net(obj, None, tuple(shape), source=str(path), format="pickle", metadata=meta)


def _shape_from_arch(arch: str) -> tuple[int, ...]:
    return load(arch).input_shape


def _find_state_dict(obj) -> dict | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj:
                found = _find_state_dict(obj[key])
                if found is not None:
                    return found
    return None


def _load_state_strict(module: nn.Module, state: Mapping, path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise SurgeryError(f"{path}: keys do not fit the architecture: {'; '.join(parts)}; check --arch")
    for k, v in state.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise SurgeryError(
                f"{path}: {k} has shape {list(v.shape)} but the architecture needs {list(own[k].shape)}; check --arch"
            )
    module.load_state_dict(state, strict=True, assign=_on_meta(module))
    if _on_meta(module):
        raise SurgeryError(f"{path}: the architecture has tensors the checkpoint does not carry; it cannot be loaded")


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


def _structure(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module for weights that are about to be loaded: on the meta device (no random
    init, no memory) when every tensor it holds is in its state_dict; otherwise for real."""
    with torch.device("meta"):
        module = build()
    persistent = set(module.state_dict())
    tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    if set(tensors) <= persistent:
        return module
    return build()  # non-persistent buffers (e.g. constants computed at init) need real values


def _from_checkpoint(path: Path, ckpt: Mapping, meta: dict) -> Net:
    version = ckpt.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise SurgeryError(f"{path}: checkpoint format version {version} is not supported (this surgery reads {CHECKPOINT_VERSION})")
    for key in ("arch", "recipe", "input_shape", "state_dict"):
        if key not in ckpt:
            raise SurgeryError(f"{path}: checkpoint lacks {key!r}; the file is damaged or was not written by surgery")
    arch = ArchSpec.from_dict(ckpt["arch"])
    recipe = tuple(Step.from_dict(s) for s in ckpt["recipe"])
    module = _structure(lambda: rebuild(arch, recipe))
    _load_state_strict(module, ckpt["state_dict"], path)
    module.eval()
    metadata = dict(ckpt.get("metadata", {}))
    metadata["sources"] = {**dict(metadata.get("sources", {})), **meta["sources"]}
    return Net(module, arch, tuple(ckpt["input_shape"]), recipe, source=str(path), format="checkpoint", metadata=metadata)


# ---------------------------------------------------------------------------- saving


def checkpoint_dict(net: Net, extra_metadata: Mapping | None = None) -> dict:
    net.require_editable("save as a checkpoint")
    state = {k: v.detach().cpu().contiguous() for k, v in net.module.state_dict().items()}
    metadata = {**dict(net.metadata), **dict(extra_metadata or {}), "tool_version": surgery.__version__}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": net.arch.to_dict(),
        "recipe": [s.to_dict() for s in net.recipe],
        "input_shape": list(net.input_shape),
        "state_dict": state,
        "metadata": _jsonable(metadata),
    }


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def save(net: Net, path: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Write ``net`` as a pickle-free checkpoint, atomically."""
    ckpt = checkpoint_dict(net)
    return atomic_write([path], lambda tmps: torch.save(ckpt, tmps[0]), force=force, inputs=inputs)[0]


def check_outputs(paths: Iterable[str | Path], *, force: bool, inputs: Iterable[str | Path] = ()) -> list[Path]:
    """Refuse outputs that would overwrite an input (always) or an existing file (without force)."""
    outs = [Path(p) for p in paths]
    ins = {Path(p).resolve() for p in inputs if p and not str(p).startswith("zoo:")}
    for out in outs:
        if str(out).startswith("zoo:"):
            raise SurgeryError(f"output {str(out)!r} is a zoo reference, not a file name; give a path like model.pt")
        if out.resolve() in ins:
            raise SurgeryError(f"output {str(out)!r} is also an input; surgery never overwrites its inputs")
        if out.exists() and not force:
            raise SurgeryError(f"output {str(out)!r} exists; pass --force to overwrite it")
        if out.is_dir():
            raise SurgeryError(f"output {str(out)!r} is a directory")
        if not out.parent.exists():
            raise SurgeryError(f"output directory {str(out.parent)!r} does not exist")
    return outs


def atomic_write(
    paths: Iterable[str | Path],
    writer: Callable[[list[Path]], None],
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
) -> list[Path]:
    """Call ``writer`` with temporary paths beside each output, then rename them all into place.

    If the writer fails, nothing is left behind: either every output appears or none.
    """
    outs = check_outputs(paths, force=force, inputs=inputs)
    tmps = []
    try:
        for out in outs:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        writer(tmps)
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual permissions
        for tmp, out in zip(tmps, outs):
            os.chmod(tmp, mode)
            os.replace(tmp, out)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return outs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
