"""``surgery export``: ONNX and Darknet files, each verified before anything is written
(DESIGN.md: export is a function-preserving surgery).

:func:`export_onnx` exports a :class:`Net` through ``torch.onnx`` (:func:`surgery.core.onnx_io.export_model`:
dynamo first, TorchScript as the fallback; the report says which one was used and why). The
graph's input is ``input`` with a dynamic batch axis (``batch``) unless a fixed ``batch`` is
asked for; its outputs are named by head, ``head0_out0``, ``head0_out1``, ..., ``head1_out0``
(a shared network's heads: the base's outputs, then each task's; any other model is one head);
a model with several outputs (tuple, list, dict) gets them flattened in order. Before anything
is written, the exported model runs in ONNX Runtime (CPU provider) on probe inputs -- for a
dynamic batch at batch 2 and at batch 1 -- and its outputs are compared with PyTorch's by
:func:`surgery.core.verify.compare` (max abs, and max abs / max |reference| as the relative
difference); a relative difference above ``rtol`` (1e-4 for float32) is an error and no file is
written. The file is written atomically (:func:`surgery.core.io.atomic_write`), never over an
existing file without ``force`` and never over an input.

:func:`write_darknet` writes a Darknet-built network as ``.cfg`` + ``.weights``, makes the files the
cfg names (``tree=``, ``map=``) available beside it (:func:`darknet_side_files`), and reads the cfg
back from its own directory with the project's importer to identical tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from surgery.core.errors import SurgeryError
from surgery.core.graph import output_tensors
from surgery.core.io import atomic_write, check_outputs
from surgery.core.net import Net
from surgery.core import safety
from surgery.core.safety import check_finite_nonneg
from surgery.core.onnx_io import DEFAULT_RTOL, EXPORTERS, export_model, verify_session
from surgery.core.ort_session import ort_session
from surgery.core.probe import Probe, check_shape, probe_json

__all__ = ["DEFAULT_RTOL", "EXPORTERS", "ExportReport", "DarknetExportReport", "DarknetSideFile", "darknet_side_files",
           "export_onnx", "head_output_names", "write_darknet"]


@dataclass(frozen=True)
class ExportReport:
    output: str
    opset: int
    exporter: str  # "dynamo" | "torchscript"
    batch: int | None  # None: a dynamic batch axis
    dtype: str
    input_shape: tuple[int, ...]  # without batch
    input_name: str
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]  # without batch
    verified: bool
    provider: str | None  # ONNX Runtime provider the verification ran on
    probes: int
    max_abs: float | None
    max_rel: float | None
    rtol: float
    size_bytes: int
    export_s: float
    notes: tuple[str, ...] = ()
    model: str = ""
    probe: Mapping | None = None  # what verify ran on (surgery.core.probe.probe_json); None unverified

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "output": self.output,
            "format": "onnx",
            "opset": self.opset,
            "exporter": self.exporter,
            "batch": "dynamic" if self.batch is None else self.batch,
            "dtype": self.dtype,
            "input_shape": list(self.input_shape),
            "input_name": self.input_name,
            "output_names": list(self.output_names),
            "output_shapes": [list(s) for s in self.output_shapes],
            "verify": None if not self.verified else {
                "max_abs": self.max_abs, "max_rel": self.max_rel, "rtol": self.rtol, "probes": self.probes,
                "provider": self.provider},
            "size_bytes": self.size_bytes,
            "export_s": self.export_s,
            "notes": list(self.notes),
            "probe": None if self.probe is None else dict(self.probe),
        }


def head_output_names(net: Net, n_outputs: int) -> tuple[str, ...]:
    """``head{h}_out{i}`` for each output: a shared network records how many outputs each head
    gives (``metadata["share"]["outputs"]``); any other model is one head."""
    sizes = list((net.metadata.get("share") or {}).get("outputs") or [])
    if sum(sizes) != n_outputs or not all(isinstance(s, int) and s > 0 for s in sizes):
        sizes = [n_outputs]
    return tuple(f"head{h}_out{i}" for h, size in enumerate(sizes) for i in range(size))


def export_onnx(
    net: Net,
    path: str | Path,
    *,
    batch: int | None = None,
    dtype: torch.dtype = torch.float32,
    opset: int | None = None,
    verify: bool = True,
    force: bool = False,
    exporter: str = "auto",
    rtol: float | None = None,
    probes: int = 2,
    inputs: Iterable[str | Path] = (),
    probe: Probe | None = None,
) -> ExportReport:
    """Export ``net`` to ONNX at ``path``, verified against PyTorch before anything is written.

    ``batch=None`` (default): a dynamic batch axis; an integer fixes it. ``inputs`` are the
    command's input files (never overwritten). ``rtol`` defaults to 1e-4 for float32, 1e-2 for
    float16 and 5e-2 for bfloat16 (relative to the largest output magnitude, as in
    :mod:`surgery.core.verify`). ``probe``: real images to verify on (``--data``) instead of
    ``probes`` seeded random batches.
    """
    if not isinstance(net, Net):
        raise SurgeryError("export_onnx takes a surgery Net (surgery.core.io.load gives one)")
    if batch is not None and batch < 1:
        raise SurgeryError(f"export batch must be positive, got {batch}")
    if rtol is not None:
        rtol = check_finite_nonneg(rtol, "rtol")
    protect = [*inputs, net.source] if net.source else list(inputs)
    check_outputs([path], force=force, inputs=protect)
    rtol = DEFAULT_RTOL.get(dtype, 1e-2) if rtol is None else rtol
    module = net.module.eval() if dtype == torch.float32 else _cast(net.module, dtype)
    dynamic = batch is None
    # torch.export specialises a size-1 dimension; a recurrent Darknet net needs a multiple of its time_steps
    trace_batch = 2 * net.batch_unit if dynamic else batch
    safety.check_forward_memory(module, tuple(net.input_shape), batch=trace_batch, dtype=dtype,
                                what="the ONNX export's trace")
    x = net.example_input(trace_batch, dtype=dtype)
    with torch.no_grad():
        names = head_output_names(net, len(output_tensors(module(x))))
    verified: dict = {}
    check_shape(probe, net.input_shape, net.source or "the model")
    if probe is not None and not dynamic:
        probe = probe.rebatch(batch)  # the graph takes exactly `batch` rows

    def check(data: bytes) -> None:
        if not verify:
            return
        sess = ort_session(data)
        rep = verify_session(sess, net.module, net.input_shape, batch=trace_batch, dtype=dtype, probes=probes,
                             rtol=rtol, probe=probe)
        verified["probe"] = probe_json(probe, rep.probes * rep.batch)
        if dynamic:  # the batch axis really is free: batch 1 (one batch unit) too
            one = verify_session(sess, net.module, net.input_shape, batch=net.batch_unit, dtype=dtype, probes=1,
                                 rtol=rtol)
            rep = (rep.max_abs if rep.max_abs >= one.max_abs else one.max_abs, max(rep.max_rel, one.max_rel))
        else:
            rep = (rep.max_abs, rep.max_rel)
        verified["report"] = rep

    exported = export_model(module, x, opset=opset, exporter=exporter, check=check, output_names=names,
                            dynamic_batch=dynamic)
    rep = verified.get("report")
    out = atomic_write([path], lambda tmps: tmps[0].write_bytes(exported.data), force=force, inputs=protect)[0]
    return ExportReport(
        output=str(out),
        opset=exported.opset,
        exporter=exported.exporter,
        batch=batch,
        dtype=str(dtype).replace("torch.", ""),
        input_shape=tuple(net.input_shape),
        input_name=exported.input_name,
        output_names=exported.output_names,
        output_shapes=exported.output_shapes,
        verified=rep is not None,
        provider="CPUExecutionProvider" if rep is not None else None,
        probes=((probes if probe is None else len(probe.batches)) + (1 if dynamic else 0)) if rep is not None else 0,
        max_abs=rep[0] if rep is not None else None,
        max_rel=rep[1] if rep is not None else None,
        rtol=rtol,
        size_bytes=len(exported.data),
        export_s=exported.export_s,
        notes=exported.notes,
        model=net.source,
        probe=verified.get("probe"),
    )


def _cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(module).eval().to(dtype)


# ------------------------------------------------------------------ Darknet .cfg + .weights


@dataclass(frozen=True)
class DarknetExportReport:
    output: str  # the .cfg
    weights: str
    layers: int
    params: int
    weights_bytes: int
    batchnorms: int  # layers with batch_normalize=1 in the written cfg
    identical: bool  # the written files read back to exactly the same tensors
    model: str = ""
    side_files: tuple["DarknetSideFile", ...] = ()  # the tree=/map= files the cfg names, beside it
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DarknetSideFile:
    """A file the written cfg names (``tree=``, ``map=``), made available beside it."""

    option: str  # tree | map
    name: str  # as the cfg names it
    layers: tuple[int, ...]  # the layers naming it
    path: str  # where it is: the cfg's directory / name
    action: str  # present (already there, same contents) | copied (the original) | reconstructed (from the model)
    source: str | None  # the original file copied


def darknet_side_files(net: Net, cfg_path, *, force: bool = False) -> list[tuple[DarknetSideFile, bytes | None]]:
    """The plan for the ``tree=``/``map=`` files a Darknet cfg written at ``cfg_path`` names: each
    with the bytes to write beside it (None: already there).

    Darknet opens such a file relative to where it runs and this project looks next to the cfg,
    then in the working directory; the written cfg gets its files beside it, so it loads from
    anywhere. A file already there that reads to what the model carries (its tree's group sizes,
    its class map) stays. Else the original is copied if found (next to the model's file, next to
    the cfg it was built from, or in the working directory) and still reads the same; else the file
    is written from what the model carries (a map exactly; a tree with placeholder node names:
    :func:`zoo.darknet.side_files.tree_text`). A different file of that name beside the cfg is
    refused unless ``force`` (an input never: :func:`surgery.core.io.check_outputs` refuses it when it
    is written); so is a name that leaves the cfg's directory or a missing sub-directory (Darknet would
    look there). Nothing is written here."""
    from surgery.core.graph import is_darknet
    from zoo.darknet.side_files import find_file, side_files

    if not is_darknet(net.module):  # write_darknet refuses it, saying why
        return []
    out_dir = Path(cfg_path).parent
    dirs = [str(Path(s).parent) for s in (net.source, getattr(net.module, "source", None))
            if s and not str(s).startswith(("zoo:", "<"))]
    plan = []
    for sf in side_files(net.module):
        where = f"{sf.option}={sf.name} (layer {', '.join(map(str, sf.layers))})"
        target = out_dir / sf.name
        existing = _read_latin1(target, where)
        if existing is not None and sf.reads(existing) == sf.values:
            plan.append((DarknetSideFile(sf.option, sf.name, sf.layers, str(target), "present", None), None))
            continue
        inside = not Path(sf.name).is_absolute() and ".." not in Path(sf.name).parts
        if not inside:
            raise SurgeryError(f"{where}: the written cfg names {str(target)!r}, outside its directory, and no file "
                               f"there reads as the model's {sf.what}; put that file there, or export from a cfg "
                               f"whose {sf.option}= names a file beside it")
        if not target.parent.is_dir():
            raise SurgeryError(f"{where}: the directory {str(target.parent)!r} does not exist; create it (the written "
                               f"cfg names its {sf.what} there)")
        if existing is not None and not force:
            raise SurgeryError(f"{where}: {str(target)!r} exists and is a different {sf.what} than the model's; "
                               f"pass --force to overwrite it, or write the cfg elsewhere")
        original = find_file(sf.name, dirs)
        text = _read_latin1(original, where) if original is not None else None
        if text is not None and sf.reads(text) == sf.values:
            entry = DarknetSideFile(sf.option, sf.name, sf.layers, str(target), "copied", str(original))
            data = original.read_bytes()
        else:
            entry = DarknetSideFile(sf.option, sf.name, sf.layers, str(target), "reconstructed", None)
            data = sf.text().encode("ascii")
        plan.append((entry, data))
    return plan


def _read_latin1(path: Path | None, where: str) -> str | None:
    """A side file's text as Darknet reads it (bytes), None when there is no such file."""
    if path is None or not path.exists():
        return None
    if path.is_dir():
        raise SurgeryError(f"{where}: {str(path)!r} is a directory, not a file")
    try:
        return path.read_bytes().decode("latin-1")
    except OSError as e:
        raise SurgeryError(f"{where}: cannot read {str(path)!r} ({e.strerror or e})") from None


