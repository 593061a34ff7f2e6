"""``surgery profile --plot``: latency against MACs, one point per model/runtime/batch.

x: MACs per sample (log scale); y: median latency of the timed pass in ms (log scale when
the points span more than 20×), with p10–p90 error bars. Colour: batch size (and dtype when
several are profiled); marker: runtime. The Pareto front of each (device, batch, dtype) group
— points no other point beats on both MACs and latency — is joined by a line and circled.
Written atomically as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from analyzers.profile import ProfileReport
from surgery.core.io import atomic_write

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _short(model: str) -> str:
    return model[4:] if model.startswith("zoo:") else Path(model).name if "/" in model else model


def plot_profile(report: ProfileReport, path: str | Path, *, force: bool = False, inputs=(), title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in report.results if r.status == "ok" and r.macs is not None and r.median_ms]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    if not rows:
        ax.text(0.5, 0.5, "no successful timing with a MAC count to plot", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        runtimes = list(dict.fromkeys(r.runtime for r in rows))
        groups = list(dict.fromkeys((r.device, r.batch, r.dtype) for r in rows))
        several_dtypes = len({g[2] for g in groups}) > 1
        several_devices = len({g[0] for g in groups}) > 1
        cmap = plt.get_cmap("tab10")
        for gi, group in enumerate(groups):
            color = cmap(gi % 10)
            grows = [r for r in rows if (r.device, r.batch, r.dtype) == group]
            label = f"batch {group[1]}" + (f" {group[2]}" if several_dtypes else "") + \
                (f" ({group[0]})" if several_devices else "")
            for r in grows:
                mk = _MARKERS[runtimes.index(r.runtime) % len(_MARKERS)]
                yerr = [[max(0.0, r.median_ms - r.p10_ms)], [max(0.0, r.p90_ms - r.median_ms)]]
                ax.errorbar([r.macs], [r.median_ms], yerr=yerr, fmt=mk, color=color, ms=7, capsize=2, lw=0.8,
                            mec="black" if r.pareto else color, mew=1.2 if r.pareto else 0.5)
                ax.annotate(_short(r.model), (r.macs, r.median_ms), textcoords="offset points", xytext=(5, 4),
                            fontsize=7, color="0.25")
            front = sorted((r for r in grows if r.pareto), key=lambda r: r.macs)
            if front:
                ax.scatter([r.macs for r in front], [r.median_ms for r in front], s=220, facecolors="none",
                           edgecolors=color, linewidths=1.5, zorder=3)
                ax.plot([r.macs for r in front], [r.median_ms for r in front], "-", color=color, lw=1.2, alpha=0.8,
                        label=f"{label}: Pareto front")
        # legend entries for the runtimes' markers
        for i, rt in enumerate(runtimes):
            ax.plot([], [], _MARKERS[i % len(_MARKERS)], color="0.4", label=rt)
        ax.set_xscale("log")
        lats = [r.median_ms for r in rows]
        if max(lats) / min(lats) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("MACs per sample (multiply-accumulates, log scale)")
        ax.set_ylabel("median latency per forward pass (ms; bars: p10–p90)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    dev = report.device
    n = dev.get("threads")
    where = dev["cuda"]["name"] if dev.get("cuda") else f"{dev.get('cpu', 'cpu')}, {n} thread{'' if n == 1 else 's'}"
    ax.set_title(title or f"latency vs MACs — {where} — torch {dev.get('torch', '?')} — {dev.get('date', '')[:10]}",
                 fontsize=10)
    fig.tight_layout()

    def write(tmps):
        fig.savefig(tmps[0], format="png")

    try:
        return atomic_write([path], write, force=force, inputs=inputs)[0]
    finally:
        plt.close(fig)
