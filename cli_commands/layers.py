"""``surgery layers MODEL``: the per-layer table (like Darknet's own printout) with totals."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import (ArchOpt, SurgeryError, CsvOpt, InputOpt, JsonOpt, TrustOpt, WeightsCutoffOpt, WeightsOpt,
                               app, check_formats, examples, human, load_model, out, parse_int_list, print_csv,
                               print_json, shape_str, table)

BatchOpt = typer.Option(None, "--batch", help="Batch size (costs scale with it; shapes are shown without it; default "
                                              "1, or T for a Darknet recurrent net with [net] time_steps=T). flops "
                                              "and profile take a comma list to sweep, e.g. 1,8,32.")
DtypeOpt = typer.Option(None, "--dtype", help="The model's precision for counting bytes: float32, float16, bfloat16 "
                                              "(default: the model's own).")
StrictOpt = typer.Option(False, "--strict", help="Fail (exit 2) if any op has no cost formula instead of listing it.")
FlopsOpt = typer.Option(False, "--flops", help="Also show a FLOPs column (= 2 x MACs; the JSON always has both).")


def shapes_str(shapes) -> str:
    return " + ".join(shape_str(s) for s in shapes) if shapes else "-"


def report_header(rep) -> str:
    return (f"{rep.model}  input {shape_str(rep.input_shape)}  batch {rep.batch}  dtype {rep.dtype}  "
            f"({len(rep.layers)} layers, counted on the {getattr(rep, 'counted_on', 'meta')} device)")


def print_uncounted(rep) -> None:
    if not rep.uncounted:
        return
    out().print("uncounted ops (no cost formula; --strict makes this an error):", markup=False)
    for u in rep.uncounted:
        out().print(f"  {u.op} ×{u.calls} in layer {u.layer} ({u.layer_name}): "
                    f"{u.input_elements:,} elements in, {u.output_elements:,} out", markup=False)


CSV_SHAPES = {"input_shapes": shapes_str, "output_shape": shape_str}


@app.command("layers", epilog=examples("surgery layers zoo:resnet18", "surgery layers yolov3.cfg --flops",
                                       "surgery layers model.pt --input 3x224x224 --batch 8 --json"))
def layers_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    weights_cutoff: int = WeightsCutoffOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = InputOpt,
    batch: Optional[str] = BatchOpt,
    dtype: Optional[str] = DtypeOpt,
    strict: bool = StrictOpt,
    flops: bool = FlopsOpt,
    json_out: bool = JsonOpt,
    csv_out: bool = CsvOpt,
):
    """Per-layer table: index, name, type, input/output shapes, params, MACs, bytes; totals at the bottom.

    MACs are conv+linear multiply-accumulates (FLOPs = 2 x MACs); bytes are read + written at the
    layer boundary in the model's dtype. Darknet models keep Darknet's layer indices, cfg section
    names and its BFLOPs column.
    """
    from analyzers.cost import analyze

    check_formats(json_out, csv_out)
    batches = parse_int_list(batch, "--batch") if batch is not None else [None]  # None: the model's batch unit
    if len(batches) > 1:
        raise SurgeryError(f"--batch {batch}: layers shows one batch size; sweep with "
                           f"`surgery flops {model} --batch {batch}`")
    b = batches[0]
    net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
    rep = analyze(net, batch=b, dtype=dtype, strict=strict)
    t = rep.totals
    if json_out:
        print_json(rep.to_json())
        return
    if csv_out:
        rows = [l.to_json() for l in rep.layers]
        keys = list(rows[0]) if rows else []
        print_csv(keys, ([CSV_SHAPES[k](v) if k in CSV_SHAPES else v for k, v in r.items()] for r in rows))
        return
    darknet = rep.darknet
    fl_col = "BFLOPs" if darknet else "FLOPs"
    cols = ["#"] + ([] if darknet else ["name"]) + ["type", "input", "output", "params", "MACs"]
    cols += [fl_col] if (darknet or flops) else []
    cols += ["bytes"]
    rows = []
    for l in rep.layers:
        row = [l.index] + ([] if darknet else [l.name]) + [l.type, shapes_str(l.input_shapes),
                                                             shape_str(l.output_shape),
                                                             f"{l.params:,}" if l.params else "",
                                                             human(l.macs) if l.macs else ""]
        if darknet:  # Darknet's BFLOPs column counts convolutions only (the `darknet` convention)
            bfl = rep.value("darknet", l)
            row.append(f"{bfl / 1e9:.3f}" if bfl else "")
        elif flops:
            row.append(human(l.flops) if l.flops else "")
        rows.append(row + [human(l.bytes)])
    total = ["total"] + ([] if darknet else [""]) + ["", "", "", f"{t.params:,}", human(t.macs)]
    if darknet:
        total.append(f"{rep.value('darknet') / 1e9:.3f}")
    elif flops:
        total.append(human(t.flops))
    rows.append(total + [human(t.bytes)])
    out().print(table(report_header(rep), cols, rows, right=("#", "params", "MACs", "FLOPs", "BFLOPs", "bytes"),
                      drop=("input", "type")))
    out().print(f"MACs: conv+linear multiply-accumulates ({t.macs:,}); FLOPs = 2 x MACs ({t.flops:,}); "
                f"other ops (BN, activations, adds, pooling...): {t.other_macs:,} MAC-equivalents "
                f"(`surgery flops --convention all`); bytes: read {t.bytes_read:,} + written {t.bytes_written:,} "
                f"at layer boundaries, {rep.dtype}", markup=False)
    print_uncounted(rep)
