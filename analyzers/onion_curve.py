"""Time of a cascade as a function of the pass fraction p (OnionNet §5.2, Figure 3).

For a batch of ``B`` samples of which ``n = round(p·B)`` pass S1:

- ``t(p)`` — the sharing cascade: S1 on ``B``, S2 on the ``n`` survivors (with the
  compaction and scatter);
- ``t_NS(p)`` — its non-sharing baseline (§4): the same S1, then an independent network of
  the monolithic widths on the ``n`` survivors' images;
- ``t_M`` — the monolithic network on all ``B`` (constant in p).

Complexity is counted by :mod:`analyzers.cost` on :class:`zoo.onion_runtime.ForcedPass`
(exact MACs and bytes at the real batch sizes: the analyzer sees S2 at batch ``n``); the
paper's complexity ``Σ n_{l-1} s_l² n_l m_l²`` is the conv part of those MACs
(``conv_macs``). Measured time is the wall time of the real runtime with a forced pass mask
of exactly ``n`` random survivors: torch eager (:func:`zoo.onion_runtime.run`) and ONNX
Runtime CPU (the exported S1/S2 pair, :mod:`zoo.onion_onnx`), timed by
:func:`analyzers.latency.measure`. CPU only: CUDA graphs with fixed-size buckets need a GPU,
which this build has not been measured on.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from analyzers import cost
from analyzers import latency as lat
from analyzers.figures import save_png
from analyzers.onion_operating import calibrated
from surgery.core.errors import SurgeryError
from surgery.core.net import Net
from surgery.core.onnx_io import export_model
from surgery.core.ort_session import ort_session
from zoo.onion import OnionCascade, cascade_of, monolithic_of
from zoo.onion_onnx import export_bytes, ort_cascade
from zoo.onion_runtime import ForcedPass, forced_mask, run

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Cost:
    macs: int
    conv_macs: int
    bytes_read: int
    bytes_written: int
    ms: dict = field(default_factory=dict)  # runtime -> median ms per batch


@dataclass(frozen=True)
class CurvePoint:
    p: float  # the pass fraction asked for
    n_pass: int  # survivors in the batch
    t: Cost
    t_ns: Cost


@dataclass(frozen=True)
class CurveReport:
    model: str
    baseline: str
    batch: int
    input_shape: tuple[int, ...]
    runtimes: tuple[str, ...]
    points: tuple[CurvePoint, ...]
    t_m: Cost
    checks: dict  # the paper's ordering, on complexity and on each measured runtime
    device: str
    threads: int
    notes: tuple[str, ...] = ()
    calibrated_pass_fraction: float | None = None  # p̄ of the thresholds the cascade carries (onion calibrate)


def non_sharing(cascade: OnionCascade) -> OnionCascade:
    """N_NS: the same S1 and an independent S2 of the monolithic widths (random weights; only
    its cost matters here)."""
    return OnionCascade(cascade.blocks, cascade.in_channels, cascade.n1, cascade.monolithic_widths(),
                        share=False).eval()


def _complexity(module: nn.Module, shape, batch: int) -> Cost:
    r = cost.analyze(module, shape, batch=batch)
    return Cost(r.totals.macs, r.totals.conv_macs, r.totals.bytes_read, r.totals.bytes_written)


def _grid(points: int) -> list[float]:
    if points < 2:
        raise SurgeryError(f"--points {points}: a curve needs at least 2 points")
    return [i / (points - 1) for i in range(points)]


def curve(net: Net, *, baseline: Net | None = None, batch: int = 120, points: int = 11,
          runtimes=RUNTIMES, timing: lat.TimingConfig | None = None, seed: int = 0, progress=None) -> CurveReport:
    """t(p), t_NS(p) and t_M at ``points`` pass fractions 0..1 (see the module docstring).

    ``progress(done, total)`` is called after each measured model/point (the CLI's bar).
    """
    cascade_of(net, sharing=True)
    if batch < 1:
        raise SurgeryError(f"--batch {batch} must be at least 1")
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise SurgeryError(f"unknown runtime {bad[0]!r}; choose from {', '.join(RUNTIMES)}")
    cascade = net.module.eval()
    shape = tuple(net.input_shape)
    if baseline is not None:
        _check_baseline(baseline, cascade, shape)
    # complexity only (no runtimes): the baselines are built on the meta device, no weights
    with torch.device("meta") if not runtimes else contextlib.nullcontext():
        mono = baseline.module.eval() if baseline is not None else monolithic_of(cascade).eval()
        ns = non_sharing(cascade)
    grid = _grid(points)
    timing = timing or lat.TimingConfig(warmup=1, warmup_s=0.0, min_runs=3, min_time_s=0.2, max_time_s=5.0)
    total = (len(grid) * 2 + 1) * len(runtimes)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed)) if runtimes else None
    pairs = _ort_pairs(cascade, ns, mono, shape) if "onnxruntime" in runtimes else {}
    threads = torch.get_num_threads()
    with lat.torch_settings(torch.device("cpu")):
        m_cost = _complexity(mono, shape, batch)
        m_ms = {}
        for rt in runtimes:
            m_ms[rt] = _time_mono(rt, mono, x, pairs, timing)
            tick()
        t_m = Cost(m_cost.macs, m_cost.conv_macs, m_cost.bytes_read, m_cost.bytes_written, m_ms)
        pts = []
        for i, p in enumerate(grid):
            mask = forced_mask(batch, p, seed=seed + i)
            n = int(mask.sum())
            costs = []
            for which, model in (("t", cascade), ("t_ns", ns)):
                c = _complexity(ForcedPass(model, n), shape, batch)
                ms = {}
                for rt in runtimes:
                    ms[rt] = _time_cascade(rt, model, x, mask, pairs.get(which), timing)
                    tick()
                costs.append(Cost(c.macs, c.conv_macs, c.bytes_read, c.bytes_written, ms))
            pts.append(CurvePoint(p, n, *costs))
    notes = ["CPU only: no GPU was available, so CUDA graphs with fixed-size buckets were not measured",
             "t_NS uses a randomly initialised non-sharing baseline (only its cost matters)"]
    return CurveReport(net.source, baseline.source if baseline is not None else "monolithic of the cascade (n1+n2)",
                       batch, shape, tuple(runtimes), tuple(pts), t_m, _checks(pts, t_m, runtimes), "cpu", threads,
                       tuple(notes), _calibrated(net))


def _calibrated(net: Net) -> float | None:
    cal = calibrated(net)
    return cal[0] if cal else None


def _check_baseline(baseline: Net, cascade: OnionCascade, shape) -> None:
    if tuple(baseline.input_shape) != shape:
        raise SurgeryError(f"--baseline {baseline.source} takes {'x'.join(map(str, baseline.input_shape))}, the "
                           f"cascade {'x'.join(map(str, shape))}")


def _checks(pts, t_m: Cost, runtimes) -> dict:
    """The paper's ordering: t < t_NS for every p > 0 (equal at p = 0, where neither runs S2),
    and t_NS > t_M at p = 1; the last p where t_NS <= t_M (the cascade's break-even)."""
    out = {
        "complexity_t_below_t_ns": all(q.t.macs < q.t_ns.macs for q in pts if q.n_pass > 0),
        "complexity_t_ns_above_t_m_at_p1": pts[-1].t_ns.macs > t_m.macs,
        "complexity_break_even_p": max((q.p for q in pts if q.t_ns.macs <= t_m.macs), default=None),
    }
    for rt in runtimes:
        out[f"{rt}_t_below_t_ns"] = all(q.t.ms[rt] < q.t_ns.ms[rt] for q in pts if q.n_pass > 0)
        out[f"{rt}_t_ns_above_t_m_at_p1"] = pts[-1].t_ns.ms[rt] > t_m.ms[rt]
    return out


# ----------------------------------------------------------------------------- timing


def _time_mono(rt: str, mono: nn.Module, x, pairs, timing) -> float:
    if rt == "torch":
        with torch.inference_mode():
            return lat.measure(lambda: mono(x), timing).median_ms
    sess = pairs["m"]
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lat.measure(lambda: sess.run(None, feed), timing).median_ms


def _time_cascade(rt: str, model: OnionCascade, x, mask, pair, timing) -> float:
    if rt == "torch":
        return lat.measure(lambda: run(model, x, mask=mask), timing).median_ms
    xn, mn = x.numpy(), mask.numpy()
    return lat.measure(lambda: pair(xn, mn), timing).median_ms


def _ort_pairs(cascade: OnionCascade, ns: OnionCascade, mono: nn.Module, shape) -> dict:
    threads = torch.get_num_threads()
    out = {}
    for key, model in (("t", cascade), ("t_ns", ns)):
        d1, d2, _ = export_bytes(model, shape)
        out[key] = ort_cascade(d1, d2, model.thresholds.numpy(), threads=threads)
    # the monolithic net: the TorchScript exporter, as for the stages (a plain conv chain)
    data = export_model(mono, torch.randn(2, *shape), exporter="torchscript", dynamic_batch=True).data
    out["m"] = ort_session(data, threads=threads)
    return out


def plot(report: CurveReport, path, *, force: bool = False, inputs=()):
    """Figure 3 of the paper: measured time (top, one line style per variant, one colour per
    runtime) and complexity (bottom, GMACs) against the pass fraction; a marker at every
    measured point, and the calibrated p̄ (when the cascade carries one) as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = [100 * q.p for q in report.points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 7.2), sharex=True)
    colours = {"torch": "tab:blue", "onnxruntime": "tab:orange"}
    for rt in report.runtimes:
        c = colours.get(rt, None)
        top.plot(ps, [q.t.ms[rt] for q in report.points], "-o", color=c, ms=4, label=f"t ({rt})")
        top.plot(ps, [q.t_ns.ms[rt] for q in report.points], "--s", color=c, ms=4, label=f"t_NS ({rt})")
        top.plot(ps, [report.t_m.ms[rt]] * len(ps), ":", color=c, label=f"t_M ({rt})")
    top.set_ylabel(f"measured time per batch of {report.batch} [ms]")
    top.set_title(f"{report.model}: time vs pass fraction (CPU, {report.threads} thread(s))", fontsize=10)
    top.legend(fontsize=7, ncol=len(report.runtimes))
    top.grid(alpha=0.3)
    g = 1e9
    bottom.plot(ps, [q.t.conv_macs / g for q in report.points], "-ok", ms=4, label="t")
    bottom.plot(ps, [q.t_ns.conv_macs / g for q in report.points], "--sk", ms=4, label="t_NS")
    if report.calibrated_pass_fraction is not None:
        pb = 100 * report.calibrated_pass_fraction
        for ax in (top, bottom):
            ax.axvline(pb, color="tab:red", lw=1.2, ls="-.", label=f"calibrated p̄ = {pb:.1f}%")
    bottom.plot(ps, [report.t_m.conv_macs / g] * len(ps), ":k", label="t_M")
    bottom.set_xlabel("p: samples passing S1 [%]")
    bottom.set_ylabel("time complexity [GMACs of convs per batch]")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, force=force, inputs=inputs, dpi=110)

