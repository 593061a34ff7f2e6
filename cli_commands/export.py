"""``surgery export MODEL [--onnx OUT.onnx] [--darknet OUT.cfg]``: verified exports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_commands.base import (ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsCutoffOpt, WeightsOpt, app,
                               note_random_weights, examples, fmt_num, load_model, out, parse_int_list, print_json,
                               table, wrote)
from cli_commands.writing import check_onnx_name, output_path, stages
from surgery.core.errors import SurgeryError


@app.command("export", epilog=examples(
    "surgery export zoo:yolov3_tiny                          # writes yolov3_tiny.onnx, dynamic batch",
    "surgery export shared.pt --onnx shared.onnx --batch 1",
    "surgery export yolov3-folded.pt --darknet yolov3-folded.cfg   # + yolov3-folded.weights",
))
def export(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    onnx: Optional[str] = typer.Option(None, "--onnx", help="Write ONNX here (checked against PyTorch with ONNX "
                                                            "Runtime first); default when no --darknet: MODEL.onnx."),
    darknet: Optional[str] = typer.Option(None, "--darknet", help="Write Darknet OUT.cfg + OUT.weights "
                                                                  "(Darknet-built models)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="ONNX: fix the batch size (default: a dynamic batch "
                                                              "axis)."),
    dtype: str = typer.Option("float32", "--dtype", help="ONNX: the dtype the exported model runs in: float32 or "
                                                         "float16."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)."),
    arch: str = ArchOpt,
    weights: str = WeightsOpt,
    weights_cutoff: int = WeightsCutoffOpt,
    trust_pickle: bool = TrustOpt,
    input: str = InputOpt,
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
):
    """Export a model to ONNX and/or Darknet cfg+weights, verified before anything is written.

    ONNX: input `input` with a dynamic batch axis (unless --batch), outputs named by head
    (head0_out0, head0_out1, ...; a shared net's task heads are head1_..., head2_...).
    Darknet: the files are read back to identical tensors.
    """
    from surgery.core.dtypes import dtype_name

    dt = dtype_name(dtype, ("float32", "float16"))
    fixed = None
    if batch is not None:
        vals = parse_int_list(batch, "--batch")
        if len(vals) != 1:
            raise SurgeryError(f"--batch {batch}: an ONNX file has one batch size; give one value (or none for a "
                               "dynamic batch axis)")
        fixed = vals[0]
    if darknet and not darknet.lower().endswith(".cfg"):
        raise SurgeryError(f"--darknet {darknet!r}: give the .cfg path; the .weights goes beside it")
    if darknet is None:
        onnx = output_path(onnx, [model], "", ".onnx")
    check_onnx_name(onnx)
    outs = ([onnx] if onnx else []) + ([darknet, str(Path(darknet).with_suffix(".weights"))] if darknet else [])
    if len({str(Path(p).resolve()) for p in outs}) != len(outs):
        raise SurgeryError(f"the outputs {', '.join(outs)} must be different files")
    from surgery.core import io as sio

    sio.check_outputs(outs, force=force, inputs=[model])
    import torch

    from surgery.export import export_onnx, write_darknet

    reports: dict = {}
    with stages("loading", *(["exporting ONNX and verifying it"] * bool(onnx)),
                *(["writing Darknet cfg + weights"] * bool(darknet))) as step:
        step("loading")
        net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
        note_random_weights(net)

        def write(tmps):
            i = 0
            if onnx:
                step("exporting ONNX and verifying it")
                reports["onnx"] = export_onnx(net, tmps[0], batch=fixed, dtype=getattr(torch, dt), opset=opset,
                                              force=True)
                i = 1
            if darknet:
                step("writing Darknet cfg + weights")
                reports["darknet"] = write_darknet(net, tmps[i], tmps[i + 1])

        sio.atomic_write(outs, write, force=force, inputs=[model])
    import dataclasses

    # the reports name the temporary files; show the real ones
    if "onnx" in reports:
        reports["onnx"] = dataclasses.replace(reports["onnx"], output=onnx)
    if "darknet" in reports:
        reports["darknet"] = dataclasses.replace(reports["darknet"], output=darknet, weights=outs[-1])
    if json_out:
        print_json({"model": model, "onnx": reports.get("onnx"), "darknet": reports.get("darknet")})
        return
    rows = []
    if "onnx" in reports:
        r = reports["onnx"]
        rows.append(("onnx", r.output, f"opset {r.opset} ({r.exporter}), batch {r.batch or 'dynamic'}, {r.dtype}, "
                     f"outputs {', '.join(r.output_names)}",
                     f"ONNX Runtime vs PyTorch: max abs {fmt_num(r.max_abs)}, max rel {fmt_num(r.max_rel)} "
                     f"(≤ {r.rtol:g})"))
    if "darknet" in reports:
        r = reports["darknet"]
        rows.append(("darknet", f"{r.output} + {r.weights}", f"{r.layers} layers ({r.batchnorms} batch-normalised), "
                     f"{r.params:,} params, {r.weights_bytes:,} bytes", "read back: identical tensors"))
    out().print(table(f"exported {model}", ["format", "files", "what", "check"], rows))
    for p in outs:
        wrote(p)
