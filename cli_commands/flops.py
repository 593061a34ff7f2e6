"""``surgery flops MODEL``: counts under a named convention, by layer/module/operator, with
roofline bounds (--device-spec), fvcore beside the native count (--backend fvcore), and
sweeps over input shapes and batch sizes."""

from __future__ import annotations

from typing import Optional

import typer

from analyzers.cost import CONVENTIONS, CostReport, GroupCost, get_convention, sweep
from analyzers.roofline import RooflineReport, get_spec, roofline, spec_names
from cli_commands.base import (ArchOpt, JsonOpt, TrustOpt, WeightsOpt, app, human, load_model, parse_int_list,
                               parse_shape, print_csv, print_json, shape_str, table)
from cli_commands.layers import (CsvOpt, DtypeOpt, StrictOpt, is_darknet_report, out, print_table, print_uncounted,
                                 report_header)
from surgery.errors import SurgeryError

BY = ("layer", "module", "operator")


def parse_shapes(text: str | None) -> list[tuple[int, ...]] | None:
    """``3x224x224,3x416x416`` -> two shapes; ``3,224,224`` (no x) -> one shape."""
    if text is None:
        return None
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) > 1 and all("x" in p.lower() for p in parts):
        return [parse_shape(p) for p in parts]
    return [parse_shape(text)]


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


def _group_json(g: GroupCost, conv, ops, by: str) -> dict:
    return {"key": g.key, "layers" if by == "module" else "calls": g.count, conv.field: sum(conv.op_value(o) for o in ops), "macs": g.macs,
            "flops": g.flops, "other_macs": g.other_macs, "fvcore_flops": g.fvcore_macs, "params": g.params,
            "bytes_read": g.bytes_read, "bytes_written": g.bytes_written, "category": g.category}


def _rows(rep: CostReport, conv, by: str, depth: int, roof: RooflineReport | None, fv) -> list[dict]:
    """One dict per row of the chosen view; every key names its unit."""
    rows = []
    if by == "layer":
        bounds = {b.index: b for b in roof.layers} if roof else {}
        for l in rep.layers:
            r = {"index": l.index, "name": l.name, "type": l.type, "output_shape": list(l.output_shape),
                 conv.field: rep.value(conv, l), "macs": l.macs, "other_macs": l.other_macs, "params": l.params,
                 "bytes_read": l.bytes_read, "bytes_written": l.bytes_written}
            if roof:
                b = bounds[l.index]
                r.update(intensity_flop_per_byte=b.intensity, bound=b.bound, floor_ms=b.floor_ms)
            if fv is not None:
                r["fvcore_backend_flops"] = fv.by_module.get(l.name) if l.kind == "module" else None
            rows.append(r)
        return rows
    groups = rep.by_module(depth) if by == "module" else rep.by_operator()
    for g in groups:
        if by == "module":
            prefix = "" if g.key == "(model)" else g.key
            ops = [o for l in rep.layers if (".".join(l.module.split(".")[:depth]) if l.module else "") == prefix
                   for o in l.ops]
        else:
            ops = [o for l in rep.layers for o in l.ops if o.op == g.key]
        r = _group_json(g, conv, ops, by)
        if by == "module" and fv is not None:  # fvcore's "" is the whole model, not its own ops
            r["fvcore_backend_flops"] = fv.by_module.get(prefix) if prefix else None
        rows.append(r)
    return rows


def _single(net, rep: CostReport, conv, by: str, depth: int, spec, precision, backend: str, json_out: bool,
            csv_out: bool) -> None:
    roof = roofline(rep, spec, precision=precision) if spec else None
    fv = None
    if backend == "fvcore":
        from analyzers.fvcore_backend import fvcore_count

        fv = fvcore_count(net, rep.input_shape, batch=rep.batch)
    rows = _rows(rep, conv, by, depth, roof, fv)
    total = rep.value(conv)
    if json_out:
        out = {"model": rep.model, "input_shape": list(rep.input_shape), "batch": rep.batch, "dtype": rep.dtype,
               "convention": conv.to_json(), "by": by, "rows": rows,
               "total": {conv.field: total, "macs": rep.totals.macs, "flops": rep.totals.flops,
                         "other_macs": rep.totals.other_macs, "fvcore_flops": rep.totals.fvcore_macs,
                         "params": rep.totals.params, "bytes": rep.totals.bytes, "bytes_read": rep.totals.bytes_read,
                         "bytes_written": rep.totals.bytes_written},
               "uncounted": [u.__dict__ for u in rep.uncounted], "notes": list(rep.notes)}
        if roof:
            out["roofline"] = {k: v for k, v in roof.to_json().items() if k != "layers"}
        if fv is not None:
            out["fvcore"] = {"total_flops": fv.total, "matmul_macs": fv.matmul_macs, "by_operator": fv.by_operator,
                             "unsupported_ops": fv.unsupported, "seconds": fv.seconds, "note": fv.note,
                             "native_matmul_macs": rep.totals.macs, "native_fvcore_convention": rep.totals.fvcore_macs}
        print_json(out)
        return
    if csv_out:
        keys = list(rows[0].keys()) if rows else []
        print_csv(keys, ([shape_str(v) if k == "output_shape" else v for k, v in r.items()] for r in rows))
        return
    _render(rep, conv, by, rows, total, roof, fv)


