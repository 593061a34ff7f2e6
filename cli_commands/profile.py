"""``surgery profile MODEL [MODEL...]``: measured latency beside MACs — the speed/FLOP trade-off."""

from __future__ import annotations

import typer
from rich.console import Console

from cli_commands.base import (
    ArchOpt,
    ForceOpt,
    InputOpt,
    JsonOpt,
    TrustOpt,
    WeightsOpt,
    app,
    console,
    err_console,
    human,
    load_model,
    parse_int_list,
    print_csv,
    print_json,
    progress,
    table,
)
from surgery.errors import SurgeryError

CSV_FIELDS = ["model", "runtime", "device", "batch", "dtype", "status", "median_ms", "p10_ms", "p90_ms", "cv", "runs",
              "throughput", "macs", "params", "bytes", "gmacs_per_s", "roofline_ms", "roofline_pct", "latency_ratio",
              "macs_ratio", "pareto", "threads", "setup_s", "warning", "error", "cost_error"]


_NARROW_DROP = {"p10–p90", "runs", "params", "GMAC/s"}


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
    cols = ["model", "runtime", "batch"] + ([] if one_dtype else ["dtype"]) + [
        "ms", "p10–p90", "CV", "runs", "img/s", "MACs", "params", "GMAC/s", "%floor", "×ms", "×MACs", "", "!"]
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
            _fmt(r.median_ms, ".3g") if ok else "–",
            f"{r.p10_ms:.3g}–{r.p90_ms:.3g}" if ok else "–",
            _fmt(r.cv, ".1%"), r.runs if ok else "–",
            _fmt(r.throughput, ".4g"),
            human(r.macs) if r.macs is not None else "–",
            human(r.params) if r.params is not None else "–",
            _fmt(r.gmacs_per_s, ".3g"),
            _fmt(r.roofline_pct, ".3g"),
            _fmt(r.latency_ratio, ".2f"),
            _fmt(r.macs_ratio, ".2f"),
            "★" if r.pareto else "",
            mark,
        ]
        rows.append(row)
    right = {"batch", "ms", "p10–p90", "CV", "runs", "img/s", "MACs", "params", "GMAC/s", "%floor", "×ms", "×MACs"}
    out = console
    if not console.is_terminal and console.width < 200:
        out = Console(highlight=False, width=200)  # piped: do not squeeze the table to 80 columns
    elif console.width < 150:  # a narrow terminal: the full detail is in --json / --csv
        keep = [i for i, c in enumerate(cols) if c not in _NARROW_DROP]
        cols = [cols[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    out.print(table(title, cols, rows, right=right))
    out.print("ms: median latency per forward pass of the batch; MACs per image; %floor: roofline floor / median; "
                  "×ms, ×MACs: against the first model with the same runtime and batch; "
                  "★: Pareto front of (MACs, latency) per batch.", style="dim", markup=False)
    for f in footnotes:
        out.print(f, markup=False, soft_wrap=True)


@app.command("profile")
def profile_cmd(
    models: list[str] = typer.Argument(..., help="Model references: FILE.pt, FILE.cfg, FILE.pt2 or zoo:NAME[:k=v]."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    runtime: str = typer.Option("torch", "--runtime",
                                help="Comma list of torch, cudagraph, compile, onnxruntime "
                                     "(or onnxruntime:cpu|cuda|tensorrt)."),
    batch: str = typer.Option("1", "--batch", help="Comma list of batch sizes, e.g. 1,8,32."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16 (comma list allowed)."),
    plot: str | None = typer.Option(None, "--plot", help="Write a PNG of latency against MACs to this file."),
    json_out: bool = JsonOpt,
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
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
    roofline_spec: str | None = typer.Option(None, "--roofline-spec",
                                                help="Device spec for the roofline floor (default: from the device)."),
    force: bool = ForceOpt,
    arch: str = ArchOpt,
    weights: str = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: str = InputOpt,
):
    """Time models (PyTorch eager, CUDA graphs, torch.compile, ONNX Runtime) beside their MACs."""
    from analyzers.latency import TimingConfig, expand_runtimes, resolve_device
    from analyzers.profile import parse_dtypes, profile
    from surgery.io import check_outputs

    if json_out and csv_out:
        raise SurgeryError("--json and --csv exclude each other; pick one")
    # every argument is checked before anything slow happens
    runtimes = expand_runtimes([r for r in runtime.split(",") if r.strip()], resolve_device(device))
    batches = parse_int_list(batch, "--batch")
    if threads is not None and threads < 1:
        raise SurgeryError(f"--threads {threads}: must be at least 1")
    if roofline_spec is not None:
        from analyzers.roofline import get_spec

        get_spec(roofline_spec)  # an unknown name fails here, not after the timing
    dtypes = parse_dtypes([d for d in dtype.split(",") if d.strip()])
    timing = TimingConfig(warmup=warmup, warmup_s=warmup_time, min_runs=min_runs, max_runs=max_runs,
                          min_time_s=min_time, max_time_s=max_time, max_cv=max_cv)
    if plot:
        check_outputs([plot], force=force, inputs=models)  # before a long sweep, not after
    nets = [load_model(m, arch, weights, trust_pickle, input) for m in models]

    with progress() as bar:
        task = bar.add_task("profiling", total=None)

        def on_progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        rep = profile(nets, device=device, runtimes=runtimes, batches=batches, dtypes=dtypes, timing=timing,
                      threads=threads, tf32=tf32, roofline_spec=roofline_spec, labels=list(models),
                      on_progress=on_progress)

    if plot:
        from analyzers.profile_plot import plot_profile

        out = plot_profile(rep, plot, force=force, inputs=models)
        err_console.print(f"wrote {out}", markup=False)
    if json_out:
        print_json(rep)
    elif csv_out:
        print_csv(CSV_FIELDS, ([getattr(r, f) for f in CSV_FIELDS] for r in rep.results))
    else:
        _render_table(rep)
    if json_out or csv_out:  # the table shows these as footnotes
        for r in rep.results:
            if r.warning:
                err_console.print(f"warning: {r.model} {r.runtime} batch {r.batch} {r.dtype}: {r.warning}",
                                  markup=False, soft_wrap=True)
