"""Writing a model: a checkpoint, a Darknet ``.cfg`` + ``.weights``, an ONNX graph — any of
them, every file or none.

The commands that write models (``fold``, ``share``, ``regroup``, ``export``) make two calls:

1. :func:`plan_outputs` before the slow work: the names are right (a ``.pt`` checkpoint, a
   ``.cfg`` whose ``.weights`` goes beside it, a ``.onnx``), all different, none an input,
   none an existing file without ``force``, every directory writable
   (:func:`surgery.core.files.check_outputs`);
2. :func:`write_outputs` after it: one :func:`surgery.core.files.atomic_write` over every
   file — the Darknet pair is read back to identical tensors
   (:func:`surgery.export.write_darknet`), the ONNX graph is verified in ONNX Runtime
   (:func:`surgery.export.export_onnx`) — so a failure anywhere leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from surgery.core.checkpoint import check_checkpoint_name, checkpoint_dict
from surgery.core.errors import SurgeryError
from surgery.core.files import atomic_write, check_outputs
from surgery.core.net import Net
from surgery.export import DarknetExportReport, ExportReport, darknet_side_files, export_onnx, write_darknet


@dataclass(frozen=True)
class Outputs:
    """The files a command will write (checked by :func:`plan_outputs`)."""

    checkpoint: Path | None
    darknet: tuple[Path, Path] | None = None  # .cfg, .weights
    onnx: Path | None = None

    @property
    def paths(self) -> list[Path]:
        """Checkpoint, ONNX, Darknet .cfg and .weights: those asked for, in that order."""
        return [p for p in (self.checkpoint, self.onnx, *(self.darknet or ())) if p is not None]


@dataclass(frozen=True)
class Written:
    paths: tuple[Path, ...]  # in the order of Outputs.paths
    darknet: DarknetExportReport | None = None
    onnx: ExportReport | None = None


def plan_outputs(checkpoint: str | Path | None, *, darknet: str | Path | None = None, onnx: str | Path | None = None,
                 force: bool = False, inputs: Iterable[str | Path] = ()) -> Outputs:
    """The outputs of a command, refused now (one line) if any cannot be written."""
    if darknet is not None and Path(darknet).suffix.lower() != ".cfg":
        raise SurgeryError(f"--darknet {darknet}: name the .cfg to write (its .weights goes beside it)")
    if onnx is not None and Path(onnx).suffix.lower() != ".onnx":
        raise SurgeryError(f"--onnx {str(onnx)!r}: an ONNX file is named .onnx; give a path ending in .onnx")
    outs = Outputs(None if checkpoint is None else Path(checkpoint),
                   (Path(darknet), Path(darknet).with_suffix(".weights")) if darknet else None,
                   None if onnx is None else Path(onnx))
    paths = outs.paths
    if not paths:
        raise SurgeryError("nothing to write; name an output")
    if len({p.resolve() for p in paths}) != len(paths):
        raise SurgeryError(f"the outputs {', '.join(map(str, paths))} must be different files")
    check_outputs(paths, force=force, inputs=inputs)
    if outs.checkpoint is not None:
        check_checkpoint_name(outs.checkpoint)  # a checkpoint is a .pt: after the input/output check
    return outs


def write_outputs(net: Net, outputs: Outputs, *, force: bool = False, inputs: Iterable[str | Path] = (),
                  step: Callable[[str], None] | None = None, onnx_options: Mapping | None = None) -> Written:
    """Write ``net`` to every file of ``outputs`` atomically (all or none). ``step(name)`` is
    told when each slow part starts (a command's progress line); ``onnx_options`` go to
    :func:`surgery.export.export_onnx` (``batch``, ``dtype``, ``opset``, ``probe``)."""
    step = step or (lambda name: None)
    inputs = [*inputs, *dict(net.metadata.get("sources", {}))]  # the files the net was read from
    if outputs.darknet is not None:  # a clashing tree=/map= file beside the cfg: refused before the slow work
        darknet_side_files(net, outputs.darknet[0], force=force)
    reports: dict = {}

    def write(tmps: list[Path]) -> None:
        tmp = dict(zip(map(str, outputs.paths), tmps))
        if outputs.onnx is not None:
            step("exporting ONNX and verifying it")
            reports["onnx"] = export_onnx(net, tmp[str(outputs.onnx)], force=True, inputs=inputs,
                                          **dict(onnx_options or {}))
        if outputs.darknet is not None:
            step("writing Darknet cfg + weights")
            cfg, weights = outputs.darknet
            reports["darknet"] = write_darknet(net, tmp[str(cfg)], tmp[str(weights)], force=force, inputs=inputs)
        if outputs.checkpoint is not None:
            step("writing the checkpoint")
            torch.save(checkpoint_dict(net), tmp[str(outputs.checkpoint)])

    paths = atomic_write(outputs.paths, write, force=force, inputs=inputs)
    # the reports name the files as given, not the temporary paths they were made at
    dk, ox = reports.get("darknet"), reports.get("onnx")
    if ox is not None:
        ox = dataclasses.replace(ox, output=str(outputs.onnx))
    if dk is not None:
        cfg, weights = outputs.darknet  # side files lie beside the cfg
        side = tuple(dataclasses.replace(f, path=str(cfg.parent / f.name)) for f in dk.side_files)
        dk = dataclasses.replace(dk, output=str(cfg), weights=str(weights), side_files=side)
    return Written(tuple(paths), dk, ox)
