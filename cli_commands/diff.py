"""``surgery diff A B``: where two models' weights differ, and where to cut a shared backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from analyzers.diff import DiffReport, diff, parse_layer_range
from cli_commands.base import (ArchOpt, ForceOpt, JsonOpt, TrustOpt, app, console, err_console, print_csv,
                               print_json, progress, shape_str, table)
from surgery import io as sio
from surgery.errors import SurgeryError

PLOT_FORMATS = ("png", "svg", "pdf")
CSV_COLUMNS = ["index", "name", "param", "kind", "shape", "relative", "scale", "mean", "q1", "median", "q3",
               "whisker_low", "whisker_high", "outliers", "min", "max", "skipped"]


def _load(ref: str, other: str, arch: str | None, weights: str | None, trust_pickle: bool):
    """A model reference; a bare ``.weights`` file takes the cfg of ``--arch`` or of the other model."""
    if ref.lower().endswith(".weights"):
        cfg = arch if arch and arch.lower().endswith(".cfg") else other if other.lower().endswith(".cfg") else None
        if cfg is None:
            raise SurgeryError(f"{ref}: a .weights file needs its cfg; pass --arch FILE.cfg "
                               "(or give the other model as a .cfg)")
        if weights:
            raise SurgeryError(f"{ref} is already a .weights file; drop its --weights-a/--weights-b option")
        net = sio.load(cfg, weights=ref)
        return net.evolve(net.module, source=ref)
    return sio.load(ref, arch=arch, weights=weights, trust_pickle=trust_pickle)


def _fmt(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x != x:
        return "nan"
    return f"{x:.3g}"


@app.command("diff")
def diff_cmd(
    a: str = typer.Argument(..., metavar="A", help="Base model A (FILE.pt, FILE.cfg, FILE.weights, zoo:NAME[:k=v])."),
    b: str = typer.Argument(..., metavar="B", help="Model B, compared against A."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write per-layer box plots (PNG; .svg/.pdf also work)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Only these layer indices, e.g. 0-80 or 0-10,74-106."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only these kinds (comma list): weight, bias, bn_weight, "
                                                            "bn_bias, running_mean, running_var."),
    json_out: bool = JsonOpt,
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    arch: Optional[str] = ArchOpt,
    weights_a: Optional[str] = typer.Option(None, "--weights-a", help="Darknet .weights for A's .cfg."),
    weights_b: Optional[str] = typer.Option(None, "--weights-b", help="Darknet .weights for B's .cfg."),
    trust_pickle: bool = TrustOpt,
    force: bool = ForceOpt,
):
    """Relative weight differences of B against A per layer (|B-A| / mean|A|: mean, quartiles,
    whiskers at 1.5 IQR, outliers) and a suggested layer to cut a shared backbone: the
    least-squares change point of the per-layer weight medians, printed as "first changed
    layer" s and "share at" s-1 (share layers 0..s-1), with the rule and the cost savings."""
    if json_out and csv_out:
        raise SurgeryError("--json and --csv exclude each other; pick one")
    fmt = None
    if plot is not None:
        fmt = plot.suffix.lower().lstrip(".")
        if fmt not in PLOT_FORMATS:
            raise SurgeryError(f"--plot {str(plot)!r}: give a file ending in .png (or .svg, .pdf)")
        sio.check_outputs([plot], force=force, inputs=[a, b, weights_a, weights_b])
    wanted = parse_layer_range(layers) if layers else None
    kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else None

    net_a = _load(a, b, arch, weights_a, trust_pickle)
    net_b = _load(b, a, arch, weights_b, trust_pickle)
    if err_console.is_terminal:
        with progress() as bar:
            task = bar.add_task("comparing tensors", total=None)
            rep = diff(net_a, net_b, layers=wanted, kinds=kinds,
                       progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:  # a bar drawn into a pipe or log is noise
        rep = diff(net_a, net_b, layers=wanted, kinds=kinds)
    if plot is not None:
        if not rep.layers:
            raise SurgeryError(f"nothing to plot: {a} and {b} have no tensor in common with equal shapes")
        from analyzers.diff_plot import plot_diff

        sio.atomic_write([plot], lambda tmps: plot_diff(rep, tmps[0], fmt=fmt), force=force,
                         inputs=[a, b, weights_a, weights_b])
        err_console.print(f"wrote {plot}", markup=False)
    if json_out:
        print_json(rep)
    elif csv_out:
        _csv(rep)
    else:
        _tables(rep)


def _csv(rep: DiffReport) -> None:
    rows = []
    for r in rep.layers:
        j = r.to_json()
        rows.append([j["index"], j["name"], j["param"], j["kind"], shape_str(j["shape"]), j["relative"],
                     *["" if j[k] is None else j[k] for k in CSV_COLUMNS[6:16]], ""])
    for s in rep.skipped:
        rows.append([s.index, s.name, s.param, s.kind, shape_str(s.shape_a or s.shape_b or ()), "", *[""] * 10,
                     s.reason])
    print_csv(CSV_COLUMNS, rows)


def _tables(rep: DiffReport) -> None:
    # a pipe or file gets rich's 80 columns by default, too narrow for eleven columns
    out = console if console.is_terminal else Console(width=max(console.width, 160), highlight=False)
    cols = ["layer", "tensor", "kind", "shape", "mean", "q1", "median", "q3", "whisker lo", "whisker hi", "outliers"]
    rows = []
    for r in rep.layers:
        s = r.stats
        rows.append([r.index, r.param, r.kind if r.relative else f"{r.kind} (abs)", shape_str(r.shape),
                     *[_fmt(v) for v in (s.mean, s.q1, s.median, s.q3, s.whisker_low, s.whisker_high)],
                     f"{s.outliers:,}"])
    title = escape(f"Relative differences |B - A| / mean|A| of {rep.b} against {rep.a}")
    out.print(table(title, cols, rows,
                        right=cols[4:]))
    if any(not r.relative for r in rep.layers):
        out.print("(abs): mean |A| is 0 for this tensor, so its statistics are absolute differences |B - A|")
    if rep.skipped:
        srows = [[s.index, s.param, s.reason, shape_str(s.shape_a) if s.shape_a else "-",
                  shape_str(s.shape_b) if s.shape_b else "-"] for s in rep.skipped]
        out.print(table(f"Skipped ({len(rep.skipped)})", ["layer", "tensor", "reason", "shape A", "shape B"],
                            srows))
    if rep.split is None:
        out.print("suggested split: none (no clear rise in the per-layer weight differences)")
    else:
        sp = rep.split
        out.print(f"suggested split: first changed layer {sp.first_changed}, share at {sp.share_at} "
                      f"(share layers 0..{sp.share_at}; median difference {sp.low_mean:.3g} before, "
                      f"{sp.high_mean:.3g} from there on; R² {sp.r2:.2f})")
        if sp.savings:
            parts = [f"{v:.3f} of the {k}" for k, v in sp.savings.items()]
            out.print(f"sharing layers 0..{sp.share_at} saves {' and '.join(parts)} of model A per extra model")
    out.print(f"rule: {rep.rule}", markup=False)
