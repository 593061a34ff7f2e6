"""Load every model reference (:func:`load`): the pickle gate and the torch file formats.

The core's own formats are read here; the zoo, Darknet and ONNX loaders register with
:mod:`surgery.core.plugins` (the core imports none of them). Checkpoints: :mod:`surgery.core.checkpoint`;
atomic writes and output checks: :mod:`surgery.core.files`.

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
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from surgery.core import files, plugins, pyref, safety
from surgery.core.build import DEFAULT_SEED, check_build, find_state_dict, first_line, load_state_strict, seeded  # noqa: F401
from surgery.core.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, check_checkpoint_name,  # noqa: F401
                                     checkpoint_dict, content_hash, from_checkpoint, save, state_hash)
from surgery.core.errors import SurgeryError
from surgery.core.files import atomic_write, check_outputs, existing, sha256  # noqa: F401  (re-exported)
from surgery.core.net import Net
from surgery.core.refs import default_output, parse_zoo_ref  # noqa: F401  (re-exported)

__all__ = ["load", "UntrustedProgram", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "DEFAULT_SEED", "atomic_write",
           "check_checkpoint_name", "check_outputs", "checkpoint_dict", "content_hash", "default_output",
           "parse_zoo_ref", "save", "seeded", "sha256", "state_hash"]

# the names callers and tests have used: one implementation each, in the modules above
_check_build, _load_state_strict, _existing = check_build, load_state_strict, existing

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
                           f"{first_line(e)}); give --input as the C x H x W its first layer expects") from None


_note_input = files.note_input  # every file load() reads counts as an input (see files.track_inputs)


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
    if arch is not None and pyref.is_ref(arch) and not from_file:
        pyref.name(pyref.parse(arch)[0])  # --arch py:pkg.mod:Net: the user names that code
    if input_shape is not None:
        input_shape = safety.check_shape(input_shape, "--input")
    plugin = plugins.loader_for(ref)  # zoo:, py:, .cfg/.weights, .onnx: registered by their modules
    if plugin is not None:
        net = plugin(ref, arch=arch, weights=weights, weights_cutoff=weights_cutoff, input_shape=input_shape,
                     from_file=from_file, trust=trust)
    else:
        path = existing(ref)
        if path.suffix.lower() == ".pt2":
            net = _load_exported(path, trust=trust, input_shape=input_shape)
        else:
            net = _load_torch_file(path, arch=arch, trust_pickle=trust, input_shape=input_shape)
    if input_shape is not None:
        net = net.evolve(net.module, input_shape=tuple(input_shape))
        _check_input_fits(net, ref)
    if net.format != "exported":  # an ExportedProgram's module is already fixed to its traced mode
        net.module.eval()
    return net


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
        raise SurgeryError(f"{path}: not a readable torch.export .pt2 archive ({type(e).__name__}: {first_line(e)})") from None
    try:
        args = ep.example_inputs[0] if ep.example_inputs else ()
        shape = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else ()
        module = ep.module()
    except Exception as e:
        raise SurgeryError(f"{path}: the .pt2 archive is damaged ({type(e).__name__}: {first_line(e)})") from None
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
        raise SurgeryError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: {first_line(e)})") from None
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
                               f"pickle torch can read ({first_line(e)})") from None
        if not trust_pickle:
            raise SurgeryError(
                f"{path} holds pickled Python objects (a whole module), which run arbitrary code when loaded; "
                f"refused. Re-run with --trust-code if you trust its source, or save its state_dict and pass --arch"
            ) from None
        return _load_pickled_module(path, arch, meta, input_shape)
    except Exception as e:  # torch.load raises many types (IndexError, RuntimeError...) on a damaged file
        raise SurgeryError(f"{path}: not a readable PyTorch file ({e.__class__.__name__}: {first_line(e)})") from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return from_checkpoint(path, obj, meta)
    state = find_state_dict(obj)
    if state is None:
        raise SurgeryError(f"{path}: neither a surgery checkpoint nor a state_dict (found {type(obj).__name__})")
    if not arch:
        raise SurgeryError(f"{path} is a bare state_dict; pass --arch (zoo:NAME[:k=v] or a Darknet .cfg) to say what it is")
    net = _load(arch, arch=None, weights=None, trust=trust_pickle, input_shape=None, weights_cutoff=None,
                from_file=pyref.is_ref(arch) and not pyref.named(pyref.parse(arch)[0]))
    net.require_editable("load a state_dict into")
    load_state_strict(net.module, state, path)
    sources = {**dict(net.metadata.get("sources", {})), **meta["sources"]}
    return Net(net.module, net.arch, net.input_shape, net.recipe, source=str(path), format="state_dict",
               metadata={**meta, "sources": sources, "arch": arch})


def _load_pickled_module(path: Path, arch: str | None, meta: dict, input_shape=None) -> Net:
    try:
        with pyref.cwd_on_path():  # its classes live in the user's code, as for py: references
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # the user trusted it; it may still be damaged or need classes we lack
        raise SurgeryError(f"{path}: the trusted pickle cannot be loaded ({type(e).__name__}: {first_line(e)}); "
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
