"""``surgery profile MODEL [MODEL...]``: measured latency beside MACs — the speed/FLOP trade-off."""

from __future__ import annotations

import math
from typing import Optional

import typer

from cli_commands.base import (ArchEachOpt, CsvOpt, ForceOpt, JsonOpt, SurgeryError, TrustOpt, WeightsCutoffOpt, WeightsEachOpt,
                               app, check_formats, err_console, examples, fmt_ms, fmt_num, human, load_models, out,
                               parse_int_list, parse_shapes, print_csv, print_json, progress, shape_str, table, to_jsonable,
                               wrote)
from cli_commands.flops import DeviceSpecOpt
from cli_commands.probing import check_data

CSV_FIELDS = ["model", "runtime", "device", "batch", "dtype", "status", "median_ms", "p10_ms", "p90_ms", "cv", "runs",
              "throughput", "macs", "params", "bytes", "gmacs_per_s", "roofline_ms", "roofline_pct", "roofline_estimate", "latency_ratio",
              "macs_ratio", "pareto", "threads", "setup_s", "warning", "error", "cost_error"]


PASS_IMAGES = 256  # images a cascade's pass fraction is measured on (--data)
_NARROW_DROP = ("p10–p90 ms", "runs", "params", "GMAC/s", "×MACs", "CV")


def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _notes(r) -> list[str]:
    parts = []
    if r.status != "ok":
        parts.append(f"{r.status}: {r.error}")
    if r.warning:
        parts.append(r.warning)
    if r.cost_error:
        parts.append("no MACs: " + r.cost_error)
    if r.onnx and r.status == "ok":
        parts.append(f"ONNX via the {r.onnx['exporter']} exporter, opset {r.onnx['opset']}, verified against PyTorch: "
                     f"max rel {r.onnx['max_rel']:.1e}" + "".join(f"; {n}" for n in r.onnx.get("notes", [])))
    return parts


def _render_table(rep) -> None:
    dev = rep.device
    cuda = dev.get("cuda")
    where = (f"{cuda['name']} (sm {cuda['capability']}, CUDA {cuda['cuda_version']})" if cuda
             else f"{dev['cpu']}, {dev['threads']} thread{'s' if dev['threads'] != 1 else ''}")
    dtypes = {r.dtype for r in rep.results}
    one_dtype = len(dtypes) == 1
    title = (f"{where} · torch {dev['torch']}" + (f" · {next(iter(dtypes))}" if one_dtype else "")
             + f" · {dev['date']}")
    estimate = any(r.roofline_estimate for r in rep.results)
    floor_col = "%floor≈" if estimate else "%floor"
    cols = ["model", "runtime", "batch"] + ([] if one_dtype else ["dtype"]) + [
        "ms", "p10–p90 ms", "CV", "runs", "img/s", "MACs", "params", "GMAC/s", floor_col, "×ms", "×MACs", "", "!"]
    rows, footnotes = [], []
    for r in rep.results:
        ok = r.status == "ok"
        notes = _notes(r)
        mark = ""
        if notes:
            footnotes.append(f"[{len(footnotes) + 1}] {r.model} {r.runtime} batch {r.batch}"
                             + ("" if one_dtype else f" {r.dtype}") + ": " + " — ".join(notes))
            mark = f"{len(footnotes)}" + ("⚠" if r.warning and "spread" in r.warning else "")
        rt = r.runtime if r.device in ("cpu", dev["device"]) else f"{r.runtime} ({r.device})"
        row = [r.model, rt if ok else f"{rt} ({r.status})", r.batch] + ([] if one_dtype else [r.dtype])
        row += [
            fmt_ms(r.median_ms) if ok else "–",
            f"{fmt_ms(r.p10_ms)}–{fmt_ms(r.p90_ms)}" if ok else "–",
            _fmt(r.cv, ".1%"), r.runs if ok else "–",
            fmt_num(r.throughput),
            human(r.macs) if r.macs is not None else "–",
            human(r.params) if r.params is not None else "–",
            fmt_num(r.gmacs_per_s),
            fmt_num(r.roofline_pct),
            _fmt(r.latency_ratio, ".2f"),
            _fmt(r.macs_ratio, ".2f"),
            "★" if r.pareto else "",
            mark,
        ]
        rows.append(row)
    right = {"batch", "ms", "p10–p90 ms", "CV", "runs", "img/s", "MACs", "params", "GMAC/s", floor_col, "×ms",
             "×MACs"}
    o = out()
    o.print(table(title, cols, rows, right=right, drop=_NARROW_DROP))
    o.print("ms: median latency per forward pass of the batch; MACs per image; %floor: roofline floor / median"
            + (" (≈: the floor is an estimate from peaks measured on this machine)" if estimate else "")
            + "; ×ms, ×MACs: against the first model with the same runtime and batch; "
            "★: Pareto front of (MACs, latency) per batch; A+B: A and B run one after the other.",
            style="dim", markup=False)
    for f in footnotes:
        o.print(f, markup=False)


