"""``surgery onion split|run|curve|export``: OnionNet cascades (onionnet-bmvc2016 §3–5).

The argument parsers of the onion commands live here (the library takes typed values)."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import (ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsOpt, app, console, examples,
                               human, load_model, load_models, note_random_weights, out, print_json, progress, table,
                               to_jsonable, wrote)
from cli_commands.option_groups import EACH_MODEL, ONE_MODEL, declared
from cli_commands.probing import ProbeDataOpt, check_data, probe_for
from surgery.core.errors import SurgeryError

onion_app = typer.Typer(help="OnionNet cascades: split a chain network into early-rejecting stages, run, curve, export.",
                        no_args_is_help=True)
app.add_typer(onion_app, name="onion", help="OnionNet cascades: split, run (skipping S2 for rejected samples), "
                                            "t(p) curves, two-graph ONNX export.")


def _floats(text: str, what: str, example: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SurgeryError(f"bad {what} {text!r}; {example}") from None


def parse_s1(text: str) -> float | tuple[int, ...]:
    """``--s1``: ``"0.25"`` -> 0.25 (a fraction of every hidden conv layer); ``"32,32,64"`` ->
    widths. A single number is always a fraction (write ``"32,"`` for one explicit width)."""
    raw = [v.strip() for v in str(text).split(",")]
    vals = [v for v in raw if v]
    if not vals:
        raise SurgeryError("--s1 is empty; give a fraction like 0.25 or one S1 width per hidden conv layer")
    if len(raw) == 1:
        return _floats(vals[0], "--s1", "give a fraction like 0.25 or widths like 32,32,64")[0]
    try:
        return tuple(int(v) for v in vals)
    except ValueError:
        raise SurgeryError(f"bad --s1 {text!r}; give a fraction like 0.25 or integer widths like 32,32,64") from None


def parse_tprs(text: str) -> tuple[float, ...]:
    """``--tpr``: ``"0.99,0.95"`` -> (0.99, 0.95)."""
    return tuple(_floats(text, "--tpr", "give recalls in (0, 1], e.g. 0.99 or 0.99,0.95"))


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """``--classes``: ``"1"`` or ``"0,2"`` -> S1-class indices; None or empty -> the default."""
    if text is None or not str(text).strip():
        return None
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise SurgeryError(f"--classes {text!r}: give S1-class indices like 1 or 0,2") from None


def parse_thresholds(text: str, k: int) -> list[float]:
    """``--pass-threshold``: ``"0.5"`` (every S1-class) or ``"0.5,inf,0.2"`` (one per class;
    ``inf`` = never passes, ``-inf`` = always) -> ``k`` values."""
    vals = _floats(text, "pass threshold", "give a score in [0, 1] or one per S1-class, e.g. 0.5 or 0.5,inf")
    if len(vals) == 1:
        vals = vals * k
    if len(vals) != k:
        raise SurgeryError(f"pass threshold {text!r} has {len(vals)} values; this cascade has {k} S1-classes "
                           f"(give one value, or {k})")
    return vals


@onion_app.command("split", epilog=examples(
    "surgery onion split zoo:onion_pm --s1 32,32,32,32,64,64,64 --s1-classes 2",
    "surgery onion split pm.pt --s1 0.5 -o p.pt",
))
@declared(ONE_MODEL)
def split_cmd(
    model: str = typer.Argument(..., help="Monolithic chain network: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    s1: str = typer.Option(..., "--s1", help="S1's share of every hidden conv layer (a fraction in (0, 1), e.g. 0.333) "
                                             "or one S1 width per hidden conv layer (e.g. 32,32,32,32,64,64,64)."),
    s1_classes: Optional[int] = typer.Option(None, "--s1-classes", help="Outputs of S1's own classifier "
                                                                         "(default: the model's outputs)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output checkpoint (default: MODEL-onion.pt)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the partition search's random starts."),
    data: Optional[str] = ProbeDataOpt,
    *, force, json_out, arch, weights, weights_cutoff, trust_pickle, input,
):
    """Split a trained chain network into a two-stage OnionNet cascade (S1 filters chosen to drop the least weight energy)."""
    from surgery.core import io as sio
    from surgery.onion.split import check_s1, split

    s1_val = check_s1(parse_s1(s1))  # bad fractions are refused before loading
    check_data(data)
    out_path = output or str(sio.default_output([model], "-onion"))
    sio.check_outputs([out_path], force=force, inputs=[model])
    sio.check_checkpoint_name(out_path)
    net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
    note_random_weights(net)
    result, rep = split(net, s1_val, s1_classes=s1_classes, seed=seed, probe=probe_for(data, net))
    path = sio.save(result, out_path, force=force, inputs=[model])
    if json_out:
        print_json({**to_jsonable(rep), "output": str(path)})
        return
    rows = [(l.layer, l.name, f"{l.kernel[0]}x{l.kernel[1]}", l.n, f"{l.n1}/{l.n2}", f"{l.dropped_weights:,}",
             f"{100 * l.dropped_fraction:.1f}", f"{100 * l.naive_dropped_fraction:.1f}") for l in rep.layers]
    console.print(table(f"onion split {rep.model}: S1/S2 filters per conv layer",
                        ["conv", "layer", "kernel", "n", "S1/S2", "dropped weights", "dropped energy %",
                         "first-n1 split %"], rows,
                        right=["conv", "n", "dropped weights", "dropped energy %", "first-n1 split %"]))
    console.print(f"S1 widths {'/'.join(map(str, rep.n1))} (last = {rep.s1_classes} S1-classes, head {rep.head_init}); "
                  f"S2 widths {'/'.join(map(str, rep.n2))}")
    console.print(f"params {rep.params_before:,} -> {rep.params_after:,} ({rep.dropped_weights:,} S2->S1 weights "
                  f"dropped)")
    if rep.verify is not None:
        console.print(f"verified: S2 output = monolithic net with the dropped blocks zero-filled "
                      f"(max abs {rep.verify['max_abs']:.3g}, max rel {rep.verify['max_rel']:.3g})")
    m = rep.moved
    top1 = "-" if m["top1_agreement"] is None else f"{100 * m['top1_agreement']:.0f}%"
    console.print(f"moved from the original on {rep.probe['source']}: max abs {m['max_abs']:.3g}, max rel {m['max_rel']:.3g}, "
                  f"top-1 agreement {top1}")
    for n in rep.notes:
        console.print(f"note: {n}")
    wrote(path)


@onion_app.command("run", epilog=examples(
    "surgery onion run onion_pm-onion.pt --batch 10 --pass-fraction 0.54",
    "surgery onion run p-trained-calibrated.pt --calibrated --batch 8",
))
def run_cmd(
    cascade: str = typer.Argument(..., help="OnionNet cascade: a split checkpoint or zoo:onion_p / onion_d / onion_r."),
    batch: int = typer.Option(16, "--batch", help="Probe inputs to run (random from --seed, or images with --data)."),
    pass_threshold: Optional[str] = typer.Option(None, "--pass-threshold",
                                                 help="Score a sample needs on any S1-class to pass: one value or one "
                                                      "per S1-class (inf = never). Default: the checkpoint's."),
    pass_fraction: Optional[float] = typer.Option(None, "--pass-fraction",
                                                  help="Force exactly this fraction of random samples to pass instead."),
    compaction: str = typer.Option("inplace", "--compaction", help="inplace (the paper's two-pass) or gather."),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe inputs (and of a forced mask)."),
    calibrated: bool = typer.Option(False, "--calibrated", help="Use the thresholds `surgery onion calibrate` stored; "
                                                                "refuse a cascade that has none."),
    data: Optional[str] = typer.Option(None, "--data", metavar="DIR",
                                       help="Run on BATCH real images from this folder (its val/ when it has train/ "
                                            "and val/) instead of random inputs: the pass fraction is measured."),
    json_out: bool = JsonOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = InputOpt,
):
    """Run a cascade: S1 on the batch, survivors compacted, S2 on them only, results scattered back."""
    import torch

    from analyzers import cost
    from zoo.onion import cascade_of
    from zoo.onion_runtime import ForcedPass, forced_mask, run, run_uncompacted

    if batch < 1:
        raise SurgeryError(f"--batch {batch} must be at least 1")
    if pass_threshold is not None and pass_fraction is not None:
        raise SurgeryError("give --pass-threshold or --pass-fraction, not both")
    if data and pass_fraction is not None:
        raise SurgeryError("--pass-fraction forces which samples pass; --data measures it on images: give one")
    check_data(data)
    net = load_model(cascade, arch, weights, trust_pickle, input)
    c = cascade_of(net)
    if calibrated:
        from surgery.onion.calibrate import require_thresholds

        if pass_threshold is not None or pass_fraction is not None:
            raise SurgeryError("--calibrated uses the stored thresholds; drop --pass-threshold/--pass-fraction")
        require_thresholds(net)
    from analyzers.onion_operating import calibrated as calibrated_p
    from surgery.core.probe import probe_json
    from surgery.evaluate import image_probe

    probe = image_probe(data, net, images=batch, batch=batch) if data else None
    x = probe.take(batch) if probe is not None else net.example_input(batch, seed=seed)
    batch = x.shape[0]  # a folder with fewer images than --batch: all of them
    thr = None if pass_threshold is None else torch.tensor(parse_thresholds(pass_threshold, c.s1_classes))
    mask = forced_mask(batch, pass_fraction, seed=seed) if pass_fraction is not None else None
    res = run(c, x, thresholds=thr, mask=mask, compaction=compaction)
    ref = run_uncompacted(c, x, res.passed)
    p = res.passed
    diff = (res.output[p] - ref[p]).abs().max().item() if res.n_passed else 0.0
    full = cost.analyze(ForcedPass(c, batch), net.input_shape, batch=batch).totals.macs
    done = cost.analyze(ForcedPass(c, res.n_passed), net.input_shape, batch=batch).totals.macs
    used = thr if thr is not None else c.thresholds
    cal = calibrated_p(net)
    rep = {
        "model": cascade, "batch": batch, "input_shape": list(net.input_shape),
        "thresholds": [float(v) for v in used], "forced_pass_fraction": pass_fraction, "compaction": compaction,
        "passed": res.n_passed, "rejected": batch - res.n_passed, "pass_fraction": res.n_passed / batch,
        "calibrated_pass_fraction": cal[0] if cal else None, "probe": probe_json(probe, batch), "moved": res.moved,
        "macs": done, "macs_all_pass": full, "timing_ms": res.timing_ms,
        "verify": {"max_abs": diff},
        "samples": [{"index": i, "passed": bool(p[i]), "s1_scores": [float(v) for v in res.scores[i]],
                     "output": None if not p[i] else [float(v) for v in res.output[i]]} for i in range(batch)],
    }
    if json_out:
        print_json(rep)
        return
    shown = min(batch, 8)
    rows = [(i, "pass" if p[i] else "rejected", " ".join(f"{float(v):.3f}" for v in res.scores[i][:4]),
             " ".join(f"{float(v):.4g}" for v in res.output[i][:3]) if p[i] else "-") for i in range(shown)]
    con = out()
    con.print(table(f"onion run {cascade}: {batch} probe inputs" + (f" (first {shown})" if shown < batch else ""),
                    ["sample", "S1", "S1 scores", "S2 output"], rows, right=["sample"]))
    con.print(f"probe: {rep['probe']['source']}"
              + ("" if probe is not None or pass_fraction is not None else
                 " (the pass fraction on random inputs says nothing about real data: --data DIR measures it)"))
    p_text = (f"forced p = {res.n_passed / batch:.3f}" if pass_fraction is not None
              else f"p = {res.n_passed / batch:.3f}")
    if cal is not None:
        p_text += f"; calibrated p̄ = {cal[0]:.3f} on {cal[1]}"
    con.print(f"{res.n_passed}/{batch} passed S1 ({p_text}; {res.moved} moved by {compaction} compaction); "
              f"S2 ran on {res.n_passed} samples: {human(done)} MACs of {human(full)} with every sample "
              f"passing ({100 * done / full:.0f}%)")
    t = res.timing_ms
    con.print(f"time: S1 {t['s1_ms']:.2f} ms, compaction {t['compact_ms']:.2f} ms, S2 {t['s2_ms']:.2f} ms, "
                  f"scatter {t['scatter_ms']:.2f} ms; survivors equal S2 on the whole batch (max abs diff {diff:.3g})")


@onion_app.command("curve", epilog=examples(
    "surgery onion curve zoo:onion_p --batch 16 --points 3 --plot onion-p-curve.png",
    "surgery onion curve p-trained-calibrated.pt --batch 16 --points 3 --runtime torch --min-time 0",
))
@declared(EACH_MODEL)
def curve_cmd(
    cascade: str = typer.Argument(..., help="OnionNet cascade: a split checkpoint or zoo:onion_p / onion_d / onion_r."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Monolithic baseline N_M (default: the cascade's "
                                                                     "widths n1+n2 as one chain)."),
    batch: int = typer.Option(120, "--batch", help="Batch size (the paper's Figure 3 uses 120)."),
    points: int = typer.Option(11, "--points", help="Pass fractions 0..1 evenly spaced."),
    runtimes: str = typer.Option("torch,onnxruntime", "--runtime", help="Comma list of torch, onnxruntime (as in "
                                                                      "`surgery profile --runtime`)."),
    min_time: float = typer.Option(0.2, "--min-time", help="Seconds of timed runs per point (at least 3 runs)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write a Figure-3-style PNG here."),
    *, force, json_out, arch, weights, trust_pickle, input,
):
    """t(p), t_NS(p) and t_M: complexity (exact MACs/bytes) and measured CPU time with a forced pass fraction."""
    from analyzers import latency as lat
    from analyzers import onion_curve as cv
    from surgery.core import io as sio
    from surgery.core.safety import check_finite_nonneg
    from zoo.onion import cascade_of

    check_finite_nonneg(min_time, "--min-time")  # refused, not clamped
    rts = tuple(r.strip() for r in runtimes.split(",") if r.strip())
    if plot:
        sio.check_outputs([plot], force=force, inputs=[cascade])
    net, base = (load_models([cascade] + ([baseline] if baseline else []), arch, weights, trust_pickle, input)
                 + [None])[:2]  # loader options: CASCADE, then --baseline
    cascade_of(net, sharing=True)
    timing = lat.TimingConfig(warmup=1, warmup_s=0.0, min_runs=3, min_time_s=min_time, max_time_s=10.0)
    with progress() as bar:
        task = bar.add_task("timing t(p), t_NS(p), t_M", total=None)
        rep = cv.curve(net, baseline=base, batch=batch, points=points, runtimes=rts, timing=timing,
                       progress=lambda d, t: bar.update(task, completed=d, total=t))
    path = cv.plot(rep, plot, force=force, inputs=[cascade]) if plot else None
    if json_out:
        print_json({**to_jsonable(rep), "plot": str(path) if path else None})
        return
    cols = ["p %", "passed", "t GMACs", "t_NS GMACs"]
    for rt in rep.runtimes:
        cols += [f"t {rt} ms", f"t_NS {rt} ms"]
    rows = []
    for q in rep.points:
        r = [f"{100 * q.p:.0f}", q.n_pass, f"{q.t.macs / 1e9:.3f}", f"{q.t_ns.macs / 1e9:.3f}"]
        for rt in rep.runtimes:
            r += [f"{q.t.ms[rt]:.1f}", f"{q.t_ns.ms[rt]:.1f}"]
        rows.append(r)
    console.print(table(f"onion curve {rep.model} (batch {rep.batch}, CPU {rep.threads} thread(s))", cols, rows,
                        right=cols))
    ms = ", ".join(f"{rt} {rep.t_m.ms[rt]:.1f} ms" for rt in rep.runtimes)
    console.print(f"t_M ({rep.baseline}): {rep.t_m.macs / 1e9:.3f} GMACs; {ms}")
    if rep.calibrated_pass_fraction is not None:
        console.print(f"calibrated operating point: p̄ = {100 * rep.calibrated_pass_fraction:.1f}% of samples pass S1 "
                      "(`surgery profile` times the cascade there)")
    ck = rep.checks
    even = ck["complexity_break_even_p"]
    even_text = "-" if even is None else f"{100 * even:.0f}%"
    console.print(f"complexity: t < t_NS for every p > 0: {ck['complexity_t_below_t_ns']}; t_NS > t_M at p = 100%: "
                  f"{ck['complexity_t_ns_above_t_m_at_p1']}; t_NS <= t_M up to p = {even_text}")
    for rt in rep.runtimes:
        console.print(f"measured {rt}: t < t_NS for every p > 0: {ck[f'{rt}_t_below_t_ns']}; "
                      f"t_NS > t_M at p = 100%: {ck[f'{rt}_t_ns_above_t_m_at_p1']}")
    for n in rep.notes:
        console.print(f"note: {n}")
    if path:
        wrote(path)


@onion_app.command("export", epilog=examples(
    "surgery onion export onion_pm-onion.pt",
))
def export_cmd(
    cascade: str = typer.Argument(..., help="OnionNet cascade: a split checkpoint or zoo:onion_p / onion_d / onion_r."),
    s1_out: Optional[str] = typer.Option(None, "--s1-output", help="S1 graph (default: MODEL-s1.onnx)."),
    s2_out: Optional[str] = typer.Option(None, "--s2-output", help="S2 graph (default: MODEL-s2.onnx)."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = InputOpt,
):
    """Export S1 (input -> scores + shared maps) and S2 (shared maps -> output) as two ONNX graphs with a dynamic batch."""
    from surgery.onion.export import default_outputs, export

    d1, d2 = default_outputs(cascade)
    outs = (s1_out or str(d1), s2_out or str(d2))
    from surgery.core import io as sio

    sio.check_outputs(outs, force=force, inputs=[cascade])
    rep = export(load_model(cascade, arch, weights, trust_pickle, input), outs, force=force)
    if json_out:
        print_json(to_jsonable(rep))
        return
    console.print(f"S1 graph: input -> s1_logits + {len(rep.shared_names)} shared tensor(s) "
                  f"({', '.join('x'.join(map(str, s)) for s in rep.shared_shapes)}); S2 graph: shared -> output; "
                  f"batch dynamic, opset {rep.opset}")
    console.print(f"verified in ONNX Runtime (CPU) with compaction at batch {' and '.join(map(str, rep.batches))}: "
                  f"max abs {rep.verify['max_abs']:.3g}, max rel {rep.verify['max_rel']:.3g}")
    wrote(rep.output[0], human(rep.size_bytes[0], 'B'))
    wrote(rep.output[1], human(rep.size_bytes[1], 'B'))
