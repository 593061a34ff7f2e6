"""Load and save every model format; the pickle gate; atomic output writes.

References (DESIGN.md contracts):
- ``zoo:NAME[:k=v,...]`` — a zoo architecture, initialised from a fixed seed;
- ``FILE.cfg`` — Darknet, with a same-stem ``.weights`` or ``weights=``;
- ``FILE.pt``/``.pth`` — surgery checkpoint, bare state_dict (needs ``arch=``), TorchScript
  archive (analysis only; refused unless ``trust_code``: its code runs when loaded), or a
  whole pickled module (refused unless ``trust_code``: unpickling runs code);
- ``FILE.pt2`` — a torch.export ExportedProgram (analysis only): counted on the meta device
  without trust; running it on real tensors needs ``trust_code``.

Every file :func:`load` reads (the reference, a same-stem ``.weights``, ``weights=``, an
``arch=`` cfg) is an input; :func:`check_outputs` never lets an output name one of them, with
or without ``force`` (resolved paths and inodes are compared). Checkpoints carry a sha256 of
their state_dict's contents, checked at load.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
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
from surgery.core import pyref, safety
from surgery.core.errors import SurgeryError
from surgery.core.net import ArchSpec, Net, Step
from surgery.core.recipe import rebuild

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
    safety.check_shape(shape, f"zoo:{name}: input shape")
    _check_build(arch.build, f"zoo:{name}")
    with seeded(seed):
        module = arch.build()
    module.eval()
    return Net(module, arch, shape, source=arch.describe(), format="zoo", metadata={"seed": seed})


@contextlib.contextmanager
def seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_build(build: Callable[[], nn.Module], what: str) -> nn.Module:
    """Build on the meta device (no memory, no init) and refuse, with the amount, when the
    real weights would not fit in memory; returns the meta module."""
    try:
        with torch.device("meta"):
            module = build()
    except SurgeryError:
        raise
    except (RuntimeError, ValueError, OverflowError, MemoryError) as e:  # sizes torch cannot represent
        raise SurgeryError(f"{what}: the sizes it asks for cannot be built ({type(e).__name__}: {_first_line(e)})") from None
    safety.check_memory(safety.module_nbytes(module), f"{what}: its weights", "check the sizes it asks for")
    return module


def _check_input_fits(net: Net, ref: str) -> None:
    """Refuse a given input size the network cannot take, in one line, here rather than as a
    traceback from whichever command first runs it: one forward on a meta-device copy (no
    memory, no compute). Modules that cannot run on meta (TorchScript) are not checked."""
    from surgery.core.graph import meta_copy

    shape = "x".join(map(str, net.input_shape))
    if net.format == "torchscript" or isinstance(net.module, torch.jit.ScriptModule):
        return  # the TorchScript interpreter does not run on meta tensors
    try:
        m = meta_copy(net.module)
    except Exception:
        return
    try:
        with torch.no_grad():
            m(torch.empty((net.batch_unit, *net.input_shape), device="meta"))
    except SurgeryError:
        raise
    except NotImplementedError:  # an op without a meta kernel: nothing learned
        return
    except Exception as e:  # a shape error of the model's own forward
        if "meta" in str(e):  # host-side shape arithmetic (.item(), .tolist()): meta cannot tell
            return
        raise SurgeryError(f"{ref}: the network does not take input {shape} ({type(e).__name__}: "
                           f"{_first_line(e)}); give --input as the C x H x W its first layer expects") from None


def _first_line(e: BaseException) -> str:
    """The gist of a third-party exception for a one-line message: torch's weights-only
    unpickler buries its reason after boilerplate; its 'please report' tails are dropped."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    line = lines[0] if lines else type(e).__name__
    return line.split("  (Could this error message be improved?")[0].strip()


_note_input = safety.note_input  # every file load() reads counts as an input (see safety.track_inputs)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _existing(path: str | Path, what: str = "model file") -> Path:
    p = Path(path)
    try:
        if not p.exists():
            raise SurgeryError(f"{what} {str(p)!r} does not exist")
        if p.is_dir():
            raise SurgeryError(f"{what} {str(p)!r} is a directory, not a file")
    except OSError as e:  # a name too long, a loop of links...
        raise SurgeryError(f"{what} {str(p)!r} cannot be read ({e.strerror or e})") from None
    _note_input(p)
    return p


