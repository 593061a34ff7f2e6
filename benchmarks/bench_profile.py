"""Benchmark ``surgery profile``: the speed/FLOP trade-off of surgeries, and how repeatable it is.

1. **Trade-off table.** ResNet-50 v1 (the Deep Roots baseline) and its root-8 / root-64
   variants; with ``--full`` (the default on CUDA) also DiracNet-34 folded to a conv–ReLU
   chain (``surgery.fold``) beside its training form, and YOLOv3-416 shared at k=74 between
   two tasks (``surgery.share``) beside one plain YOLOv3 — each only when that surgery exists
   in this checkout. Timed with the profiler at each ``--batch`` for each ``--runtime``
   (default on CPU: torch, onnxruntime; on CUDA: torch, cudagraph, onnxruntime).
2. **Repeatability.** Five profiles of ResNet-50 v1 (torch runtime, the largest batch), each a
   fresh profile() call; the CV of the five medians. The target on a GPU is < 2 %; on a shared
   CPU the figure is only reported.

Output: the profiler's table per model (rows as in ``surgery profile --json``), then a
markdown table for docs/BENCHMARKS.md (``--markdown``) and the repeatability figure.

    .venv/bin/python benchmarks/bench_profile.py [--device cpu|cuda] [--batch 1,32]
        [--runtime torch,cudagraph,onnxruntime] [--full] [--quick] [--plot FILE.png] [--json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyzers.latency import TimingConfig
from analyzers.profile import profile
from cli_commands.base import to_jsonable
from surgery.core import io as sio

CV_TARGET_GPU = 0.02


def models(full: bool) -> tuple[list, list[str], list[str]]:
    """(nets, labels, notes): the Deep Roots trio, plus folded DiracNet and shared YOLOv3 when asked."""
    nets, labels, notes = [], [], []
    for root in (1, 8, 64):
        ref = "zoo:resnet50:variant=v1" + (f",root={root}" if root > 1 else "")
        nets.append(sio.load(ref))
        labels.append(ref)
    if not full:
        return nets, labels, notes
    try:
        from surgery.fold import fold

        dirac = sio.load("zoo:diracnet34")
        nets += [dirac, fold(dirac)[0]]
        labels += ["zoo:diracnet34", "zoo:diracnet34 folded"]
    except Exception as e:  # a surgery still being written is skipped, with the reason
        notes.append(f"folded DiracNet-34 skipped: {type(e).__name__}: {e}")
    try:
        from surgery.share import share

        yolo = sio.load("zoo:yolov3")
        nets += [yolo, share(yolo, [sio.load("zoo:yolov3")], 74)[0]]
        labels += ["zoo:yolov3", "zoo:yolov3 ×2 shared@74"]
    except Exception as e:
        notes.append(f"shared YOLOv3 skipped: {type(e).__name__}: {e}")
    return nets, labels, notes


def markdown(rep) -> str:
    dev = rep.device
    where = dev["cuda"]["name"] if dev.get("cuda") else f"{dev['cpu']} ({dev['threads']} threads)"
    lines = [f"Device: {where}; torch {dev['torch']}; onnxruntime "
             f"{(dev.get('onnxruntime') or {}).get('version', '-')}; {dev['date']}", "",
             "| model | runtime | batch | median ms | p10–p90 ms | CV | img/s | GMACs/img | ×ms | ×MACs | %floor |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rep.results:
        if r.status != "ok":
            lines.append(f"| {r.model} | {r.runtime} | {r.batch} | {r.status}: {r.error} |||||||")
            continue
        f = (lambda v, s: "–" if v is None else format(v, s))
        lines.append(f"| {r.model} | {r.runtime} | {r.batch} | {r.median_ms:.3f} | {r.p10_ms:.3f}–{r.p90_ms:.3f} | "
                     f"{r.cv:.1%} | {r.throughput:.1f} | {f(r.macs and r.macs / 1e9, '.2f')} | "
                     f"{f(r.latency_ratio, '.2f')} | {f(r.macs_ratio, '.2f')} | {f(r.roofline_pct, '.1f')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    ap.add_argument("--batch", default=None, help="comma list (default: 1 on CPU, 1,32 on CUDA)")
    ap.add_argument("--runtime", default=None, help="comma list of runtimes")
    ap.add_argument("--full", action="store_true", help="add folded DiracNet-34 and shared YOLOv3 (default on CUDA)")
    ap.add_argument("--quick", action="store_true", help="short timing (a smoke run, not a measurement)")
    ap.add_argument("--repeats", type=int, default=5, help="profiles for the repeatability figure")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    batches = [int(b) for b in (args.batch or ("1,32" if cuda else "1")).split(",")]
    runtimes = (args.runtime or ("torch,cudagraph,onnxruntime" if cuda else "torch,onnxruntime")).split(",")
    timing = (TimingConfig(warmup=2, warmup_s=0.0, min_runs=5, max_runs=20, min_time_s=0.1) if args.quick
              else TimingConfig(min_time_s=2.0 if cuda else 1.0, min_runs=20 if cuda else 10))

    nets, labels, notes = models(args.full or cuda)
    t0 = time.perf_counter()
    rep = profile(nets, device=device, runtimes=runtimes, batches=batches, timing=timing, labels=labels)
    sweep_s = time.perf_counter() - t0

    medians = []
    for _ in range(args.repeats):
        one = profile([nets[0]], device=device, runtimes=["torch"], batches=[max(batches)], timing=timing,
                      labels=[labels[0]])
        medians.append(one.results[0].median_ms)
    cv = statistics.stdev(medians) / statistics.fmean(medians) if len(medians) > 1 else 0.0
    repeat = {"model": labels[0], "runtime": "torch", "batch": max(batches), "medians_ms": medians, "cv": cv,
              "target": CV_TARGET_GPU if cuda else None, "ok": (cv < CV_TARGET_GPU) if cuda else None}

    if args.plot:
        from analyzers.profile_plot import plot_profile

        plot_profile(rep, args.plot, force=True)
    if args.json:
        print(json.dumps({"profile": to_jsonable(rep), "repeatability": repeat, "sweep_s": sweep_s,
                          "notes": notes}, indent=2))
    else:
        print(markdown(rep) if args.markdown else json.dumps(to_jsonable(rep)["results"], indent=1))
        print()
        print(f"repeatability: {args.repeats} profiles of {labels[0]} (torch, batch {max(batches)}): medians "
              + ", ".join(f"{m:.3f}" for m in medians) + f" ms; CV of the medians {cv:.2%}"
              + (f" (target < {CV_TARGET_GPU:.0%}: {'met' if repeat['ok'] else 'MISSED'})" if cuda else
                 " (CPU: reported only)"))
        print(f"sweep: {sweep_s:.1f} s")
        for n in notes:
            print("note:", n)
    return 0 if (repeat["ok"] is not False) else 1


if __name__ == "__main__":
    sys.exit(main())
