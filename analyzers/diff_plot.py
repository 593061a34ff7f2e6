"""The picture of a :class:`analyzers.diff_report.DiffReport`, like Fig. 1-4 of
shared-backbone-yolov3.txt: per-layer box plots of the relative weight (top) and bias
(bottom) differences along the layer index, the suggested split marked.

Drawn from the summary statistics alone (as collections, a few artists per panel), so
plotting costs the same however large the tensors were. Outliers are drawn as the most extreme value on each side (their
count is in the report). The bias panel shows kinds ``bias`` and ``bn_bias`` (for Darknet
models ``bias`` already is the BatchNorm beta of a batch-normalised conv). Rows with
mean |A| = 0 (absolute differences) are not drawn; the panel says how many. Models with no
bias tensor in common (convs without bias or BatchNorm) get the weight panel alone.
"""

from __future__ import annotations

import math
from pathlib import Path

from analyzers.diff_report import DiffReport, LayerDiff

PANELS = (("weights", ("weight",)), ("biases", ("bias", "bn_bias")))
_LOG_RANGE = 100.0  # use a log y axis when the largest drawn value exceeds the smallest median this much


BOX_FACE, BOX_EDGE, MEAN_COLOR, FLIER_COLOR, SPLIT_COLOR = "#c6dbef", "#08519c", "#d62728", "#555555", "#d62728"
WIDTH = 0.6  # box width in layers


def _draw_boxes(ax, rows: list[LayerDiff]) -> None:
    """Box plots from summary statistics as a handful of collections (one artist per part,
    not per box: ``Axes.bxp`` makes ~15 artists per box, slow for hundreds of layers)."""
    from matplotlib.collections import LineCollection, PolyCollection

    x = [float(r.index) for r in rows]
    st = [r.stats for r in rows]
    h = WIDTH / 2
    boxes = [[(xi - h, s.q1), (xi + h, s.q1), (xi + h, s.q3), (xi - h, s.q3)] for xi, s in zip(x, st)]
    ax.add_collection(PolyCollection(boxes, facecolors=BOX_FACE, edgecolors=BOX_EDGE, linewidths=0.6, zorder=2))
    whiskers = [[(xi, s.whisker_low), (xi, s.q1)] for xi, s in zip(x, st)]
    whiskers += [[(xi, s.q3), (xi, s.whisker_high)] for xi, s in zip(x, st)]
    ax.add_collection(LineCollection(whiskers, colors="black", linewidths=0.6, zorder=1))
    c = h / 2
    caps = [[(xi - c, v), (xi + c, v)] for xi, s in zip(x, st) for v in (s.whisker_low, s.whisker_high)]
    ax.add_collection(LineCollection(caps, colors="black", linewidths=0.6, zorder=1))
    medians = [[(xi - h, s.median), (xi + h, s.median)] for xi, s in zip(x, st)]
    ax.add_collection(LineCollection(medians, colors=BOX_EDGE, linewidths=1.2, zorder=3))
    ax.plot(x, [s.mean for s in st], linestyle="none", marker=".", markersize=3, color=MEAN_COLOR, zorder=4)
    fx, fy = [], []
    for xi, s in zip(x, st):  # the most extreme outlier on each side
        if s.outliers - s.outliers_high > 0:
            fx.append(xi), fy.append(s.min)
        if s.outliers_high > 0:
            fx.append(xi), fy.append(s.max)
    if fx:
        ax.plot(fx, fy, linestyle="none", marker="o", markersize=2.5, markerfacecolor="none",
                markeredgecolor=FLIER_COLOR, markeredgewidth=0.5, zorder=4)


def _drawable(rows) -> list[LayerDiff]:
    out = []
    for r in rows:
        s = r.stats
        vals = (s.median, s.q1, s.q3, s.whisker_low, s.whisker_high)
        if r.relative and all(math.isfinite(v) for v in vals):
            out.append(r)
    return out


def figure_width(span: int) -> float:
    """Inches: about 0.11 in per layer (a 107-layer YOLOv3 is ~15 in), between 8 and 60."""
    return float(min(60.0, max(8.0, 0.11 * span + 3.0)))