def load(
    ref: str,
    *,
    arch: str | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
    input_shape: tuple[int, ...] | None = None,
    trust_code: bool = False,
    weights_cutoff: int | None = None,
    from_file: bool = False,
) -> Net:
    """Load a model reference into a :class:`Net` (eval mode).

    ``trust_code`` (alias ``trust_pickle``): allow formats whose loading or running executes
    code from the file (a whole pickled module, TorchScript, a .pt2 run on real tensors, a
    checkpoint's ``py:`` arch the user did not name: :mod:`surgery.core.pyref`).
    ``from_file``: ``ref`` and ``arch`` were read from a file (a run directory's config), not
    typed by the user: a ``py:`` reference among them is not the user naming its code.
    ``weights_cutoff``: a Darknet ``.weights`` holds only layers ``0..N-1`` (``darknet53.conv.74``);
    without it a short file's cutoff is inferred from its size (``metadata["weights_load"]``)."""
    ref = str(ref)
    if weights_cutoff is not None and not (ref.lower().endswith((".cfg", ".weights"))):
        raise SurgeryError(f"{ref}: a weights cutoff applies to Darknet .weights files only (a .cfg model)")
    if weights is not None and not (ref.startswith("py:") or ref.lower().endswith((".cfg", ".weights"))):
        raise SurgeryError(f"{ref}: --weights applies to a .cfg (its Darknet .weights) or a py: reference (its "
                           f"state_dict); {'a zoo model' if ref.startswith('zoo:') else 'this file'} has its "
                           f"own weights")
    trust = bool(trust_code or trust_pickle)
    with pyref.trusting(trust):
        return _load(ref, arch=arch, weights=weights, trust=trust, input_shape=input_shape,
                     weights_cutoff=weights_cutoff, from_file=from_file)


def _load(ref: str, *, arch, weights, trust: bool, input_shape, weights_cutoff, from_file: bool) -> Net:
    trust_pickle = trust
    if arch is not None and pyref.is_ref(arch) and not from_file:
        pyref.name(pyref.parse(arch)[0])  # --arch py:pkg.mod:Net: the user names that code
    if input_shape is not None:
        input_shape = safety.check_shape(input_shape, "--input")
    if ref.startswith("zoo:"):
        name, kwargs = parse_zoo_ref(ref)
        net = build_zoo(name, kwargs)
    elif ref.startswith("py:"):  # the user's own factory (surgery.core.pyref); --weights: its state_dict
        net = pyref.load(ref, weights=weights, input_shape=input_shape, from_file=from_file)
    else:
        path = _existing(ref)
        suffix = path.suffix.lower()
        if suffix == ".cfg":
            net = _load_darknet(path, weights, weights_cutoff)
        elif suffix == ".weights":  # bare Darknet weights: the cfg comes from arch=FILE.cfg
            if not (arch and str(arch).lower().endswith(".cfg")):
                raise SurgeryError(f"{ref}: a .weights file needs its cfg; pass --arch FILE.cfg "
                                   f"(or the .cfg with --weights {ref})")
            if weights:
                raise SurgeryError(f"{ref} is already a .weights file; drop the extra weights file {weights}")
            net = _load_darknet(_existing(arch, "cfg file"), str(path), weights_cutoff)
            net = net.evolve(net.module, source=ref)
        elif suffix == ".pt2":
            net = _load_exported(path, trust=trust, input_shape=input_shape)
        elif suffix == ".onnx":  # imported into standard torch modules, checked against onnxruntime
            from surgery.core.onnx_import import load_onnx

            net = load_onnx(path, input_shape, sha256=sha256(path))
        else:
            net = _load_torch_file(path, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape)
    if input_shape is not None:
        net = net.evolve(net.module, input_shape=tuple(input_shape))
        _check_input_fits(net, ref)
    if net.format != "exported":  # an ExportedProgram's module is already fixed to its traced mode
        net.module.eval()
    return net


