"""Pictures of :mod:`analyzers.layer_profile` reports (``surgery profile --by ... --plot``).

- :func:`plot_kinds`: one horizontal bar per report (and per extra reference row, e.g. the
  seed's GPU/ARM rows of Table 3.1), split by operator kind in the same colours, with the
  model's MAC and byte split beside it: time share against cost share at a glance.
- :func:`plot_layers`: the slowest layers, time share beside MAC and byte share, the flagged
  ones (slow for their cost) marked.

Written atomically as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from analyzers.figures import save_png
from analyzers.layer_kinds import KINDS
from analyzers.layer_profile import LayerProfileReport

COLORS = {"convolution": "#4C72B0", "data movement": "#DD8452", "element-wise": "#55A868",
          "channel shuffle": "#C44E52", "other": "#8172B3"}


def _short(model: str) -> str:
    return model[4:] if model.startswith("zoo:") else Path(model).name


def kind_rows(reports: Sequence[LayerProfileReport], *, cost: bool = True) -> list[tuple[str, dict]]:
    """(label, {kind: share}) rows: each report's time split, then (``cost``) each model's MAC and
    byte split once."""
    rows = []
    for r in reports:
        th = f", {r.threads} thr" if r.threads else ""
        rows.append((f"{_short(r.model)} · {r.runtime.replace(':cpu', '')}{th}: time", {k.kind: k.share for k in r.kinds}))
    if cost:
        seen = set()
        for r in reports:
            if r.model in seen:
                continue
            seen.add(r.model)
            rows.append((f"{_short(r.model)}: MACs", {k.kind: k.macs_share for k in r.kinds}))
            rows.append((f"{_short(r.model)}: bytes", {k.kind: k.bytes_share for k in r.kinds}))
    return rows


def plot_kinds(reports: Sequence[LayerProfileReport], path: str | Path, *, extra_rows: Sequence[tuple[str, dict]] = (),
               title: str | None = None, force: bool = False, inputs=()) -> Path:
    """Stacked 100 % bars of the kinds: ``extra_rows`` first (label, {kind: share}), then each
    report's time split and each model's MAC and byte split."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = list(extra_rows) + kind_rows(reports)
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.6), dpi=120)
    for i, (label, shares) in enumerate(rows):
        left = 0.0
        for k in KINDS:
            v = float(shares.get(k, 0.0) or 0.0)
            if v <= 0:
                continue
            ax.barh(i, v, left=left, color=COLORS[k], edgecolor="white", lw=0.5)
            if v >= 0.06:
                ax.text(left + v / 2, i, f"{v:.0%}", ha="center", va="center", fontsize=7, color="white")
            left += v
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share (time: of the sum of per-layer times; MACs, bytes: of the model's)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k], label=k) for k in KINDS]
    ax.legend(handles=handles, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout()
    return save_png(fig, path, force=force, inputs=inputs)


def plot_layers(report: LayerProfileReport, path: str | Path, *, top: int = 25, force: bool = False,
                inputs=()) -> Path:
    """The ``top`` slowest layers: time share beside MAC and byte share; flagged layers in red."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    layers = report.top(top)
    fig, ax = plt.subplots(figsize=(10, 0.3 * len(layers) + 1.8), dpi=120)
    ys = range(len(layers))
    h = 0.27
    ax.barh([y - h for y in ys], [l.share for l in layers], h, label="time", color="#333333")
    ax.barh(list(ys), [l.macs_share for l in layers], h, label="MACs", color=COLORS["convolution"])
    ax.barh([y + h for y in ys], [l.bytes_share for l in layers], h, label="bytes", color=COLORS["data movement"])
    labels = [f"{'–' if l.index is None else l.index} {l.name} ({l.type})" for l in layers]
    ax.set_yticks(list(ys), labels, fontsize=7)
    for tick, l in zip(ax.get_yticklabels(), layers):
        if l.flag:
            tick.set_color("#C44E52")
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("share of the model (red labels: time share ≥ 2× the MAC and byte shares)")
    ax.legend(fontsize=8, loc="lower right")
    th = f", {report.threads} thread(s)" if report.threads else ""
    ax.set_title(f"{_short(report.model)} · {report.runtime}{th} · batch {report.batch}: the {len(layers)} slowest "
                 f"layers", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, force=force, inputs=inputs)
