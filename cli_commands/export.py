"""``surgery export MODEL [--onnx OUT.onnx] [--darknet OUT.cfg]``: verified exports."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import (ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsCutoffOpt, WeightsOpt, app,
                               note, note_random_weights, examples, fmt_num, load_model, out, parse_int_list,
                               print_json, table, wrote)
from cli_commands.probing import ProbeDataOpt, check_data, probe_for
from cli_commands.writing import output_path, stages
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
    data: Optional[str] = ProbeDataOpt,
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
    if darknet is None:
        onnx = output_path(onnx, [model], "", ".onnx")
    if data and not onnx:
        raise SurgeryError("--data gives the images the ONNX export is checked on; a Darknet export is read back "
                           "to identical tensors instead (add --onnx, or drop --data)")
    check_data(data)
    import torch

    from surgery.outputs import plan_outputs, write_outputs

    outs = plan_outputs(None, darknet=darknet, onnx=onnx, force=force, inputs=[model])
    with stages("loading", *(["exporting ONNX and verifying it"] * bool(onnx)),
                *(["writing Darknet cfg + weights"] * bool(darknet))) as step:
        step("loading")
        net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
        note_random_weights(net)
        w = write_outputs(net, outs, force=force, inputs=[model], step=step,
                          onnx_options={"batch": fixed, "dtype": getattr(torch, dt), "opset": opset,
                                        "probe": probe_for(data, net)})
    reports = {k: v for k, v in (("onnx", w.onnx), ("darknet", w.darknet)) if v is not None}
    for n in w.darknet.notes if w.darknet else ():  # a tree file written from the model: placeholder names
        note(n)
    if json_out:
        print_json({"model": model, "onnx": reports.get("onnx"), "darknet": reports.get("darknet")})
        return
    rows = []
    if "onnx" in reports:
        r = reports["onnx"]
        rows.append(("onnx", r.output, f"opset {r.opset} ({r.exporter}), batch {r.batch or 'dynamic'}, {r.dtype}, "
                     f"outputs {', '.join(r.output_names)}",
                     f"ONNX Runtime vs PyTorch on {r.probe['source'] if r.probe else 'probe inputs'}: "
                     f"max abs {fmt_num(r.max_abs)}, max rel {fmt_num(r.max_rel)} (≤ {r.rtol:g})"))
    side = []
    if "darknet" in reports:
        r = reports["darknet"]
        side = [f for f in r.side_files if f.action != "present"]
        files = " + ".join([r.output, r.weights, *(f.path for f in r.side_files)])
        rows.append(("darknet", files, f"{r.layers} layers ({r.batchnorms} batch-normalised), "
                     f"{r.params:,} params, {r.weights_bytes:,} bytes",
                     "read back from its directory: identical tensors"
                     + (", " + " and ".join(f"{f.option}=" for f in r.side_files) if r.side_files else "")))
    # files, the description and the check sentence fold onto more lines instead of being cut or
    # left out; rich wraps them at spaces, so a number stays whole while its column is wider than
    # it (at 80 columns each gets about 20)
    out().print(table(f"exported {model}", ["format", "files", "what", "check"], rows,
                      fold=("files", "what", "check")))
    for p in outs.paths:
        wrote(p)
    for f in side:
        wrote(f.path, f"the {f.option}= file of layer {', '.join(map(str, f.layers))}, "
                      + (f"copied from {f.source}" if f.action == "copied" else "written from the model"))