def _load_darknet(path: Path, weights: str | None, cutoff: int | None = None) -> Net:
    """A Darknet net built from the fixed seed, then its .weights (whole, the first ``cutoff``
    layers, or a prefix inferred from the file size). ``metadata``: ``random_weights`` (no
    .weights at all: every tensor is the seeded init), ``seed``, ``weights_load``."""
    from zoo.darknet import build_darknet
    from zoo.darknet.cfg import parse_cfg, read_cfg_file
    from zoo.darknet.weights import load_weights

    text = read_cfg_file(path)
    meta_module = _check_build(lambda: build_darknet(text, source=str(path)), str(path))
    safety.check_shape(meta_module.input_shape, f"{path}: [net] input size")
    with seeded(DEFAULT_SEED):  # what the file does not hold is the same on every load
        module = build_darknet(text, source=str(path))
    sources = {str(path): sha256(path)}
    wpath = Path(weights) if weights else path.with_suffix(".weights")
    if weights:
        _existing(wpath, "weights file")
    meta: dict = {"sources": sources, "weights": str(wpath) if wpath.exists() else None}
    if wpath.exists():
        _note_input(wpath)
        rep = load_weights(module, wpath, cutoff="infer" if cutoff is None else cutoff)
        sources[str(wpath)] = sha256(wpath)
        meta["random_weights"] = False
        meta["weights_load"] = {"file": str(wpath), "cutoff": rep.cutoff, "cutoff_inferred": rep.inferred,
                                "layers_from_file": list(rep.from_file), "layers_initialised": list(rep.initialised)}
        if rep.initialised:
            meta["seed"] = DEFAULT_SEED
    elif cutoff is not None:
        raise SurgeryError(f"{path}: a weights cutoff ({cutoff}) but no .weights file; pass the weights file too")
    else:
        meta["random_weights"], meta["seed"] = True, DEFAULT_SEED
    # a cfg whose layers read side files (a softmax tree) carries them inlined in module.cfg_text()
    arch = ArchSpec("darknet", path.name, {}, cfg=module.cfg_text() if module.blocks != parse_cfg(text, str(path)) else text)
    return Net(module, arch, tuple(module.input_shape), source=str(path), format="darknet", metadata=meta)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export.load logs a whole traceback (WARNING) before raising; our one line says it."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


# What a .pt2 graph may call when it is run without --trust-code (on the meta device only):
# ATen/prims compute ops. Ops that touch files or the outside world are not compute.
_SIDE_EFFECT_OPS = {"from_file", "_from_file", "save", "load", "_print", "print", "_assert_async", "_nested_from_file"}


def _untrusted_graph_problem(module: nn.Module) -> str | None:
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        if graph is None or not hasattr(graph, "nodes"):
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            ns = getattr(target, "namespace", None)
            name = getattr(target, "__name__", str(target))
            if ns not in ("aten", "prims") and getattr(target, "__module__", "") not in ("_operator", "operator"):
                if name != "getitem":
                    return f"it calls {name} (not an ATen compute op)"
            if name.split(".")[0] in _SIDE_EFFECT_OPS:
                return f"it calls {name}, which touches files"
    return None


class UntrustedProgram(nn.Module):
    """A .pt2 program loaded without ``trust_code``: it runs on meta tensors (counting, shapes)
    and refuses real ones. A wrapper rather than a forward hook, because copies of a
    GraphModule (``copy.deepcopy``, as the profiler makes) drop hooks but keep the wrapper."""

    def __init__(self, program: nn.Module, source: str):
        super().__init__()
        self.program = program
        self.source = source

    def forward(self, x):
        if isinstance(x, torch.Tensor) and not x.is_meta:  # fx proxies and meta tensors pass
            raise SurgeryError(
                f"{self.source} is a .pt2 program: running it on real tensors executes its graph; "
                f"pass --trust-code if you trust its source (counting on the meta device needs no flag)"
            )
        return self.program(x)

    def train(self, mode: bool = True):  # an ExportedProgram's module is fixed to its traced mode
        self.training = mode
        return self


def _load_exported(path: Path, *, trust: bool = False, input_shape=None) -> Net:
    try:
        with _quiet_torch_logs():
            ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a bad archive
        raise SurgeryError(f"{path}: not a readable torch.export .pt2 archive ({type(e).__name__}: {_first_line(e)})") from None
    try:
        args = ep.example_inputs[0] if ep.example_inputs else ()
        shape = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else ()
        module = ep.module()
    except Exception as e:
        raise SurgeryError(f"{path}: the .pt2 archive is damaged ({type(e).__name__}: {_first_line(e)})") from None
    shape = tuple(input_shape) if input_shape else shape
    if not shape:
        raise SurgeryError(f"{path}: the ExportedProgram records no example input; pass --input CxHxW")
    safety.check_shape(shape, f"{path}: example input")
    if not trust:
        problem = _untrusted_graph_problem(module)
        if problem:
            raise SurgeryError(f"{path}: {problem}; refused. Pass --trust-code if you trust its source")
        module = UntrustedProgram(module, str(path))
    meta = {"sources": {str(path): sha256(path)}}
    return Net(module, None, shape, source=str(path), format="exported", metadata=meta)


