"""``surgery share --at K BASE TASK... -o OUT``: one network, the backbone run once, every head."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import torch
import typer

from cli_commands.base import (ForceOpt, InputOpt, JsonOpt, app, console, human, load_model, parse_layer_list,
                               print_json, table, to_jsonable)
from surgery import io as sio
from surgery.errors import SurgeryError
from surgery.share import DEFAULT_RTOL, DivergedError, ShareReport, SweepReport, share, sweep, write_darknet


@app.command("share")
def share_cmd(
    models: List[str] = typer.Argument(..., help="BASE, then one or more TASK models (FILE.pt, FILE.cfg, zoo:NAME)."),
    at: Optional[str] = typer.Option(None, "--at", help="Last shared layer (index or module name): layers 0..K come "
                                                         "from BASE, each TASK adds its layers K+1..end."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Where to write the combined checkpoint (.pt)."),
    darknet: Optional[str] = typer.Option(None, "--darknet", help="Also write the combined net as a Darknet OUT.cfg "
                                                                  "+ OUT.weights (Darknet models only)."),
    onnx: Optional[str] = typer.Option(None, "--onnx", help="Also export the combined net to ONNX (verified)."),
    sweep_at: Optional[str] = typer.Option(None, "--sweep", help="Comma list of cut points, e.g. 40,48,64,73: print "
                                                                 "the savings at each and write nothing."),
    allow_diverged: bool = typer.Option(False, "--allow-diverged", help="Share although a TASK's layers 0..K differ "
                                                                        "from BASE's; report how far each head moves."),
    rtol: float = typer.Option(DEFAULT_RTOL, "--rtol", help="Largest relative output difference a head may show."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
    input: Optional[str] = InputOpt,
):
    """One network from BASE and TASK models: layers 0..K run once, then every head.

    Layers 0..K come from BASE, each TASK contributes its layers K+1..end (Darknet cfg or fx
    graph). Every head is checked against its source model before OUT is written; the
    savings against separate models are reported. --sweep prints the savings only.
    """
    if not models:
        raise SurgeryError("give BASE and at least one TASK model")
    if sweep_at is not None:
        for opt, val in (("--at", at), ("-o", output), ("--darknet", darknet), ("--onnx", onnx)):
            if val is not None:
                raise SurgeryError(f"--sweep prints savings and writes nothing; drop {opt}")
        ats = parse_layer_list(sweep_at, "--sweep")
        nets = [load_model(m, input_shape=input) for m in models]
        rep = sweep(nets[0], nets[1:], ats)
        if json_out:
            print_json(rep)
        else:
            render_sweep(rep)
        return
    if at is None:
        raise SurgeryError("--at K is required: the last layer BASE shares (e.g. --at 74 for YOLOv3)")
    if output is None:
        raise SurgeryError("-o OUT.pt is required (or use --sweep to print the savings only)")
    if len(models) < 2:
        raise SurgeryError(f"share needs BASE and at least one TASK model; got only {models[0]}")
    paths = [output]
    if darknet is not None:
        if not darknet.lower().endswith(".cfg"):
            raise SurgeryError(f"--darknet {darknet}: name the .cfg to write (its .weights goes beside it)")
        paths += [darknet, str(Path(darknet).with_suffix(".weights"))]
    if onnx is not None:
        paths.append(onnx)
    if len({str(Path(p).resolve()) for p in paths}) != len(paths):
        raise SurgeryError(f"the outputs {', '.join(paths)} must be different files")
    sio.check_outputs(paths, force=force, inputs=models)  # refuse before the (slow) work

    nets = [load_model(m, input_shape=input) for m in models]
    try:
        net, rep = share(nets[0], nets[1:], at, allow_diverged=allow_diverged, rtol=rtol,
                         darknet=True if darknet is not None else None)
    except DivergedError as e:
        if json_out:
            print_json({"error": str(e), "heads": [dataclasses.asdict(h) for h in e.heads]})
        else:
            render_diverged(e)
        raise
    onnx_rep = {}

    def write(tmps: list[Path]) -> None:
        i = 1
        if darknet is not None:
            write_darknet(net, tmps[1], tmps[2])
            i = 3
        if onnx is not None:
            from surgery.export import export_onnx

            e = export_onnx(net, tmps[i], force=True, inputs=models)
            onnx_rep.update(exporter=e.exporter, opset=e.opset, max_abs=e.max_abs, max_rel=e.max_rel)
        torch.save(sio.checkpoint_dict(net), tmps[0])

    written = sio.atomic_write(paths, write, force=force, inputs=models)
    rep = dataclasses.replace(rep, output=str(written[0]), darknet=str(written[1]) if darknet is not None else None,
                              onnx=str(written[-1]) if onnx is not None else None)
    if json_out:
        print_json({**to_jsonable(rep), **({"onnx_export": onnx_rep} if onnx_rep else {})})
        return
    render(rep)
    for p in written:
        console.print(f"wrote {p}")
    if onnx_rep:
        console.print(f"ONNX ({onnx_rep['exporter']} exporter, opset {onnx_rep['opset']}) verified in ONNX Runtime: "
                      f"max rel diff {onnx_rep['max_rel']:.3g}")


def _g(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def render(rep: ShareReport) -> None:
    k = rep.at
    rows = [("0 base" if i == 0 else f"{i} task", h.source, h.outputs, "yes" if h.layers_equal else "NO (diverged)",
             _g(h.max_abs_diff), _g(h.max_rel_diff)) for i, h in enumerate(rep.heads)]
    console.print(table(
        f"share at layer {k} ({rep.at_name}): {rep.representation} representation, {rep.layers} layers; "
        f"each head vs its source model on probe inputs {'x'.join(map(str, rep.probe_shape))}",
        ["head", "source", "outputs", f"0..{k} equal", "max abs diff", "max rel diff"], rows,
        right=["outputs", "max abs diff", "max rel diff"]))
    n = len(rep.heads) - 1
    srows = []
    for what, pair, frac in (("params", rep.params, rep.saved_fraction.params),
                             ("MACs", rep.macs, rep.saved_fraction.macs)):
        srows.append((what, f"{pair.combined:,} ({human(pair.combined)})", f"{pair.separate:,} ({human(pair.separate)})",
                      f"{pair.combined / pair.separate:.3f}" if pair.separate else "-", f"{frac:.3f}"))
    console.print(table(f"savings: 1 model sharing layers 0..{k} vs {n + 1} separate models; 'saved' is the "
                        "fraction of BASE that each extra task no longer needs",
                        ["", "combined", "separate", "ratio", "saved"], srows,
                        right=["combined", "separate", "ratio", "saved"]))
    edges = ", ".join(f"{i}→{j}" for i, j in rep.cut_edges)
    console.print(f"edges crossing the cut (task layers read the shared ones): {edges}")
    moved = [h for h in rep.heads if not h.layers_equal]
    if moved:
        console.print(f"--allow-diverged: {len(moved)} head(s) run on BASE's layers 0..{k} instead of their own; "
                      "their max diffs above say how far they moved")
    else:
        console.print(f"every head reproduces its source model (max rel diff ≤ {rep.rtol:g})")


def render_diverged(e: DivergedError) -> None:
    for h in e.heads:
        if h.layers_equal:
            continue
        rows = [(d.index, d.name, _g(d.weight_rel), _g(d.weight_max), _g(d.bias_rel)) for d in h.diverged_layers]
        console.print(table(f"{h.source}: layers that differ from the base (|task − base| / mean|base|)",
                            ["layer", "name", "weight median", "weight max", "bias median"], rows,
                            right=["layer", "weight median", "weight max", "bias median"]))


def render_sweep(rep: SweepReport) -> None:
    rows = [(r.at, r.at_name, f"{r.shared['params']:,}", f"{r.shared['macs']:,}", f"{r.saved_fraction.params:.3f}",
             f"{r.saved_fraction.macs:.3f}") for r in rep.sweep]
    console.print(table(f"share sweep over {rep.base} (params {rep.total['params']:,}, MACs {rep.total['macs']:,}): "
                        "what each extra task saves by sharing layers 0..K",
                        ["K", "layer", "shared params", "shared MACs", "saved params", "saved MACs"], rows,
                        right=["K", "shared params", "shared MACs", "saved params", "saved MACs"]))
