"""``surgery export MODEL --onnx OUT.onnx | --darknet OUT.cfg``: verified exports."""

from __future__ import annotations

from pathlib import Path

import typer

from cli_commands.base import (ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsOpt, app, console, load_model,
                               print_json, table)
from surgery import io as sio
from surgery.errors import SurgeryError


@app.command("export")
def export(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    onnx: str = typer.Option(None, "--onnx", help="Write ONNX (checked against PyTorch with ONNX Runtime first)."),
    darknet: str = typer.Option(None, "--darknet", help="Write Darknet OUT.cfg + OUT.weights (Darknet-built models)."),
    batch: int = typer.Option(1, "--batch", help="ONNX: batch size of the exported input."),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)."),
    arch: str = ArchOpt,
    weights: str = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: str = InputOpt,
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """Export a model to ONNX and/or Darknet cfg+weights, verified before anything is written."""
    from surgery.export import export_onnx, write_darknet

    if not onnx and not darknet:
        raise SurgeryError("nothing to export: pass --onnx OUT.onnx and/or --darknet OUT.cfg")
    if darknet and not darknet.endswith(".cfg"):
        raise SurgeryError(f"--darknet {darknet!r}: give the .cfg path; the .weights goes beside it")
    outs = ([onnx] if onnx else []) + ([darknet, str(Path(darknet).with_suffix(".weights"))] if darknet else [])
    sio.check_outputs(outs, force=force, inputs=[model])
    net = load_model(model, arch, weights, trust_pickle, input)
    reports = {}

    def write(tmps):
        i = 0
        if onnx:
            reports["onnx"] = export_onnx(net, tmps[0], batch=batch, opset=opset, force=True)
            i = 1
        if darknet:
            reports["darknet"] = write_darknet(net, tmps[i], tmps[i + 1])

    sio.atomic_write(outs, write, force=force, inputs=[model])
    if "onnx" in reports:  # the reports name the temporary files; show the real ones
        reports["onnx"] = _renamed(reports["onnx"], path=onnx)
    if "darknet" in reports:
        reports["darknet"] = _renamed(reports["darknet"], cfg=darknet, weights=outs[-1])
    if json_out:
        print_json(reports)
        return
    rows = []
    if "onnx" in reports:
        r = reports["onnx"]
        rows.append(("onnx", r.path, f"opset {r.opset} ({r.exporter}), batch {r.batch}, {r.dtype}",
                     f"ONNX Runtime vs PyTorch: max abs {r.max_abs:.3g}, max rel {r.max_rel:.3g} (≤ {r.rtol:g})"))
    if "darknet" in reports:
        r = reports["darknet"]
        rows.append(("darknet", f"{r.cfg} + {r.weights}", f"{r.layers} layers, {r.params:,} params, "
                     f"{r.weights_bytes:,} bytes", "read back: identical tensors"))
    console.print(table(f"exported {model}", ["format", "files", "what", "check"], rows))


def _renamed(report, **paths):
    import dataclasses

    return dataclasses.replace(report, **paths)