def entry_parts(m: str) -> list[str]:
    """The models of one entry: ``A.pt+B.pt`` runs A then B; an existing file whose name holds a
    ``+`` (``base+text@74.pt`` from an older share) is one model."""
    from pathlib import Path

    if not m:
        raise SurgeryError("bad model entry ''; write MODEL or A.pt+B.pt")
    if "+" not in m or Path(m).exists():
        return [m]
    parts = m.split("+")
    if any(not p for p in parts):
        raise SurgeryError(f"bad model entry {m!r}; write MODEL or A.pt+B.pt (no empty part around a +)")
    missing = [p for p in parts if not p.startswith(("zoo:", "py:")) and not Path(p).exists()]
    if missing:
        raise SurgeryError(f"model {m!r} does not exist; read as {' then '.join(repr(p) for p in parts)} ('+' joins "
                           f"models run one after the other), {missing[0]!r} does not exist either")
    return parts


def _operating(net, data: str | None, label: str, cascades: list):
    """A cascade (OnionNet) is profiled at its operating point p (measured on --data images, else
    its calibrated p̄); anything else as it is. Records what was used in ``cascades``."""
    from analyzers.onion_operating import at_operating_point, macs_at, operating_point
    from zoo.onion import is_cascade

    if not is_cascade(net.module):
        return net
    from cli_commands.probing import probe_for

    op = operating_point(net, probe_for(data, net, images=PASS_IMAGES, batch=64))
    m = macs_at(net, op.pass_fraction)
    cascades.append({"model": label, **op.to_json(), "macs_at_p": m["at_p"], "macs_s1": m["s1"],
                     "macs_all_pass": m["all_pass"]})
    return at_operating_point(net, op)


@app.command("profile", epilog=examples("surgery profile zoo:resnet18 zoo:resnet18:root=8 --batch 1,8",
                                        "surgery profile base.pt+text.pt shared.pt",
                                        "surgery profile model.pt --runtime torch,onnxruntime --dtype float32,bfloat16",
                                        "surgery profile zoo:shufflenet_v2_x1_0 --by kind --threads 1",
                                        "surgery profile zoo:mobilenet_v2 --by layer --top 10 --runtime onnxruntime",
                                        "surgery profile model.pt --device cuda --device-spec h100-sxm --json"))
