"""``surgery share --at K BASE TASK...``: one network, the backbone run once, every head."""

from __future__ import annotations

from typing import List, Optional

import typer

from cli_commands.base import (app, examples, fmt_num, human, load_models, note_random_weights, out,
                               parse_layer_list, print_json, table, wrote)
from cli_commands.option_groups import EACH_MODEL, declared
from cli_commands.probing import ProbeDataOpt, check_data, probe_for
from cli_commands.writing import output_path, stages
from surgery.core.errors import SurgeryError

DEFAULT_RTOL = 1e-5  # surgery.share.DEFAULT_RTOL (not imported here: the CLI starts without torch)


@app.command("share", epilog=examples(
    "surgery share --at 74 base.pt text.pt                  # writes base-text@74.pt",
    "surgery share --at 74 base.pt text.pt logo.pt -o shared.pt --darknet shared.cfg --onnx shared.onnx",
    "surgery share --sweep 40,48,64,73 zoo:yolov3           # savings per extra task; writes nothing",
))
@declared(EACH_MODEL)
def share_cmd(
    models: List[str] = typer.Argument(..., help="BASE, then one or more TASK models (FILE.pt, FILE.cfg, zoo:NAME)."),
    at: Optional[str] = typer.Option(None, "--at", help="Last shared layer (index or module name): layers 0..K come "
                                                         "from BASE, each TASK adds its layers K+1..end."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="The combined checkpoint (.pt); default: "
                                                                      "BASE-TASK...@K.pt in the current directory."),
    darknet: Optional[str] = typer.Option(None, "--darknet", help="Also write the combined net as a Darknet OUT.cfg "
                                                                  "+ OUT.weights (Darknet detectors only)."),
    onnx: Optional[str] = typer.Option(None, "--onnx", help="Also export the combined net to ONNX (verified)."),
    sweep_at: Optional[str] = typer.Option(None, "--sweep", help="Comma list of cut points, e.g. 40,48,64,73: print "
                                                                 "the savings at each and write nothing."),
    allow_diverged: bool = typer.Option(False, "--allow-diverged", help="Share although a TASK's layers 0..K differ "
                                                                        "from BASE's; report how far each head moves."),
    rtol: float = typer.Option(DEFAULT_RTOL, "--rtol", help="Largest relative output difference a head may show."),
    data: Optional[str] = ProbeDataOpt,
    *, force, json_out, arch, weights, trust_pickle, input,
):
    """One network from BASE and TASK models: layers 0..K run once, then every head.

    Layers 0..K come from BASE, each TASK contributes its layers K+1..end (a Darknet cfg for
    Darknet detectors, else a torch.fx graph). Every head is checked against its source model
    before anything is written; the savings against separate models are reported. --sweep
    prints the savings only.
    """
    if sweep_at is not None:
        for opt, val in (("--at", at), ("-o", output), ("--darknet", darknet), ("--onnx", onnx)):
            if val is not None:
                raise SurgeryError(f"--sweep prints savings and writes nothing; drop {opt}")
        ats = parse_layer_list(sweep_at, "--sweep")
        from surgery.share import sweep

        nets = load_models(models, arch, weights, trust_pickle, input)
        rep = sweep(nets[0], nets[1:], ats)
        if json_out:
            print_json(rep)
        else:
            render_sweep(rep)
        return
    if at is None:
        raise SurgeryError("--at K is required: the last layer BASE shares (e.g. --at 74 for YOLOv3); "
                           "--sweep K,K,... prints the savings at several cuts")
    if len(models) < 2:
        raise SurgeryError(f"share needs BASE and at least one TASK model; got only {models[0]}")
    from surgery.outputs import plan_outputs, write_outputs

    check_data(data)
    outs = plan_outputs(output_path(output, models, f"@{at}"), darknet=darknet, onnx=onnx, force=force,
                        inputs=models)  # refused before the (slow) work
    import dataclasses

    from surgery.share import DivergedError, share

    steps = ["loading models", "sharing and checking every head"]
    steps += ["writing Darknet cfg + weights"] * (darknet is not None) + ["exporting ONNX"] * (onnx is not None)
    with stages(*steps, "writing the checkpoint") as step:
        step("loading models")
        nets = load_models(models, arch, weights, trust_pickle, input)
        for n in nets:
            note_random_weights(n)
        step("sharing and checking every head")
        try:
            net, rep = share(nets[0], nets[1:], at, allow_diverged=allow_diverged, rtol=rtol,
                             darknet=True if darknet is not None else None, probe=probe_for(data, nets[0]))
        except DivergedError as e:
            if json_out:
                print_json({"error": str(e), "heads": [h.to_json() for h in e.heads]})
            else:
                render_diverged(e)
            raise
        w = write_outputs(net, outs, force=force, inputs=models, step=step)
    extra: dict = {}
    if w.darknet is not None:
        extra["darknet"] = {"output": darknet, "weights": str(outs.darknet[1])}
    if w.onnx is not None:
        extra["onnx"] = {**w.onnx.to_json(), "output": onnx}
    written = w.paths
    rep = dataclasses.replace(rep, output=str(written[0]), **extra)
    if json_out:
        print_json(rep)
        return
    render(rep)
    for p in written:
        wrote(p)


