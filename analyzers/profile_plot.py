"""``surgery profile --plot``: latency against MACs, one point per model/runtime/batch.

One panel per batch size (and dtype, device when several are profiled), titled with it: a
batch-8 latency is never read against a batch-1 one. In each panel x is MACs per sample (log
scale, ticks in SI units: ``41G``), y the median latency of the timed pass in ms (log scale
when the points span more than 20×), with p10–p90 error bars. Colour: model (the same in
every panel); marker: runtime; both named in one legend beside the panels, off the data
(no labels at the points, so none overlap). The Pareto front of each panel — points no other
point beats on both MACs and latency — is joined by a dashed line and circled. Written
atomically as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
from pathlib import Path

from analyzers.figures import save_png
from analyzers.profile_rows import ProfileReport

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _short(model: str) -> str:
    return model[4:] if model.startswith("zoo:") else Path(model).name if "/" in model else model


def si(x: float, _pos=None) -> str:
    """A tick label in SI units with at most three significant digits: 4.1e10 -> '41G'."""
    if x == 0:
        return "0"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def plot_profile(report: ProfileReport, path: str | Path, *, force: bool = False, inputs=(), title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in report.results if r.status == "ok" and r.macs is not None and r.median_ms]
    groups = list(dict.fromkeys((r.device, r.batch, r.dtype) for r in rows))
    n = max(1, len(groups))
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols + 2.6, 4.0 * nrows + 0.6), dpi=120, squeeze=False)
    flat = [a for row in axes for a in row]
    for extra in flat[n:]:
        extra.set_axis_off()
    if not rows:
        ax = flat[0]
        ax.text(0.5, 0.5, "no successful timing with a MAC count to plot", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        runtimes = list(dict.fromkeys(r.runtime for r in rows))
        models = list(dict.fromkeys(r.model for r in rows))
        cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
        color = {m: cmap(i % cmap.N) for i, m in enumerate(models)}
        several_dtypes = len({g[2] for g in groups}) > 1
        several_devices = len({g[0] for g in groups}) > 1
        for ax, group in zip(flat, groups):
            grows = [r for r in rows if (r.device, r.batch, r.dtype) == group]
            for r in grows:
                mk = _MARKERS[runtimes.index(r.runtime) % len(_MARKERS)]
                yerr = [[max(0.0, r.median_ms - r.p10_ms)], [max(0.0, r.p90_ms - r.median_ms)]]
                ax.errorbar([r.macs], [r.median_ms], yerr=yerr, fmt=mk, color=color[r.model], ms=7, capsize=2, lw=0.8,
                            mec="black" if r.pareto else color[r.model], mew=1.2 if r.pareto else 0.5)
            front = sorted((r for r in grows if r.pareto), key=lambda r: r.macs)
            if front:
                ax.scatter([r.macs for r in front], [r.median_ms for r in front], s=220, facecolors="none",
                           edgecolors="0.3", linewidths=1.2, zorder=3)
                ax.plot([r.macs for r in front], [r.median_ms for r in front], "--", color="0.3", lw=1.0)
            ax.set_xscale("log")
            xs = [r.macs for r in grows]
            lo, hi = min(xs), max(xs)
            ax.set_xlim(lo / 1.6, hi * 1.6)  # room for the markers at the ends
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(si))
            ax.xaxis.set_minor_formatter(NullFormatter())
            lats = [r.median_ms for r in grows]
            if max(lats) / min(lats) > 20:
                ax.set_yscale("log")
            ax.set_xlabel("MACs per sample")
            ax.set_ylabel("median ms per batch (bars: p10–p90)")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"batch {group[1]}" + (f", {group[2]}" if several_dtypes else "")
                         + (f" ({group[0]})" if several_devices else ""), fontsize=10, fontweight="bold")
        # one legend for every panel, beside them: models by colour, runtimes by marker, the front
        handles = [plt.Line2D([], [], ls="", marker="o", color=color[m], label=_short(m)) for m in models]
        handles += [plt.Line2D([], [], ls="", marker=_MARKERS[i % len(_MARKERS)], color="0.4", label=rt)
                    for i, rt in enumerate(runtimes)]
        handles.append(plt.Line2D([], [], ls="--", marker="o", mfc="none", color="0.3", label="Pareto front"))
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1 - 2.5 / fig.get_figwidth(), 0.93),
                   fontsize=8, frameon=False)
    dev = report.device
    th = dev.get("threads")
    where = dev["cuda"]["name"] if dev.get("cuda") else f"{dev.get('cpu', 'cpu')}, {th} thread{'' if th == 1 else 's'}"
    fig.suptitle(title or f"latency vs MACs — {where} — torch {dev.get('torch', '?')} — {dev.get('date', '')[:10]}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / fig.get_figwidth(), 0.96))

    return save_png(fig, path, force=force, inputs=inputs)