def profile_cmd(
    models: list[str] = typer.Argument(..., help="Model references: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]; "
                                                 "A.pt+B.pt runs A then B as one entry (an existing file named with a + is one model)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    runtime: str = typer.Option("torch", "--runtime",
                                help="Comma list of torch, cudagraph, compile, onnxruntime "
                                     "(or onnxruntime:cpu|cuda|tensorrt)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Comma list of batch sizes, e.g. 1,8,32 (default 1; "
                                        "T for a Darknet recurrent net with [net] time_steps=T)."),
    dtype: str = typer.Option("float32", "--dtype", help="The model's precision for timing: float32, float16 or "
                                                          "bfloat16 (a comma list sweeps them)."),
    plot: str | None = typer.Option(None, "--plot", help="Write a PNG of latency against MACs to this file."),
    json_out: bool = JsonOpt,
    csv_out: bool = CsvOpt,
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime "
                                                                 "(default: torch's current setting)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed warm-up runs (at least; also --warmup-time)."),
    warmup_time: float = typer.Option(0.25, "--warmup-time", help="Minimum warm-up time in seconds."),
    min_runs: int = typer.Option(10, "--min-runs", help="Minimum timed runs."),
    max_runs: int = typer.Option(1000, "--max-runs", help="Maximum timed runs."),
    min_time: float = typer.Option(1.0, "--min-time", help="Time each configuration for at least this many seconds."),
    max_time: float = typer.Option(30.0, "--max-time", help="Stop timing one configuration after this many seconds."),
    max_cv: float = typer.Option(0.10, "--max-cv", help="Warn when the coefficient of variation exceeds this."),
    tf32: bool = typer.Option(False, "--tf32", help="Allow TF32 for float32 on CUDA (faster, less exact)."),
    device_spec: str | None = DeviceSpecOpt,
    force: bool = ForceOpt,
    arch: list[str] | None = ArchEachOpt,
    weights: list[str] | None = WeightsEachOpt,
    weights_cutoff: int = WeightsCutoffOpt,
    trust_pickle: bool = TrustOpt,
    input: str = typer.Option(None, "--input", help="Input shape(s) without batch: 3x416x416, or a sweep "
                                                     "3x224x224,3x416x416 (default: each model's)."),
    data: Optional[str] = typer.Option(None, "--data", metavar="DIR",
                                       help="OnionNet cascades: measure the pass fraction p on real images from this "
                                            "folder (default: the p̄ `onion calibrate` stored)."),
    by: Optional[str] = typer.Option(None, "--by", help="layer or kind: measured time per layer (the indices of "
                                     "`surgery layers`) or per operator kind (convolution, data movement, "
                                     "element-wise, channel shuffle, other), beside MACs and bytes; one model."),
    top: Optional[int] = typer.Option(None, "--top", help="With --by layer: the N slowest layers only."),
):
    """Time models (PyTorch eager, CUDA graphs, torch.compile, ONNX Runtime) beside their MACs."""
    from analyzers.latency import TimingConfig, expand_runtimes, resolve_device
    from analyzers.profile import parse_dtypes, profile
    from surgery.core.io import check_outputs

    check_formats(json_out, csv_out)
    # every argument is checked before anything slow happens
    runtimes = expand_runtimes([r for r in runtime.split(",") if r.strip()], resolve_device(device))
    batches = parse_int_list(batch, "--batch") if batch is not None else None  # None: the models' batch unit
    if threads is not None and threads < 1:
        raise SurgeryError(f"--threads {threads}: must be at least 1")
    if device_spec is not None:
        from analyzers.roofline import get_spec

        get_spec(device_spec)  # an unknown name fails here, not after the timing
    dtypes = parse_dtypes([d for d in dtype.split(",") if d.strip()])
    timing = TimingConfig(warmup=warmup, warmup_s=warmup_time, min_runs=min_runs, max_runs=max_runs,
                          min_time_s=min_time, max_time_s=max_time, max_cv=max_cv)
    if by is not None or top is not None:  # where the milliseconds go: cli_commands/profile_layers.py
        from cli_commands.profile_layers import profile_by

        return profile_by(models, by, top, device=device, runtimes=runtimes, batches=batches, dtypes=dtypes,
                          timing=timing, threads=threads, device_spec=device_spec, json_out=json_out, csv_out=csv_out,
                          plot=plot, force=force, load=lambda refs: load_models(refs, arch, weights, trust_pickle,
                                                                               input, weights_cutoff))
    parts = {m: entry_parts(m) for m in models}
    inputs = [p for m in models for p in parts[m]]
    if plot:
        check_outputs([plot], force=force, inputs=inputs)  # before a long sweep, not after
    check_data(data)
    shapes = parse_shapes(input) or [None]
    entries, labels = [], []
    cascades: list[dict] = []
    for shape in shapes:
        text = shape_str(shape) if shape else None
        # per-model options go to the references in order (A.pt+B.pt counts as two)
        nets = iter(load_models(inputs, arch, weights, trust_pickle, text, weights_cutoff))
        for m in models:
            label = m if len(shapes) == 1 else f"{m} @{text}"
            entry = [_operating(next(nets), data, label, cascades) for p in parts[m]]
            entries.append(entry)
            labels.append(label)

    if batches is None:
        from surgery.core.net import batch_unit

        batches = [math.lcm(*(batch_unit(n.module) for e in entries for n in e))]
    with progress() as bar:
        task = bar.add_task("profiling", total=None)

        def on_progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        rep = profile(entries, device=device, runtimes=runtimes, batches=batches, dtypes=dtypes, timing=timing,
                      threads=threads, tf32=tf32, device_spec=device_spec, labels=labels,
                      on_progress=on_progress)

    measured = any(r.status == "ok" for r in rep.results)
    if plot and measured:
        from analyzers.profile_plot import plot_profile

        written = plot_profile(rep, plot, force=force, inputs=inputs)
        wrote(written)
    for c in cascades:
        c["survivors"] = {str(b): int(round(c["pass_fraction"] * b)) for b in batches}
    if json_out:
        print_json({**to_jsonable(rep), "cascades": cascades} if cascades else rep)
    elif csv_out:
        print_csv(CSV_FIELDS, ([getattr(r, f) for f in CSV_FIELDS] for r in rep.results))
    else:
        _render_table(rep)
    if not json_out:
        for c in cascades:
            where = out() if not csv_out else err_console
            surv = ", ".join(f"batch {b}: {n}" for b, n in c["survivors"].items())
            where.print(f"{c['model']}: OnionNet cascade at p = {c['pass_fraction']:.3f} ({c['source']}); S2 runs on "
                        f"round(p·batch) samples ({surv}); MACs per image at p: {human(c['macs_at_p'])} (S1 alone "
                        f"{human(c['macs_s1'])}, every sample passing {human(c['macs_all_pass'])})",
                        markup=False, soft_wrap=True)
    if json_out or csv_out:  # the table shows these as footnotes
        for r in rep.results:
            if r.warning:
                err_console.print(f"warning: {r.model} {r.runtime} batch {r.batch} {r.dtype}: {r.warning}",
                                  markup=False, soft_wrap=True)
    if not measured:  # every run failed or was unavailable: the rows above say why
        first = next((r for r in rep.results if r.error), None)
        raise SurgeryError("no timing: every run failed or was unavailable"
                           + (f" (first: {first.model} {first.runtime}: {first.error})" if first else ""))