def _tick_step(span: int) -> int:
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if span / step <= 40:
            return step
    return max(1, span // 40)


def plot_diff(report: DiffReport, path: str | Path, *, fmt: str = "png", dpi: int = 100) -> None:
    """Write the figure to ``path`` (any file name; ``fmt`` says the format)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    all_idx = [r.index for r in report.layers] + [s.index for s in report.skipped]
    lo_idx, hi_idx = (min(all_idx), max(all_idx)) if all_idx else (0, 1)
    span = hi_idx - lo_idx + 1
    # a panel per parameter kind the models have: no empty bias panel for nets without biases
    panels = [(label, kinds) for label, kinds in PANELS if any(r.kind in kinds for r in report.layers)] or [PANELS[0]]
    width, height = figure_width(span), 7.5 if len(panels) > 1 else 4.6
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    # fixed margins in inches (constrained layout measures every artist: slow for wide plots)
    handles = _legend(report, bool(report.skipped))
    ncol = max(1, min(len(handles), int(width // 3.3)))
    legend_rows = math.ceil(len(handles) / ncol)
    fig.subplots_adjust(left=1.0 / width, right=1 - 0.25 / width, bottom=0.7 / height,
                        top=1 - (0.75 + 0.2 * legend_rows) / height, hspace=0.18)
    skipped_idx = sorted({s.index for s in report.skipped})
    for ax, (label, kinds) in zip(axes, panels):
        rows = _drawable(r for r in report.layers if r.kind in kinds)
        hidden = sum(1 for r in report.layers if r.kind in kinds and not r.relative)
        if rows:
            _draw_boxes(ax, rows)
            _yscale(ax, rows)
        else:
            ax.text(0.5, 0.5, f"no {label} present in both models with equal shapes", transform=ax.transAxes,
                    ha="center", va="center", color="#777777")
        for i in skipped_idx:
            ax.axvspan(i - 0.45, i + 0.45, color="#dddddd", zorder=0, lw=0)
        if report.split is not None:
            ax.axvline(report.split.first_changed - 0.5, color=SPLIT_COLOR, linestyle="--", linewidth=1.2)
        ax.set_ylabel(f"relative difference of {label}\n|B - A| / mean |A|")
        ax.grid(linewidth=0.3, alpha=0.6)
        ax.set_title(label, loc="left", fontsize=10)
        if hidden:
            ax.set_title(f"{hidden} tensor(s) with mean |A| = 0 not drawn (absolute differences in the report)",
                         loc="right", fontsize=8, color="#777777")
    ax = axes[-1]
    ax.set_xlim(lo_idx - 1, hi_idx + 1)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_step(span)))  # no per-layer minor ticks: slow to draw
    ax.set_xlabel("layer index" + (" (Darknet)" if report.darknet else ""))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.42 / height), ncol=ncol,
               fontsize=8, frameon=False)
    what = " and ".join(label for label, _ in panels)
    fig.suptitle(f"Relative differences of {what}: {_short(report.b)} vs {_short(report.a)}",
                 fontsize=11, y=1 - 0.12 / height, va="top")
    fig.savefig(path, format=fmt, dpi=dpi)


def _short(name: str, n: int = 60) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _yscale(ax, rows) -> None:
    vals = [v for r in rows for v in (r.stats.whisker_low, r.stats.q1, r.stats.median, r.stats.q3,
                                       r.stats.whisker_high, r.stats.max)]
    pos = [v for v in vals if v > 0 and math.isfinite(v)]
    top = max(pos) if pos else 1.0
    small = min((v for v in (r.stats.median for r in rows) if v > 0), default=None)
    if small is not None and top / small > _LOG_RANGE:
        linthresh = 10.0 ** math.floor(math.log10(small))
        ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
        ax.set_ylim(0, top * 2)
    else:
        ax.set_ylim(0, top * 1.05 if top > 0 else 1.0)


def _legend(report: DiffReport, any_skipped: bool):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=BOX_FACE, edgecolor=BOX_EDGE, label="quartiles, median; whiskers 1.5 IQR"),
               Line2D([], [], marker=".", color=MEAN_COLOR, linestyle="none", label="mean"),
               Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor=FLIER_COLOR, linestyle="none",
                      markersize=4, label="most extreme outlier")]
    if report.split is not None:
        sp = report.split
        handles.append(Line2D([], [], color=SPLIT_COLOR, linestyle="--",
                              label=f"suggested split: first changed layer {sp.first_changed}, "
                                    f"share layers 0..{sp.share_at}"))
    if any_skipped:
        handles.append(Patch(facecolor="#dddddd", label="skipped (shapes differ / one model only)"))
    return handles