def _zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive, None when the file is not a readable zip."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None


def _is_torchscript(path: Path) -> bool:
    names = _zip_names(path)
    return bool(names) and any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _load_torchscript(path: Path, *, arch, trust: bool, input_shape, meta) -> Net:
    if not trust:
        raise SurgeryError(
            f"{path} is a TorchScript archive: it is code, run when it is loaded and on every forward; "
            f"refused. Re-run with --trust-code if you trust its source, or load its weights "
            f"(a state_dict) with --arch"
        )
    try:
        with _quiet_torch_logs():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a zip that merely looks like TorchScript
        raise SurgeryError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: {_first_line(e)})") from None
    shape = input_shape or (_shape_from_arch(arch) if arch else None)
    if shape is None:
        raise SurgeryError(f"{path} is a TorchScript archive and records no input shape; pass --input CxHxW")
    return Net(module, None, shape, source=str(path), format="torchscript", metadata=meta)


def _holds_code(e: BaseException) -> bool:
    """Did the weights-only unpickler stop at a global/class reference (pickled objects, i.e.
    code), rather than at bytes that are no pickle at all?"""
    text = str(e)
    return "Unsupported global" in text or "GLOBAL" in text or "Unsupported class" in text


def _load_torch_file(path: Path, *, arch: str | None, trust_pickle: bool, input_shape=None) -> Net:
    if path.stat().st_size == 0:
        raise SurgeryError(f"{path} is empty (0 bytes); it holds no model")
    meta = {"sources": {str(path): sha256(path)}}
    if _is_torchscript(path):
        return _load_torchscript(path, arch=arch, trust=trust_pickle, input_shape=input_shape, meta=meta)
    try:
        # mmap: tensors stay in the page cache instead of a second private copy (weights_only
        # still refuses any pickled code).
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_zip_names(path) is not None)
    except pickle.UnpicklingError as e:
        if not _holds_code(e):
            raise SurgeryError(f"{path}: not a PyTorch file: its bytes are neither a surgery checkpoint nor a "
                               f"pickle torch can read ({_first_line(e)})") from None
        if not trust_pickle:
            raise SurgeryError(
                f"{path} holds pickled Python objects (a whole module), which run arbitrary code when loaded; "
                f"refused. Re-run with --trust-code if you trust its source, or save its state_dict and pass --arch"
            ) from None
        return _load_pickled_module(path, arch, meta, input_shape)
    except Exception as e:  # torch.load raises many types (IndexError, RuntimeError...) on a damaged file
        raise SurgeryError(f"{path}: not a readable PyTorch file ({e.__class__.__name__}: {_first_line(e)})") from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, obj, meta)
    state = _find_state_dict(obj)
    if state is None:
        raise SurgeryError(f"{path}: neither a surgery checkpoint nor a state_dict (found {type(obj).__name__})")
    if not arch:
        raise SurgeryError(f"{path} is a bare state_dict; pass --arch (zoo:NAME[:k=v] or a Darknet .cfg) to say what it is")
    net = _load(arch, arch=None, weights=None, trust=trust_pickle, input_shape=None, weights_cutoff=None,
                from_file=pyref.is_ref(arch) and not pyref.named(pyref.parse(arch)[0]))
    net.require_editable("load a state_dict into")
    _load_state_strict(net.module, state, path)
    sources = {**dict(net.metadata.get("sources", {})), **meta["sources"]}
    return Net(net.module, net.arch, net.input_shape, net.recipe, source=str(path), format="state_dict",
               metadata={**meta, "sources": sources, "arch": arch})


