"""``surgery profile MODEL --by layer|kind [--top N]``: where the milliseconds go.

Called by :mod:`cli_commands.profile` when ``--by`` is given; measures with
:func:`analyzers.layer_profile.profile_layers` and renders its report (table, ``--json``,
``--csv``, ``--plot``).
"""

from __future__ import annotations

from analyzers.layer_profile import BY, FLAG_MIN_SHARE, FLAG_RATIO, profile_layers
from cli_commands.base import (SurgeryError, err_console, fmt_ms, fmt_num, human, out, print_csv, print_json, progress,
                               table, wrote)

LAYER_CSV = ["index", "name", "type", "kind", "median_ms", "p10_ms", "p90_ms", "share", "macs", "bytes", "macs_share",
             "bytes_share", "gmacs_per_s", "gbytes_per_s", "roofline_ms", "roofline_pct", "excess", "flag", "note"]
KIND_CSV = ["kind", "time_ms", "share", "macs", "macs_share", "bytes", "bytes_share", "ops"]


def _pct(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if x >= 0.001 or x == 0 else f"{100 * x:.2f}%"


def _gap_line(rep) -> str:
    over = rep.overhead_ms
    rel = over / rep.model_ms if rep.model_ms > 0 else 0.0
    return (f"whole model {fmt_ms(rep.model_ms)} ms without a profiler (p10–p90 {fmt_ms(rep.model_p10_ms)}–"
            f"{fmt_ms(rep.model_p90_ms)}); under the profiler {fmt_ms(rep.profiled_ms)} ms, of which the layers "
            f"add up to {fmt_ms(rep.layers_sum_ms)} ms; profiler overhead {fmt_ms(over)} ms ({rel:+.0%}), "
            f"outside every layer {fmt_ms(rep.unattributed_ms)} ms")


def _title(rep) -> str:
    dev = rep.device_info
    cuda = dev.get("cuda")
    where = cuda["name"] if cuda and rep.device != "cpu" else (
        f"{dev.get('cpu', 'cpu')}, {rep.threads} thread{'s' if rep.threads != 1 else ''}")
    return (f"{rep.model} · {rep.runtime} · batch {rep.batch} · {rep.dtype} · {where} · {rep.runs} profiled runs")


def render_kinds(rep) -> None:
    rows = [[k.kind, fmt_ms(k.time_ms), _pct(k.share), _pct(k.macs_share), _pct(k.bytes_share), human(k.macs) if k.macs
             else "0", human(k.bytes), k.ops] for k in rep.kinds]
    o = out()
    o.print(table(_title(rep), ["kind", "ms", "time", "MACs", "bytes", "MACs (n)", "bytes (n)", "ops"], rows,
                  right={"ms", "time", "MACs", "bytes", "MACs (n)", "bytes (n)", "ops"}))
    o.print("time: share of the sum of per-layer times; MACs, bytes: share of the model's conv/linear MACs and of "
            "its memory traffic (each op's own reads + writes); ops: counted ops of that kind in the PyTorch model. "
            "Kinds as in the ShuffleNet v2 thesis Table 3.1: data movement = copies, reshapes, concatenation, "
            "slicing, layout reorders; element-wise = activations, BatchNorm, adds; other = pooling, FC, reductions.",
            style="dim", markup=False)
    o.print(_gap_line(rep), markup=False)


def render_layers(rep, top: int | None) -> None:
    layers = rep.top(top) if top else rep.layers
    estimate = bool(rep.roofline_estimate)
    floor_col = "floor ms≈" if estimate else "floor ms"
    rows = []
    for l in layers:
        rows.append([
            "–" if l.index is None else l.index, l.name, l.type, l.kind, fmt_ms(l.median_ms),
            f"{fmt_ms(l.p10_ms)}–{fmt_ms(l.p90_ms)}", _pct(l.share), _pct(l.macs_share), _pct(l.bytes_share),
            human(l.macs) if l.macs else "", human(l.bytes) if l.bytes else "", fmt_num(l.gmacs_per_s),
            fmt_num(l.gbytes_per_s), fmt_ms(l.roofline_ms) if l.roofline_ms is not None else "–",
            (f"{l.excess:.1f}×" if l.excess is not None else "∞") if l.flag else "",
        ])
    cols = ["#", "name", "type", "kind", "ms", "p10–p90", "time", "MACs %", "bytes %", "MACs", "bytes", "GMAC/s",
            "GB/s", floor_col, "slow ×"]
    o = out()
    title = _title(rep) + (f" · top {len(layers)} of {len(rep.layers)} layers by time" if top else "")
    o.print(table(title, cols, rows, right={"#", "ms", "p10–p90", "time", "MACs %", "bytes %", "MACs", "bytes",
                                            "GMAC/s", "GB/s", floor_col, "slow ×"},
                  drop=("p10–p90", "type", "GB/s", "GMAC/s", "bytes", "MACs")))
    o.print(f"ms: median per forward pass over {rep.runs} profiled runs; time: share of the sum of per-layer times; "
            f"MACs %, bytes %: the layer's share of the model's MACs and layer-boundary bytes; floor: roofline "
            f"floor{' (≈: peaks measured on this machine, an estimate)' if estimate else ''}; slow ×: the layer's "
            f"time share over the larger of its MAC and byte shares, shown where it is at least "
            f"{FLAG_RATIO:g}× on a layer with at least {FLAG_MIN_SHARE:.1%} of the time (∞: no MACs, no bytes).",
            style="dim", markup=False)
    o.print(_gap_line(rep), markup=False)
    flagged = [l for l in rep.top() if l.flag]
    if flagged:
        o.print(f"{len(flagged)} layer(s) slow for their cost: " + "; ".join(
            f"{l.index} {l.name} ({l.flag})" for l in flagged[:8]) + (" ..." if len(flagged) > 8 else ""),
                markup=False, soft_wrap=True)
    notes = [n for l in layers for n in ([f"{l.index} {l.name}: {l.note}"] if l.note else [])]
    if notes:
        fused = sum(1 for l in rep.layers if l.note and "fused" in l.note)
        if fused:
            o.print(f"{fused} layer(s) have no kernel of their own in ONNX Runtime's optimized graph (fused into a "
                    f"neighbour, e.g. BatchNorm and ReLU into the conv before them, or folded away): 0 ms",
                    style="dim", markup=False)
    for n in rep.notes:
        o.print(n, style="dim", markup=False)


def profile_by(models: list[str], by: str | None, top: int | None, *, device: str, runtimes: list[str],
               batches: list[int] | None, dtypes: list[str], timing, threads: int | None, device_spec: str | None,
               load, json_out: bool, csv_out: bool, plot: str | None, force: bool) -> None:
    """One model, one runtime, one batch, one dtype: per layer or per operator kind."""
    from cli_commands.profile import entry_parts
    from surgery.core.io import check_outputs

    if by is None:
        raise SurgeryError("--top N ranks layers by time: it needs --by layer")
    by = by.strip().lower()
    if by not in BY:
        raise SurgeryError(f"--by {by!r}: choose layer or kind")
    if top is not None and top < 1:
        raise SurgeryError(f"--top {top}: must be at least 1")
    if top is not None and by != "layer":
        raise SurgeryError("--top N ranks layers by time: use it with --by layer")
    if len(models) != 1 or len(entry_parts(models[0])) != 1:
        raise SurgeryError(f"--by {by} profiles one model at a time (got {', '.join(models)}); run it once per model")
    if len(runtimes) != 1 or runtimes[0] not in ("torch", "onnxruntime:cpu", "onnxruntime:cuda"):
        raise SurgeryError(f"--by {by} profiles one runtime at a time: --runtime torch or onnxruntime "
                           f"(got {', '.join(runtimes)})")
    if batches is not None and len(batches) != 1:
        raise SurgeryError(f"--by {by} profiles one batch size at a time (got {', '.join(map(str, batches))})")
    if len(dtypes) != 1:
        raise SurgeryError(f"--by {by} profiles one dtype at a time (got {', '.join(dtypes)})")
    if plot:
        check_outputs([plot], force=force, inputs=models)
    net = load(models)[0]
    with progress() as bar:
        bar.add_task(f"profiling {models[0]} per layer ({runtimes[0]})", total=None)
        rep = profile_layers(net, runtime=runtimes[0], device=device, batch=batches[0] if batches else None,
                             dtype=dtypes[0], threads=threads, timing=timing, device_spec=device_spec)
    rep = type(rep)(**{**rep.__dict__, "model": models[0]})
    if plot:
        from analyzers.layer_profile_plot import plot_kinds, plot_layers

        written = (plot_kinds([rep], plot, force=force, inputs=models) if by == "kind"
                   else plot_layers(rep, plot, top=top or 25, force=force, inputs=models))
        wrote(written)
    if json_out:
        print_json(rep.to_json(top=top))
    elif csv_out:
        if by == "kind":
            print_csv(KIND_CSV, ([getattr(k, f) for f in KIND_CSV] for k in rep.kinds))
        else:
            layers = rep.top(top) if top else rep.layers
            print_csv(LAYER_CSV, ([getattr(l, f) for f in LAYER_CSV] for l in layers))
    elif by == "kind":
        render_kinds(rep)
    else:
        render_layers(rep, top)
    if (json_out or csv_out) and rep.roofline_error:
        err_console.print(f"warning: {rep.roofline_error}", markup=False, soft_wrap=True)