def _render(rep, conv, by, rows, total, roof, fv) -> None:
    unit = _unit(conv)
    darknet = is_darknet_report(rep)
    share = (lambda v: f"{100 * v / total:.1f}%" if total else "")
    if by == "layer":
        cols = ["#"] + ([] if darknet else ["name"]) + ["type", "output", unit, "share", "other MACs", "bytes"]
        body = [[r["index"]] + ([] if darknet else [r["name"]]) + [r["type"], shape_str(r["output_shape"]),
                _fmt(conv, r[conv.field]), share(r[conv.field]), human(r["other_macs"]) if r["other_macs"] else "",
                human(r["bytes_read"] + r["bytes_written"])] for r in rows]
    else:
        cols = ["module" if by == "module" else "operator", "layers" if by == "module" else "calls", unit, "share",
                "other MACs", "bytes"]
        body = [[r["key"], r["layers" if by == "module" else "calls"], _fmt(conv, r[conv.field]), share(r[conv.field]),
                 human(r["other_macs"]) if r["other_macs"] else "", human(r["bytes_read"] + r["bytes_written"])]
                for r in rows]
    if roof and by == "layer":
        cols += ["FLOP/B", "bound", "floor µs"]
        for b, r in zip(body, rows):
            ai = r["intensity_flop_per_byte"]
            b += ["" if ai is None else f"{ai:.1f}", r["bound"], f"{r['floor_ms'] * 1e3:.2f}"]
    if fv is not None and by != "operator":
        cols.append("fvcore")
        for b, r in zip(body, rows):
            v = r.get("fvcore_backend_flops")
            b.append("" if v is None else human(v))
    body.append(["total"] + [""] * (cols.index(unit) - 1) + [_fmt(conv, total), "100%"]
                + [""] * (len(cols) - cols.index(unit) - 2))
    print_table(table(report_header(rep), cols, body, right=(unit, "share", "other MACs", "bytes", "FLOP/B",
                                                             "floor µs", "fvcore", "calls", "layers", "#")))
    for line in _convention_lines(conv):
        out().print(line, markup=False)
    out().print(f"total: {total:,} {conv.unit}" + (f" = {_fmt(conv, total)} {unit}" if conv.display_scale != 1 else "")
                  + f"  |  MACs {rep.totals.macs:,}  FLOPs {rep.totals.flops:,}  other {rep.totals.other_macs:,} "
                  f"MAC-equivalents  bytes {rep.totals.bytes:,}  params {rep.totals.params:,}", markup=False)
    if roof:
        out().print(f"roofline on {roof.device} ({roof.precision} peak {human(roof.peak_flops, 'FLOP/s')}, "
                      f"{human(roof.mem_bandwidth, 'B/s')}, ridge {roof.ridge_intensity:.0f} FLOP/B): "
                      f"latency floor {roof.floor_ms:.4f} ms (compute {roof.compute_s * 1e3:.4f} ms, memory "
                      f"{roof.memory_s * 1e3:.4f} ms); {sum(l.bound == 'memory' for l in roof.layers)} memory-bound, "
                      f"{sum(l.bound == 'compute' for l in roof.layers)} compute-bound layers", markup=False)
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
    rows = []
    base = reports[0]
    for rep in reports:
        r = {"input_shape": list(rep.input_shape), "batch": rep.batch, conv.field: rep.value(conv),
             "macs": rep.totals.macs, "other_macs": rep.totals.other_macs, "params": rep.totals.params,
             "bytes": rep.totals.bytes, "activations": rep.totals.activations}
        if spec:
            r["floor_ms"] = roofline(rep, spec, precision=precision).floor_ms
        if backend == "fvcore":
            from analyzers.fvcore_backend import fvcore_count

            r["fvcore_backend_flops"] = fvcore_count(net, rep.input_shape, batch=rep.batch).total
        rows.append(r)
    if json_out:
        print_json({"model": base.model, "dtype": base.dtype, "convention": conv.to_json(),
                    "device_spec": spec.name if spec else None, "sweep": rows})
        return
    if csv_out:
        keys = list(rows[0].keys())
        print_csv(keys, ([shape_str(v) if k == "input_shape" else v for k, v in r.items()] for r in rows))
        return
    unit = _unit(conv)
    cols = ["input", "batch", unit, "× first", "bytes", "× first", "activations", "params"]
    if spec:
        cols += [f"floor ms ({spec.name})"]
    if backend == "fvcore":
        cols += ["fvcore"]
    b0, v0 = rows[0]["bytes"] or 1, rows[0][conv.field] or 1
    body = []
    for r in rows:
        line = [shape_str(r["input_shape"]), r["batch"], _fmt(conv, r[conv.field]), f"{r[conv.field] / v0:.2f}",
                human(r["bytes"]), f"{r['bytes'] / b0:.2f}", human(r["activations"]), f"{r['params']:,}"]
        if spec:
            line.append(f"{r['floor_ms']:.4f}")
        if backend == "fvcore":
            line.append(human(r["fvcore_backend_flops"]))
        body.append(line)
    print_table(table(f"{base.model}  sweep  dtype {base.dtype}", cols, body,
                      right=[c for c in cols if c not in ("input",)]))
    for line in _convention_lines(conv):
        out().print(line, markup=False)


