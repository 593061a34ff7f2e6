"""``surgery diff A B``: where two models' weights differ, and where to cut a shared backbone."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cli_commands.base import (ArchEachOpt, CsvOpt, ForceOpt, InputOpt, JsonOpt, SurgeryError, TrustOpt, WeightsEachOpt,
                               app, check_formats, err_console, examples, fmt_num, load_models, out, per_model, print_csv,
                               print_json, progress, shape_str, table, to_jsonable, wrote)
from cli_commands.probing import check_data

PLOT_FORMATS = ("png", "svg", "pdf")
CSV_COLUMNS = ["index", "name", "param", "kind", "shape", "relative", "scale", "mean", "q1", "median", "q3",
               "whisker_low", "whisker_high", "outliers", "min", "max", "skipped"]


def _archs(a: str, b: str, arch: list[str] | None) -> list[str | None]:
    """``--arch`` per model (base.load_models' convention); a bare ``.weights`` file without a
    .cfg of its own takes the other model's .cfg."""
    archs = per_model(arch, [a, b], "--arch")
    for i, (ref, other) in enumerate(((a, b), (b, a))):
        if ref.lower().endswith(".weights") and not (archs[i] and archs[i].lower().endswith(".cfg")) \
                and other.lower().endswith(".cfg"):
            archs[i] = other
    return archs


_fmt = fmt_num


@app.command("diff", epilog=examples("surgery diff base.pt text.pt", "surgery diff yolov3.cfg text.weights --plot diff.png",
                                     "surgery diff a.pt b.pt --tensors --layers 70-80", "surgery diff a.pt b.pt --json"))
def diff_cmd(
    a: str = typer.Argument(..., metavar="A", help="Base model A (FILE.pt, FILE.cfg, FILE.weights, zoo:NAME[:k=v])."),
    b: str = typer.Argument(..., metavar="B", help="Model B, compared against A."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write per-layer box plots (PNG; .svg/.pdf also work)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Only these layer indices, e.g. 0-80 or 0-10,74-106."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only these kinds (comma list): weight, bias, bn_weight, "
                                                            "bn_bias, running_mean, running_var."),
    tensors: bool = typer.Option(False, "--tensors", help="One row per tensor (weight, bias, BN statistics) instead of "
                                                          "one per layer."),
    json_out: bool = JsonOpt,
    csv_out: bool = CsvOpt,
    arch: Optional[List[str]] = ArchEachOpt,
    weights: Optional[List[str]] = WeightsEachOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = InputOpt,
    force: bool = ForceOpt,
    data: Optional[str] = typer.Option(None, "--data", metavar="DIR",
                                       help="Also measure how far B's outputs moved from A's on real images from this "
                                            "folder (its val/ when it has train/ and val/): top-1 agreement, KL, "
                                            "accuracy of both."),
):
    """Relative weight differences of B against A per layer (|B-A| / mean|A|: mean, quartiles,
    whiskers at 1.5 IQR, outliers) and a suggested layer to cut a shared backbone: the
    least-squares change point of the per-layer weight medians, printed as "first changed
    layer" s and "share at" s-1 (share layers 0..s-1), with the rule and the cost savings."""
    from analyzers.diff import diff, parse_layer_range
    from surgery.core import io as sio

    check_formats(json_out, csv_out)
    check_data(data)
    fmt = None
    if plot is not None:
        fmt = plot.suffix.lower().lstrip(".")
        if fmt not in PLOT_FORMATS:
            raise SurgeryError(f"--plot {str(plot)!r}: give a file ending in .png (or .svg, .pdf)")
        sio.check_outputs([plot], force=force, inputs=[a, b, *[w for w in weights or [] if w != '-']])
    wanted = parse_layer_range(layers) if layers else None
    kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else None

    net_a, net_b = load_models([a, b], _archs(a, b, arch), weights, trust_pickle, input)
    if err_console.is_terminal:  # a bar drawn into a pipe or log is noise
        with progress() as bar:
            task = bar.add_task("comparing tensors", total=None)
            rep = diff(net_a, net_b, layers=wanted, kinds=kinds,
                       progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        rep = diff(net_a, net_b, layers=wanted, kinds=kinds)
    if plot is not None:
        if not rep.layers:
            raise SurgeryError(f"nothing to plot: {a} and {b} have no tensor in common with equal shapes")
        from analyzers.diff_plot import plot_diff

        sio.atomic_write([plot], lambda tmps: plot_diff(rep, tmps[0], fmt=fmt), force=force,
                         inputs=[a, b, *[w for w in weights or [] if w != '-']])
        wrote(plot)
    moved = _moved(net_a, net_b, data) if data else None
    if json_out:
        print_json({**to_jsonable(rep), "moved": moved} if moved else rep)
    elif csv_out:
        _csv(rep)
    else:
        _tables(rep, tensors)
    if moved and not json_out:
        (err_console if csv_out else out()).print(
            f"moved on {moved['probe']['source']}: top-1 agreement of B with A {100 * moved['top1_agreement']:.1f}%, "
            f"KL(A || B) {fmt_num(moved['kl'])} nats"
            + (f"; accuracy A {100 * moved['accuracy_a']:.1f}%, B {100 * moved['accuracy_b']:.1f}%"
               if moved["accuracy_a"] is not None and moved["accuracy_b"] is not None else ""),
            markup=False, soft_wrap=True)


def _moved(net_a, net_b, data: str) -> dict:
    """How far B's outputs moved from A's on the images of ``data`` (``surgery eval B --teacher A``)."""
    from surgery.evaluate import evaluate

    ev = evaluate([net_b], data, teacher=net_a)
    b = ev.models[0]
    if b.top1_agreement is None:
        raise SurgeryError(f"--data: {net_b.source} and {net_a.source} do not output class scores; diff measures "
                           "top-1 agreement and KL of classifiers")
    return {"probe": {"kind": "images", "source": f"{ev.images} images from {ev.data}", "images": ev.images,
                      "data": ev.data},
            "top1_agreement": b.top1_agreement, "kl": b.kl_to_teacher,
            "accuracy_a": ev.teacher.accuracy if ev.teacher else None, "accuracy_b": b.accuracy}


def _csv(rep) -> None:
    rows = []
    for r in rep.layers:
        j = r.to_json()
        rows.append([j["index"], j["name"], j["param"], j["kind"], shape_str(j["shape"]), j["relative"],
                     *["" if j[k] is None else j[k] for k in CSV_COLUMNS[6:16]], ""])
    for s in rep.skipped:
        rows.append([s.index, s.name, s.param, s.kind, shape_str(s.shape_a or s.shape_b or ()), "", *[""] * 10,
                     s.reason])
    print_csv(CSV_COLUMNS, rows)


def _verdict(rep) -> None:
    o = out()
    if rep.split is None and rep.layers and all(t.stats.max == 0 for t in rep.layers):
        o.print(f"identical: all {len(rep.layers)} compared tensors are equal; suggested split: none "
                f"(nothing changed)", markup=False)
    elif rep.split is None:
        o.print("suggested split: none (no clear rise in the per-layer weight differences)", markup=False)
    else:
        sp = rep.split
        o.print(f"suggested split: first changed layer {sp.first_changed}, share at {sp.share_at} "
                f"(share layers 0..{sp.share_at}; median difference {fmt_num(sp.low_mean)} before, "
                f"{fmt_num(sp.high_mean)} from there on; R² {sp.r2:.2f})", markup=False)
        if sp.savings:
            parts = [f"{v:.3f} of the {k}" for k, v in sp.savings.items()]
            o.print(f"sharing layers 0..{sp.share_at} saves {' and '.join(parts)} of model A per extra model",
                    markup=False)
    o.print(f"rule: {rep.rule}", markup=False)


def _tables(rep, tensors: bool) -> None:
    o = out()
    _verdict(rep)  # the answer first, the evidence below
    stats = ["mean", "q1", "median", "q3", "whisker lo", "whisker hi", "outliers"]
    rows_src = rep.layers if tensors else rep.per_layer()
    count = {}
    for r in rep.layers:
        count[r.index] = count.get(r.index, 0) + 1
    if tensors:
        cols = ["layer", "tensor", "kind", "shape"] + stats
    else:
        cols = ["layer", "name", "tensor", "shape"] + stats + ["tensors"]
    rows = []
    for r in rows_src:
        s = r.stats
        kind = r.kind if r.relative else f"{r.kind} (abs)"
        head = [r.index, r.param, kind, shape_str(r.shape)] if tensors else [r.index, r.name, kind, shape_str(r.shape)]
        tail = [] if tensors else [count[r.index]]
        rows.append(head + [_fmt(v) for v in (s.mean, s.q1, s.median, s.q3, s.whisker_low, s.whisker_high)]
                    + [f"{s.outliers:,}"] + tail)
    what = "per tensor" if tensors else "per layer (its weight; --tensors for every tensor)"
    title = f"Relative differences |B - A| / mean|A| of {rep.b} against {rep.a}, {what}"
    o.print(table(title, cols, rows, right=["layer"] + stats + ["tensors"], drop=("whisker lo", "whisker hi", "q1",
                                                                                 "q3", "shape")))
    if any(not r.relative for r in rows_src):
        o.print("(abs): mean |A| is 0 for this tensor, so its statistics are absolute differences |B - A|",
                markup=False)
    if rep.skipped:
        srows = [[s.index, s.param, s.reason, shape_str(s.shape_a) if s.shape_a else "-",
                  shape_str(s.shape_b) if s.shape_b else "-"] for s in rep.skipped]
        o.print(table(f"Skipped ({len(rep.skipped)})", ["layer", "tensor", "reason", "shape A", "shape B"], srows,
                      right=["layer"]))
