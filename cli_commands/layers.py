"""``surgery layers MODEL``: the per-layer table (like Darknet's own printout) with totals."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from analyzers.cost import CostReport, LayerCost, analyze
from cli_commands.base import (ArchOpt, InputOpt, JsonOpt, TrustOpt, WeightsOpt, app, console, human, load_model,
                               print_csv, print_json, shape_str, table)

BatchOpt = typer.Option(1, "--batch", help="Batch size (costs scale with it; shapes are shown without it).")
DtypeOpt = typer.Option(None, "--dtype", help="Count bytes for this dtype (float32, float16, bfloat16; default: the model's).")
StrictOpt = typer.Option(False, "--strict", help="Fail (exit 2) if any op has no cost formula instead of listing it.")
CsvOpt = typer.Option(False, "--csv", help="Print CSV instead of a table.")


def is_darknet_report(rep: CostReport) -> bool:
    return bool(rep.layers) and all(l.name == f"layers.{l.index}" for l in rep.layers)


def shapes_str(shapes) -> str:
    return " + ".join(shape_str(s) for s in shapes) if shapes else "-"


def layer_json(l: LayerCost) -> dict:
    return {"index": l.index, "name": l.name, "type": l.type, "input_shapes": [list(s) for s in l.input_shapes],
            "output_shape": list(l.output_shape), "params": l.params, "macs": l.macs, "flops": l.flops,
            "bytes_read": l.bytes_read, "bytes_written": l.bytes_written, "other_macs": l.other_macs}


def report_header(rep: CostReport) -> str:
    return (f"{rep.model}  input {shape_str(rep.input_shape)}  batch {rep.batch}  dtype {rep.dtype}  "
            f"({len(rep.layers)} layers, counted on the meta device)")


def out() -> Console:
    """The console for results: never squeezed to 80 columns when output goes to a file or pipe."""
    return console if console.is_terminal else Console(width=240, highlight=False, file=sys.stdout)


def print_table(t) -> None:
    out().print(t)


def print_uncounted(rep: CostReport) -> None:
    if not rep.uncounted:
        return
    out().print("uncounted ops (no cost formula; --strict makes this an error):", markup=False)
    for u in rep.uncounted:
        out().print(f"  {u.op} ×{u.calls} in layer {u.layer} ({u.layer_name}): "
                      f"{u.input_elements:,} elements in, {u.output_elements:,} out", markup=False)


@app.command("layers")
def layers_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = InputOpt,
    batch: int = BatchOpt,
    dtype: Optional[str] = DtypeOpt,
    strict: bool = StrictOpt,
    json_out: bool = JsonOpt,
    csv_out: bool = CsvOpt,
):
    """Per-layer table: index, name, type, input/output shapes, params, MACs, bytes; totals at the bottom.

    MACs are conv+linear multiply-accumulates (FLOPs = 2 x MACs); bytes are read + written at the
    layer boundary in the model's dtype. Darknet models keep Darknet's layer indices, cfg section
    names and its BFLOPs column.
    """
    net = load_model(model, arch, weights, trust_pickle, input)
    rep = analyze(net, batch=batch, dtype=dtype, strict=strict)
    t = rep.totals
    if json_out:
        print_json({
            "model": rep.model, "input_shape": list(rep.input_shape), "batch": rep.batch, "dtype": rep.dtype,
            "layers": [layer_json(l) for l in rep.layers],
            "totals": {"params": t.params, "macs": t.macs, "flops": t.flops, "bytes": t.bytes,
                       "bytes_read": t.bytes_read, "bytes_written": t.bytes_written, "other_macs": t.other_macs},
            "uncounted": [u.__dict__ for u in rep.uncounted], "notes": list(rep.notes),
        })
        return
    if csv_out:
        keys = list(layer_json(rep.layers[0]).keys()) if rep.layers else []
        print_csv(keys, ([shapes_str(v) if k == "input_shapes" else shape_str(v) if k == "output_shape" else v
                          for k, v in layer_json(l).items()] for l in rep.layers))
        return
    darknet = is_darknet_report(rep)
    cols = ["#", "name", "type", "input", "output", "params", "MACs", "BFLOPs" if darknet else "FLOPs", "bytes"]
    rows = []
    for l in rep.layers:
        # Darknet's BFLOPs column counts convolutions only (the `darknet` convention), not [connected]
        bfl = rep.value("darknet", l) if darknet else 0
        fl = (f"{bfl / 1e9:.3f}" if bfl else "") if darknet else (human(l.flops) if l.flops else "")
        rows.append([l.index, l.name, l.type, shapes_str(l.input_shapes), shape_str(l.output_shape),
                     f"{l.params:,}" if l.params else "", human(l.macs) if l.macs else "", fl, human(l.bytes)])
    total_fl = f"{rep.value('darknet') / 1e9:.3f}" if darknet else human(t.flops)
    rows.append(["", "total", "", "", "", f"{t.params:,}", human(t.macs), total_fl, human(t.bytes)])
    if darknet:  # names are just layers.N: the index says it, as in Darknet's printout
        cols.pop(1)
        for r in rows:
            r.pop(1)
        rows[-1][0] = "total"
    print_table(table(report_header(rep), cols, rows, right=("#", "params", "MACs", "FLOPs", "BFLOPs", "bytes")))
    out().print(f"MACs: conv+linear multiply-accumulates ({t.macs:,}); FLOPs = 2 x MACs; "
                  f"other ops (BN, activations, adds, pooling...): {t.other_macs:,} MAC-equivalents "
                  f"(`surgery flops --convention all`); bytes: read {t.bytes_read:,} + written {t.bytes_written:,} "
                  f"at layer boundaries, {rep.dtype}", markup=False)
    print_uncounted(rep)