@app.command("flops")
def flops_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = typer.Option(None, "--input", help="Input shape(s) without batch: 3x416x416, or a sweep "
                                        "3x224x224,3x416x416 (default: the model's)."),
    batch: str = typer.Option("1", "--batch", help="Batch size, or a sweep: 1,8,64."),
    by: str = typer.Option("layer", "--by", help="Group rows by layer, module or operator."),
    depth: int = typer.Option(2, "--depth", help="--by module: module path depth (2: layer1.0, layers.5)."),
    convention: str = typer.Option("macs", "--convention", help=f"What to count: {', '.join(CONVENTIONS)}."),
    device_spec: Optional[str] = typer.Option(None, "--device-spec", help=f"Roofline bounds on: {', '.join(spec_names())}."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Roofline peak to use (float32, tf32, bfloat16, "
                                            "float16; default: the model's dtype)."),
    backend: str = typer.Option("native", "--backend", help="native, or fvcore: also run fvcore's FlopCountAnalysis "
                                "on real CPU tensors and show it beside the native count."),
    dtype: Optional[str] = DtypeOpt,
    strict: bool = StrictOpt,
    json_out: bool = JsonOpt,
    csv_out: bool = CsvOpt,
):
    """MACs/FLOPs under a named convention (printed with the result), by layer, module or operator;
    roofline latency floor with --device-spec; sweeps with --input A,B and --batch 1,8,64."""
    by = by.strip().lower()
    if by not in BY:
        raise SurgeryError(f"--by {by!r}: choose layer, module or operator")
    backend = backend.strip().lower()
    if backend not in ("native", "fvcore"):
        raise SurgeryError(f"--backend {backend!r}: choose native or fvcore")
    if depth < 1:
        raise SurgeryError(f"--depth {depth}: must be at least 1")
    if json_out and csv_out:
        raise SurgeryError("--json and --csv exclude each other; pick one")
    conv = get_convention(convention)
    shapes = parse_shapes(input)
    batches = parse_int_list(batch, "--batch")
    if any(b < 1 for b in batches):
        raise SurgeryError(f"--batch {batch}: batch sizes must be positive")
    spec = get_spec(device_spec) if device_spec else None
    net = load_model(model, arch, weights, trust_pickle, None)
    reports = sweep(net, shapes, batches, dtype=dtype, strict=strict)
    if len(reports) > 1:
        _sweep(net, reports, conv, spec, precision, backend, json_out, csv_out)
    else:
        _single(net, reports[0], conv, by, depth, spec, precision, backend, json_out, csv_out)