def _g(x) -> str:
    return "-" if x is None else fmt_num(x)


def render(rep) -> None:
    k = rep.at
    rows = [("0 base" if i == 0 else f"{i} task", h.model, h.outputs, "yes" if h.layers_equal else "NO (diverged)",
             _g(h.max_abs), _g(h.max_rel)) for i, h in enumerate(rep.heads)]
    out().print(table(
        f"share at layer {k} ({rep.at_name}): {rep.representation} representation, {rep.layers} layers; "
        f"each head vs its source model on {rep.probe['source'] if rep.probe else 'probe inputs'} "
        f"{'x'.join(map(str, rep.input_shape))}",
        ["head", "model", "outputs", f"0..{k} equal", "max abs", "max rel"], rows,
        right=["outputs", "max abs", "max rel"]))
    n = len(rep.heads) - 1
    srows = []
    for what, pair, frac in (("params", rep.params, rep.saved_fraction.params),
                             ("MACs", rep.macs, rep.saved_fraction.macs)):
        srows.append((what, f"{pair.combined:,} ({human(pair.combined)})", f"{pair.separate:,} ({human(pair.separate)})",
                      f"{pair.combined / pair.separate:.3f}" if pair.separate else "-", f"{frac:.3f}"))
    out().print(table(f"savings: 1 model sharing layers 0..{k} vs {n + 1} separate models; 'saved' is the "
                      "fraction of BASE that each extra task no longer needs",
                      ["", "combined", "separate", "ratio", "saved"], srows,
                      right=["combined", "separate", "ratio", "saved"]))
    edges = ", ".join(f"{i}→{j}" for i, j in rep.cut_edges)
    out().print(f"edges crossing the cut (task layers read the shared ones): {edges}", soft_wrap=True)
    moved = [h for h in rep.heads if not h.layers_equal]
    if moved:
        out().print(f"--allow-diverged: {len(moved)} head(s) run on BASE's layers 0..{k} instead of their own; "
                    "their max abs/rel above say how far they moved")
    else:
        out().print(f"every head reproduces its source model (max rel ≤ {rep.rtol:g})")
    if rep.onnx:
        v = rep.onnx.get("verify") or {}
        out().print(f"ONNX ({rep.onnx['exporter']} exporter, opset {rep.onnx['opset']}, batch {rep.onnx['batch']}) "
                    f"verified in ONNX Runtime: max rel {_g(v.get('max_rel'))}")


def render_diverged(e) -> None:
    for h in e.heads:
        if h.layers_equal:
            continue
        rows = [(d.index, d.name, _g(d.weight_rel), _g(d.weight_max), _g(d.bias_rel)) for d in h.diverged_layers]
        out().print(table(f"{h.model}: layers that differ from the base (|task − base| / mean|base|)",
                          ["layer", "name", "weight median", "weight max", "bias median"], rows,
                          right=["layer", "weight median", "weight max", "bias median"]))


def render_sweep(rep) -> None:
    rows = [(r.at, r.at_name, f"{r.shared['params']:,}", f"{r.shared['macs']:,}", f"{r.saved_fraction.params:.3f}",
             f"{r.saved_fraction.macs:.3f}") for r in rep.sweep]
    out().print(table(f"share sweep over {rep.models[0]} (params {rep.totals['params']:,}, MACs "
                      f"{rep.totals['macs']:,}): what each extra task saves by sharing layers 0..K",
                      ["K", "layer", "shared params", "shared MACs", "saved params", "saved MACs"], rows,
                      right=["K", "shared params", "shared MACs", "saved params", "saved MACs"]))
