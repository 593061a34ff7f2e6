"""Cost analyzer speed and memory (not a test: timings depend on the machine).

1. Full per-layer analysis of YOLOv3 at 608x608 — native (meta device) vs fvcore's
   FlopCountAnalysis (real CPU forward, total + by_module), in the same process, same run.
   Both first ("cold", per-process start-up included) and repeated ("warm", median) calls.
2. The whole YOLOv3 analysed at 8192x8192 (activations of ~40 GiB if they were real) in a
   fresh subprocess: time and peak RSS (resource.getrusage) of the whole process.

Run: ``.venv/bin/python benchmarks/bench_cost.py`` (add ``--quick`` for fewer repeats).
Figures are recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from surgery.core.io import load
from analyzers.cost import analyze
t1 = time.perf_counter()
net = load("zoo:yolov3", input_shape=(3, 8192, 8192))
t2 = time.perf_counter()
rep = analyze(net)
t3 = time.perf_counter()
json.dump({"import_s": t1 - t0, "load_s": t2 - t1, "analyze_s": t3 - t2, "layers": len(rep.layers),
           "macs": rep.totals.macs, "activations": rep.totals.activations, "bytes": rep.totals.bytes,
           "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, sys.stdout)
"""


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_vs_fvcore(repeats: int) -> dict:
    import torch

    from analyzers.cost import analyze
    from surgery.core.io import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    net = load("zoo:yolov3", input_shape=(3, 608, 608))
    x = torch.randn(1, 3, 608, 608)

    def native():
        rep = analyze(net)
        return rep.totals.macs, len(rep.layers)

    def fvcore():
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            fca = FlopCountAnalysis(net.module, (x,))
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            by_module = fca.by_module()
            return fca.by_operator()["conv"], len(by_module)

    t = time.perf_counter()
    n_macs, n_layers = native()
    native_cold = time.perf_counter() - t
    t = time.perf_counter()
    f_macs, _ = fvcore()
    fvcore_cold = time.perf_counter() - t
    native_warm = _median_time(native, repeats)
    fvcore_warm = _median_time(fvcore, max(1, repeats // 2))
    return {"native_cold_s": native_cold, "fvcore_cold_s": fvcore_cold, "native_warm_s": native_warm,
            "fvcore_warm_s": fvcore_warm, "ratio_warm": fvcore_warm / native_warm,
            "ratio_cold": fvcore_cold / native_cold, "layers": n_layers, "native_macs": n_macs,
            "fvcore_conv_macs": f_macs, "threads": torch.get_num_threads()}


def bench_8192() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        raise SystemExit(f"8192x8192 child failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> None:
    quick = "--quick" in sys.argv
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python "
          f"{platform.python_version()}")
    r = bench_vs_fvcore(3 if quick else 7)
    print(f"YOLOv3 608x608, full per-layer analysis ({r['layers']} layers, torch threads {r['threads']}):")
    print(f"  native (meta device): cold {r['native_cold_s']:.3f} s, warm {r['native_warm_s']:.3f} s (median)")
    print(f"  fvcore (real CPU):    cold {r['fvcore_cold_s']:.3f} s, warm {r['fvcore_warm_s']:.3f} s (median)")
    print(f"  speed-up: {r['ratio_warm']:.1f}x warm, {r['ratio_cold']:.1f}x cold "
          f"(target >= 10x); conv MACs native {r['native_macs']:,} vs fvcore {r['fvcore_conv_macs']:,}")
    c = bench_8192()
    rss_gib = c["max_rss_kib"] / (1 << 20)
    total = c["import_s"] + c["load_s"] + c["analyze_s"]
    print(f"YOLOv3 8192x8192 in a fresh process ({c['layers']} layers, {c['macs'] / 1e12:.2f} T MACs, "
          f"{c['activations'] * 4 / (1 << 30):.1f} GiB of float32 activations never allocated):")
    print(f"  analyze {c['analyze_s']:.3f} s (import {c['import_s']:.2f} s, build+init {c['load_s']:.2f} s, "
          f"whole process {total:.2f} s; target < 10 s)")
    print(f"  peak RSS {rss_gib:.2f} GiB (target < 2 GiB)")
    ok = r["ratio_warm"] >= 10 and total < 10 and rss_gib < 2
    print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