def _load_pickled_module(path: Path, arch: str | None, meta: dict, input_shape=None) -> Net:
    try:
        with pyref.cwd_on_path():  # its classes live in the user's code, as for py: references
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # the user trusted it; it may still be damaged or need classes we lack
        raise SurgeryError(f"{path}: the trusted pickle cannot be loaded ({type(e).__name__}: {_first_line(e)}); "
                           f"run from the folder holding its classes' code or add it to PYTHONPATH") from None
    if not isinstance(obj, nn.Module):
        raise SurgeryError(f"{path}: trusted pickle holds a {type(obj).__name__}, not an nn.Module")
    shape = input_shape or (_shape_from_arch(arch) if arch else getattr(obj, "input_shape", None))
    if not shape:
        raise SurgeryError(f"{path}: a pickled module records no input shape; pass --input CxHxW")
    spec, why = pyref.arch_of_pickled(obj, path, arch)
    return Net(obj, spec, tuple(shape), source=str(path), format="pickle", metadata={**meta, "not_editable": why})


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
        kind_given = (v.is_floating_point(), v.is_complex(), v.dtype == torch.bool)
        kind_needed = (own[k].is_floating_point(), own[k].is_complex(), own[k].dtype == torch.bool)
        if kind_given != kind_needed:
            raise SurgeryError(
                f"{path}: {k} holds {str(v.dtype).replace('torch.', '')} values but the architecture needs "
                f"{str(own[k].dtype).replace('torch.', '')}; the file is damaged or not for this architecture"
            )
    module.load_state_dict(state, strict=True, assign=_on_meta(module))
    if _on_meta(module):
        raise SurgeryError(f"{path}: the architecture has tensors the checkpoint does not carry; it cannot be loaded")


def _on_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


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


def _structure(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module for weights that are about to be loaded: on the meta device (no random
    init, no memory) when every tensor it holds is in its state_dict; otherwise for real."""
    with torch.device("meta"):
        module = build()
    persistent = set(module.state_dict())
    tensors = dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))
    if set(tensors) <= persistent:
        return module
    safety.check_memory(safety.module_nbytes(module), "the checkpoint's architecture: its weights")
    return build()  # non-persistent buffers (e.g. constants computed at init) need real values


def _from_checkpoint(path: Path, ckpt: Mapping, meta: dict) -> Net:
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
        module = _structure(lambda: rebuild(arch, recipe))
    except pyref.CodeNotNamed as e:
        raise SurgeryError(f"{path} {e}") from None
    except SurgeryError as e:
        raise SurgeryError(f"{path}: {e}") from None
    except Exception as e:  # untrusted data: a damaged arch/recipe fails in many ways
        raise SurgeryError(f"{path}: the checkpoint's arch/recipe cannot be rebuilt ({type(e).__name__}: "
                           f"{_first_line(e)}); the file is damaged or was written by another version") from None
    _load_state_strict(module, state, path)
    module.eval()
    metadata = dict(ckpt.get("metadata", {})) if isinstance(ckpt.get("metadata", {}), Mapping) else {}
    metadata["sources"] = {**dict(metadata.get("sources", {}) if isinstance(metadata.get("sources"), Mapping) else {}),
                           **meta["sources"]}
    return Net(module, arch, shape, recipe, source=str(path), format="checkpoint", metadata=metadata)


# ---------------------------------------------------------------------------- saving


def checkpoint_dict(net: Net, extra_metadata: Mapping | None = None) -> dict:
    net.require_editable("save as a checkpoint")
    state = {k: v.detach().cpu().contiguous() for k, v in net.module.state_dict().items()}
    metadata = {**dict(net.metadata), **dict(extra_metadata or {}), "tool_version": surgery.__version__}
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


def default_output(sources: Iterable[str], tag: str, suffix: str = ".pt") -> Path:
    """The output name a command uses when the user gives no ``-o``: in the current directory,
    made of the inputs' stems and what was done, e.g. ``base-text@74.pt`` for
    ``share --at 74 base.pt text.pt`` (tag ``"@74"``), ``resnet50-root8.pt`` for a regroup
    (tag ``"-root8"``). Zoo references contribute their name (``zoo:resnet50:root=8`` ->
    ``resnet50``). Never a ``+``: ``surgery profile`` reads ``A.pt+B.pt`` as two models."""
    stems = []
    for s in sources:
        s = str(s)
        if s.startswith("zoo:"):
            stems.append(parse_zoo_ref(s)[0])
        elif s.startswith("py:"):  # py:pkg.mod:factory -> factory
            stems.append(s.split(":")[2] if s.count(":") >= 2 else "model")
        else:
            stems.append(Path(s).stem or "model")
    name = "-".join(stems) + tag
    name = re.sub(r"[^\w.@=,-]", "_", name)
    return Path(name + suffix)


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
    read_paths, inodes = safety.read_inputs()
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
                    safety.link_exclusive(tmp, out)
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