def write_darknet(net: Net, cfg_path, weights_path, *, force: bool = False,
                  inputs: Iterable[str | Path] = ()) -> DarknetExportReport:
    """Write a Darknet-built ``net`` as ``.cfg`` + ``.weights`` (call it on temporary paths
    inside :func:`surgery.core.io.atomic_write`) and check that the project's importer reads both
    back to exactly the same tensors. A folded network (``surgery fold``) is written with
    ``batch_normalize=0`` and its biases.

    The files the cfg names (a softmax/region ``tree=``, a region ``map=``) are made available
    beside it (:func:`darknet_side_files`; ``force`` overwrites a different one, never one of
    ``inputs``): placed at once with their own atomic write (so the cfg can be read back from its
    own directory), which joins the caller's, so a failure takes them back too. The read-back
    builds the written cfg from where it lies, so a missing file fails the export."""
    from surgery.core.graph import is_darknet
    from zoo.darknet import build_darknet, read_weights, write_weights
    from zoo.darknet.cfg import read_cfg_file

    if not is_darknet(net.module) or net.recipe:
        raise SurgeryError(
            f"{net.source or 'this model'}: Darknet export needs a Darknet-built network (a .cfg, zoo:yolov3, "
            f"a Darknet share or fold) without torch.fx-graph surgeries in its recipe; export it as ONNX instead"
        )
    from zoo.darknet.weights import weights_io_problem

    problem = weights_io_problem(net.module)
    if problem:  # dontload=/dontsave=/numload=/dontloadscales= steer one load or save, not the network
        raise SurgeryError(f"{net.source or 'this model'}: Darknet export: {problem}, so Darknet could not read the "
                           f"written files back; remove that option from the cfg to export it")
    plan = darknet_side_files(net, cfg_path, force=force)
    Path(cfg_path).write_text(net.module.cfg_text(darknet=True))  # e.g. tree= as written, not its inlined groups
    nbytes = write_weights(net.module, weights_path, overwrite=True)
    todo = [(Path(entry.path), data) for entry, data in plan if data is not None]
    created: list[Path] = []  # the side files this call placed where there was none

    def place(tmps):
        for tmp, (_, data) in zip(tmps, todo):
            tmp.write_bytes(data)

    try:
        if todo:
            missing = [p for p, _ in todo if not p.exists()]
            atomic_write([p for p, _ in todo], place, force=force, inputs=[*inputs, net.source])
            created = missing
        # the cfg as written, from its own directory: its tree=/map= files must be found there
        back = build_darknet(read_cfg_file(cfg_path), source=str(cfg_path))
        read_weights(back, weights_path)
    except BaseException:
        for p in created:  # not inside another atomic_write: take back what this call placed
            p.unlink(missing_ok=True)
        raise
    mine, theirs = net.module.state_dict(), back.state_dict()
    bad = sorted(set(mine) ^ set(theirs)) or [
        k for k in mine if not k.endswith("num_batches_tracked") and not torch.equal(mine[k], theirs[k])]
    bad += [f"layer {a.index} {attr}" for a, b in zip(net.module.layers, back.layers) for attr in ("tree", "map")
            if getattr(a, attr, None) != getattr(b, attr, None)]
    if bad:
        for p in created:
            p.unlink(missing_ok=True)
        raise SurgeryError(f"Darknet export: the written files do not read back to the same network ({bad[:3]}); "
                           "nothing written (a bug: please report)")
    # recurrent layers (zoo/darknet/recurrent.py) hold their BatchNorms in sublayers: they say batch_normalize
    bns = sum(1 for l in back.layers if getattr(l, "bn", None) is not None or getattr(l, "batch_normalize", False))
    notes = tuple(f"{e.option}={e.name} (layer {', '.join(map(str, e.layers))}): the original file was not found, "
                  f"so the one beside the cfg was written from the model: "
                  + ("the same tree groups, with placeholder node names (node0, node1, ...) and parents"
                     if e.option == "tree" else "the same class indices")
                  for e, _ in plan if e.action == "reconstructed")
    return DarknetExportReport(str(cfg_path), str(weights_path), len(net.module.layers), net.params, nbytes, bns, True,
                               model=net.source, side_files=tuple(e for e, _ in plan), notes=notes)
