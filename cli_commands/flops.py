"""``surgery flops MODEL``: counts under a named convention, by layer/module/operator, with
roofline bounds (--device-spec), fvcore beside the native count (--backend fvcore), and
sweeps over input shapes and batch sizes."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import (ArchOpt, CsvOpt, JsonOpt, SurgeryError, TrustOpt, WeightsCutoffOpt, WeightsOpt, app,
                               check_formats, examples, fmt_ms, human, load_model, out, parse_int_list, parse_shapes,
                               print_csv, print_json, shape_str, table)
from cli_commands.layers import DtypeOpt, StrictOpt, print_uncounted, report_header

from analyzers.conventions import CONVENTIONS  # torch-free: names and descriptions only

BY = ("layer", "module", "operator")
CONVENTION_NAMES = tuple(CONVENTIONS)
SPEC_NAMES = ("h100-sxm", "h200", "a100", "cpu")  # analyzers.roofline.spec_names() (imports torch; a test keeps them equal)

DeviceSpecOpt = typer.Option(None, "--device-spec", help=f"Roofline bounds on this device: {', '.join(SPEC_NAMES)} "
                                                         "(cpu: this machine's measured peaks, an estimate).")


def _fmt(conv, n: int) -> str:
    if conv.display_scale != 1.0:
        return f"{n * conv.display_scale:.3f}"
    return human(n)


def _unit(conv) -> str:
    return conv.display_unit or conv.unit


def _convention_lines(conv) -> list[str]:
    return [f"convention: {conv.name} ({_unit(conv)}) — {conv.description}",
            f"  includes: {'; '.join(conv.includes)}",
            f"  excludes: {'; '.join(conv.excludes)}"]


def _rows(rep, conv, by: str, depth: int, roof, fv) -> list[dict]:
    """One dict per row of the chosen view (the JSON ``layers`` or ``groups``); keys name units."""
    rows = []
    if by == "layer":
        bounds = {b.index: b for b in roof.layers} if roof else {}
        for l in rep.layers:
            r = {**l.to_json(), conv.field: rep.value(conv, l)}
            if roof:
                b = bounds[l.index]
                r.update(intensity_flop_per_byte=b.intensity, bound=b.bound, roofline_ms=b.floor_ms)
            if fv is not None:
                r["fvcore_backend_macs"] = fv.by_module.get(l.name) if l.kind == "module" else None
            rows.append(r)
        return rows
    for g, ops in rep.group_ops(by, depth):
        r = {**g.to_json(), conv.field: sum(conv.op_value(o) for o in ops)}
        if by == "module" and fv is not None:  # fvcore's "" is the whole model, not its own ops
            r["fvcore_backend_macs"] = fv.by_module.get(g.key) if g.key != "(model)" else None
        rows.append(r)
    return rows


def _totals(rep, conv) -> dict:
    return {**rep.totals.to_json(), conv.field: rep.value(conv)}


def _single(net, rep, conv, by: str, depth: int, spec, precision, backend: str, json_out: bool,
            csv_out: bool) -> None:
    from analyzers.roofline import roofline

    roof = roofline(rep, spec, precision=precision) if spec else None
    fv = None
    if backend == "fvcore":
        from analyzers.fvcore_backend import fvcore_count

        fv = fvcore_count(net, rep.input_shape, batch=rep.batch)
    rows = _rows(rep, conv, by, depth, roof, fv)
    if json_out:
        doc = {"model": rep.model, "input_shape": list(rep.input_shape), "batch": rep.batch, "dtype": rep.dtype,
               "convention": conv.to_json(), "by": by, "layers" if by == "layer" else "groups": rows,
               "totals": _totals(rep, conv), "uncounted": [u.__dict__ for u in rep.uncounted],
               "notes": list(rep.notes)}
        if roof:
            doc["roofline"] = {k: v for k, v in roof.to_json().items() if k != "layers"}
        if fv is not None:
            doc["fvcore"] = {"fvcore_macs": fv.total, "matmul_macs": fv.matmul_macs, "by_operator": fv.by_operator,
                             "unsupported_ops": fv.unsupported, "seconds": fv.seconds, "note": fv.note,
                             "native_macs": rep.totals.macs, "native_fvcore_macs": rep.totals.fvcore_macs}
        print_json(doc)
        return
    if csv_out:
        keys = list(rows[0].keys()) if rows else []
        fmt = {"output_shape": shape_str, "input_shapes": lambda v: " + ".join(shape_str(s) for s in v)}
        print_csv(keys, ([fmt[k](v) if k in fmt else v for k, v in r.items()] for r in rows))
        return
    _render(rep, conv, by, rows, rep.value(conv), roof, fv)


def _render(rep, conv, by, rows, total, roof, fv) -> None:
    unit = _unit(conv)
    darknet = rep.darknet
    share = (lambda v: f"{100 * v / total:.1f}%" if total else "")
    if by == "layer":
        cols = ["#"] + ([] if darknet else ["name"]) + ["type", "output", unit, "share", "other MACs", "bytes"]
        body = [[r["index"]] + ([] if darknet else [r["name"]]) + [r["type"], shape_str(r["output_shape"]),
                _fmt(conv, r[conv.field]), share(r[conv.field]), human(r["other_macs"]) if r["other_macs"] else "",
                human(r["bytes_read"] + r["bytes_written"])] for r in rows]
    else:
        count = "layers" if by == "module" else "calls"
        cols = ["module" if by == "module" else "operator", count, unit, "share", "other MACs", "bytes"]
        body = [[r["key"], r["count"], _fmt(conv, r[conv.field]), share(r[conv.field]),
                 human(r["other_macs"]) if r["other_macs"] else "", human(r["bytes_read"] + r["bytes_written"])]
                for r in rows]
    if roof and by == "layer":
        cols += ["FLOP/B", "bound", "floor µs"]
        for b, r in zip(body, rows):
            ai = r["intensity_flop_per_byte"]
            b += ["" if ai is None else f"{ai:,.1f}", r["bound"], fmt_ms(r["roofline_ms"] * 1e3)]
    if fv is not None and by != "operator":
        cols.append("fvcore MACs")
        for b, r in zip(body, rows):
            v = r.get("fvcore_backend_macs")
            b.append("" if v is None else human(v))
    body.append(["total"] + [""] * (cols.index(unit) - 1) + [_fmt(conv, total), "100%"]
                + [""] * (len(cols) - cols.index(unit) - 2))
    out().print(table(report_header(rep), cols, body, right=(unit, "share", "other MACs", "bytes", "FLOP/B",
                                                             "floor µs", "fvcore MACs", "calls", "layers", "#"),
                      drop=("other MACs", "share", "type", "FLOP/B")))
    for line in _convention_lines(conv):
        out().print(line, markup=False)
    out().print(f"total: {total:,} {conv.unit}" + (f" = {_fmt(conv, total)} {unit}" if conv.display_scale != 1 else "")
                + f"  |  MACs {rep.totals.macs:,}  FLOPs {rep.totals.flops:,}  other {rep.totals.other_macs:,} "
                f"MAC-equivalents  bytes {rep.totals.bytes:,}  params {rep.totals.params:,}", markup=False)
    if roof:
        est = " (an estimate: peaks measured on this machine)" if roof.estimate else ""
        out().print(f"roofline on {roof.device}{est} ({roof.precision} peak {human(roof.peak_flops, 'FLOP/s')}, "
                    f"{human(roof.mem_bandwidth, 'B/s')}, ridge {roof.ridge_intensity:,.0f} FLOP/B): "
                    f"latency floor {fmt_ms(roof.floor_ms)} ms (compute {fmt_ms(roof.compute_s * 1e3)} ms, memory "
                    f"{fmt_ms(roof.memory_s * 1e3)} ms); {sum(l.bound == 'memory' for l in roof.layers)} "
                    f"memory-bound, {sum(l.bound == 'compute' for l in roof.layers)} compute-bound layers",
                    markup=False)
        for n in roof.notes:
            out().print(f"  note: {n}", markup=False)
    if fv is not None:
        same = "equal" if fv.matmul_macs == rep.totals.macs else f"differ by {fv.matmul_macs - rep.totals.macs:+,}"
        out().print(f"fvcore ({fv.note}, {fv.seconds:.2f} s): total {fv.total:,}; conv+linear {fv.matmul_macs:,} "
                    f"vs native MACs {rep.totals.macs:,} ({same}); native fvcore convention "
                    f"{rep.totals.fvcore_macs:,}", markup=False)
        if fv.unsupported:
            out().print("  fvcore skipped: " + ", ".join(f"{k} ×{v}" for k, v in sorted(fv.unsupported.items())),
                        markup=False)
    print_uncounted(rep)


def _sweep(net, reports, conv, spec, precision, backend, json_out, csv_out) -> None:
    from analyzers.roofline import roofline

    rows = []
    base = reports[0]
    for rep in reports:
        r = {"input_shape": list(rep.input_shape), "batch": rep.batch, "totals": _totals(rep, conv)}
        if spec:
            r["roofline_ms"] = roofline(rep, spec, precision=precision).floor_ms
        if backend == "fvcore":
            from analyzers.fvcore_backend import fvcore_count

            r["fvcore_backend_macs"] = fvcore_count(net, rep.input_shape, batch=rep.batch).total
        rows.append(r)
    if json_out:
        print_json({"model": base.model, "dtype": base.dtype, "convention": conv.to_json(),
                    "device_spec": spec.name if spec else None, "sweep": rows})
        return
    if csv_out:
        flat = [{"input_shape": shape_str(r["input_shape"]), "batch": r["batch"], **r["totals"],
                 **{k: v for k, v in r.items() if k not in ("input_shape", "batch", "totals")}} for r in rows]
        print_csv(list(flat[0]), (f.values() for f in flat))
        return
    unit = _unit(conv)
    cols = ["input", "batch", unit, "× first", "bytes", "× bytes", "activations", "params"]
    if spec:
        cols += [f"floor ms ({spec.name})"]
    if backend == "fvcore":
        cols += ["fvcore MACs"]
    t0 = rows[0]["totals"]
    b0, v0 = t0["bytes"] or 1, t0[conv.field] or 1
    body = []
    for r in rows:
        t = r["totals"]
        line = [shape_str(r["input_shape"]), r["batch"], _fmt(conv, t[conv.field]), f"{t[conv.field] / v0:,.2f}",
                human(t["bytes"]), f"{t['bytes'] / b0:,.2f}", human(t["activations"]), f"{t['params']:,}"]
        if spec:
            line.append(fmt_ms(r["roofline_ms"]))
        if backend == "fvcore":
            line.append(human(r["fvcore_backend_macs"]))
        body.append(line)
    out().print(table(f"{base.model}  sweep  dtype {base.dtype}", cols, body,
                      right=[c for c in cols if c not in ("input",)]))
    for line in _convention_lines(conv):
        out().print(line, markup=False)


@app.command("flops", epilog=examples("surgery flops zoo:resnet50:variant=v1", "surgery flops yolov3.cfg --convention darknet",
                                      "surgery flops zoo:resnet18 --by module --device-spec h100-sxm",
                                      "surgery flops zoo:resnet18 --input 3x224x224,3x416x416 --batch 1,8"))
def flops_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    weights_cutoff: int = WeightsCutoffOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = typer.Option(None, "--input", help="Input shape(s) without batch: 3x416x416, or a sweep "
                                        "3x224x224,3x416x416 (default: the model's)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Batch size, or a comma list to sweep: 1,8,64 "
                                        "(default 1; T for a Darknet recurrent net with [net] time_steps=T)."),
    by: str = typer.Option("layer", "--by", help="Group rows by layer, module or operator."),
    depth: int = typer.Option(2, "--depth", help="--by module: module path depth (2: layer1.0, layers.5)."),
    convention: str = typer.Option("macs", "--convention", help=f"What to count: {', '.join(CONVENTION_NAMES)}."),
    device_spec: Optional[str] = DeviceSpecOpt,
    precision: Optional[str] = typer.Option(None, "--precision", help="Roofline peak to use (float32, tf32, bfloat16, "
                                            "float16; default: --dtype)."),
    backend: str = typer.Option("native", "--backend", help="native, or fvcore: also run fvcore's FlopCountAnalysis "
                                "on real CPU tensors and show it beside the native count."),
    dtype: Optional[str] = DtypeOpt,
    strict: bool = StrictOpt,
    json_out: bool = JsonOpt,
    csv_out: bool = CsvOpt,
):
    """MACs/FLOPs under a named convention (printed with the result), by layer, module or operator;
    roofline latency floor with --device-spec; sweeps with --input A,B and --batch 1,8,64."""
    from analyzers.cost import get_convention, sweep
    from analyzers.roofline import get_spec

    by = by.strip().lower()
    if by not in BY:
        raise SurgeryError(f"--by {by!r}: choose layer, module or operator")
    backend = backend.strip().lower()
    if backend not in ("native", "fvcore"):
        raise SurgeryError(f"--backend {backend!r}: choose native or fvcore")
    if depth < 1:
        raise SurgeryError(f"--depth {depth}: must be at least 1")
    check_formats(json_out, csv_out)
    conv = get_convention(convention)
    shapes = parse_shapes(input)
    batches = parse_int_list(batch, "--batch") if batch is not None else None  # None: the model's batch unit
    spec = get_spec(device_spec) if device_spec else None
    # one --input is the model's input (an imported .onnx folds its shapes for it); a sweep counts the loaded model
    net = load_model(model, arch, weights, trust_pickle, input if shapes and len(shapes) == 1 else None, weights_cutoff)
    reports = sweep(net, shapes, batches, dtype=dtype, strict=strict)
    if len(reports) > 1:
        _sweep(net, reports, conv, spec, precision, backend, json_out, csv_out)
    else:
        _single(net, reports[0], conv, by, depth, spec, precision, backend, json_out, csv_out)
