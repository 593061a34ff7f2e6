"""Plots people read: diff draws no empty bias panel, profile puts batch sizes on panels of their
own with SI ticks and the legend off the data."""

from __future__ import annotations

import struct

import numpy as np

from analyzers import diff_report as R
from analyzers import diff_stats as ST


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def _report(kinds) -> R.DiffReport:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        for kind in kinds:
            s = ST.box_stats((rng.lognormal(0, 1, 500) * (0.01 if i < 6 else 0.2)).astype(np.float32))
            rows.append(R.LayerDiff(i, f"layers.{i}", f"layers.{i}.{kind}", kind, (500,), True, 1.0, s))
    return R.DiffReport("a.pt", "b.pt", False, tuple(rows), (), None)


def test_diff_without_biases_has_the_weight_panel_alone(tmp_path):
    from analyzers.diff_plot import plot_diff

    plot_diff(_report(("weight", "bias")), tmp_path / "both.png")
    plot_diff(_report(("weight",)), tmp_path / "weights.png")
    (wb, hb), (ww, hw) = _png_size(tmp_path / "both.png"), _png_size(tmp_path / "weights.png")
    assert wb == ww and hw < 0.7 * hb  # one panel, not an empty second one


def test_si_ticks():
    from analyzers.profile_plot import si

    assert [si(v) for v in (4.1e10, 2e9, 5e5, 1e6, 120, 0)] == ["41G", "2G", "500k", "1M", "120", "0"]


def test_profile_plot_one_panel_per_batch(cli, tmp_path):
    common = ["zoo:digits_cnn:width=2", "zoo:digits_cnn", "--min-time", "0", "--min-runs", "2"]
    assert cli("profile", *common, "--batch", "1", "--plot", "one.png", cwd=tmp_path).code == 0
    assert cli("profile", *common, "--batch", "1,4", "--plot", "two.png", cwd=tmp_path).code == 0
    (w1, h1), (w2, h2) = _png_size(tmp_path / "one.png"), _png_size(tmp_path / "two.png")
    assert h1 == h2 and w2 > 1.5 * w1 - 400  # a second panel beside the first (the legend column is shared)
