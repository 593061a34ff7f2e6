"""Benchmark `surgery diff` on two YOLOv3 checkpoints (62 M parameters each).

Builds zoo:yolov3 (seed 0) as A and a "fine-tuned" B (small noise in layers 0..74, large
noise from layer 75 on, every tensor touched), saves both as .pt checkpoints in a temporary
directory, then measures, each in a fresh process so the memory figures are its own:

- the library: ``surgery.core.io.load`` x 2 + ``analyzers.diff.diff`` (time after imports);
- the CLI: ``surgery diff A.pt B.pt --json --plot FIG.png`` end to end (wall time).

Peak memory is the process's peak RSS (VmHWM / ru_maxrss), compared with the size of the
two checkpoint files together. Targets (the issue): under 5 s, under 2x the checkpoints.

    .venv/bin/python benchmarks/bench_diff.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIME_TARGET_S = 5.0
MEM_TARGET = 2.0  # x the two checkpoints' size

LIB_SCRIPT = r"""
import json, sys, time
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
t0 = time.perf_counter()
from surgery.core import io as sio
from analyzers.diff import diff
t1, c1 = time.perf_counter(), time.process_time()
base = rss("VmRSS")
a = sio.load(sys.argv[1]); b = sio.load(sys.argv[2])
t2, c2 = time.perf_counter(), time.process_time()
rep = diff(a, b)
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "diff_s": t3 - t2, "total_s": t3 - t1,
                  "load_cpu_s": c2 - c1, "diff_cpu_s": c3 - c2,
                  "base_rss": base, "peak_rss": rss("VmHWM"), "rows": len(rep.layers),
                  "suggested_split": rep.suggested_split,
                  "savings": dict(rep.split.savings) if rep.split and rep.split.savings else None}))
"""


def make_checkpoints(d: Path) -> tuple[Path, Path]:
    import torch

    from surgery.core import io as sio
    from zoo.plugin import build_zoo

    a = build_zoo("yolov3", {}, seed=0)
    pa = sio.save(a, d / "yolov3_a.pt")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in a.module.state_dict().items():  # B in place: A is on disk already
            if not t.is_floating_point():
                continue
            layer = int(name.split(".")[1])
            level = 0.002 if layer <= 74 else 0.1
            t.add_(torch.randn(t.shape, generator=g) * level * (t.abs().mean() + 1e-3))
    pb = sio.save(a.evolve(a.module, source="yolov3-finetuned"), d / "yolov3_b.pt")
    return pa, pb


def child_peak(cmd: list[str], env: dict) -> tuple[float, int, int, str, str]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    child_peak.cpu_s = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss * 1024, proc.returncode, out.decode(), err.decode()


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (best time, max memory)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()

    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(ROOT))
    surgery = str(Path(sys.executable).parent / "surgery")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        pa, pb = make_checkpoints(d)
        build_s = time.perf_counter() - t
        ck_bytes = pa.stat().st_size + pb.stat().st_size
        lib, cli, cli_plot = [], [], []
        for _ in range(args.repeat):
            wall, peak, rc, out, err = child_peak([sys.executable, "-c", LIB_SCRIPT, str(pa), str(pb)], env)
            if rc:
                print(err, file=sys.stderr)
                return 1
            lib.append(json.loads(out))
            for plot, runs in ((False, cli), (True, cli_plot)):
                png = d / "fig.png"
                cmd = [surgery, "diff", str(pa), str(pb), "--json"] + (["--plot", str(png), "--force"] if plot else [])
                wall, peak, rc, out, err = child_peak(cmd, env)
                if rc:
                    print(err, file=sys.stderr)
                    return 1
                rep = json.loads(out)
                runs.append({"wall_s": wall, "cpu_s": child_peak.cpu_s, "peak_rss": peak,
                             "suggested_split": (rep["split"] or {}).get("first_changed"),
                             "share_at": (rep["split"] or {}).get("share_at"),
                             "png_bytes": png.stat().st_size if plot else None})

    best = min(lib, key=lambda r: r["total_s"])
    lib_peak = max(r["peak_rss"] for r in lib)
    lib_base = min(r["base_rss"] for r in lib)

    def summary(runs):
        peak = max(r["peak_rss"] for r in runs)
        return {"wall_s": min(r["wall_s"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs), "peak_rss": peak,
                "peak_over_checkpoints": peak / ck_bytes}

    figures = {
        "checkpoints_bytes": ck_bytes,
        "params_each": 61_949_149,
        "build_and_save_s": build_s,
        "library": {"load_s": best["load_s"], "diff_s": best["diff_s"], "total_s": best["total_s"],
                    "load_cpu_s": min(r["load_cpu_s"] for r in lib), "diff_cpu_s": min(r["diff_cpu_s"] for r in lib),
                    "import_s": best["import_s"], "peak_rss": lib_peak, "rss_after_imports": lib_base,
                    "peak_over_checkpoints": lib_peak / ck_bytes,
                    "increase_over_checkpoints": (lib_peak - lib_base) / ck_bytes},
        "cli": summary(cli),
        "cli_plot": summary(cli_plot),
        "suggested_split": cli[0]["suggested_split"], "share_at": cli[0]["share_at"],
        "savings": best["savings"], "rows": best["rows"],
        "cpus": os.cpu_count(), "loadavg_1min": os.getloadavg()[0],
    }
    L, C = figures["library"], figures["cli"]
    ok_t = L["total_s"] < TIME_TARGET_S and C["wall_s"] < TIME_TARGET_S
    ok_m = L["peak_over_checkpoints"] < MEM_TARGET and C["peak_over_checkpoints"] < MEM_TARGET
    figures["targets_met"] = {"time": ok_t, "memory": ok_m}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"surgery diff: two YOLOv3 checkpoints, {ck_bytes / 2**20:,.0f} MiB together "
              f"({figures['rows']} tensors compared), {os.cpu_count()} CPUs, best of {args.repeat}")
        print(f"  library  load {L['load_s']:.2f} s + diff {L['diff_s']:.2f} s = {L['total_s']:.2f} s "
              f"(imports {L['import_s']:.2f} s; CPU time load {L['load_cpu_s']:.2f} s, diff {L['diff_cpu_s']:.2f} s); "
              f"peak RSS {mib(L['peak_rss'])} = "
              f"{L['peak_over_checkpoints']:.2f}x the checkpoints ({mib(L['peak_rss'] - L['rss_after_imports'])} "
              f"above the {mib(L['rss_after_imports'])} after imports = {L['increase_over_checkpoints']:.2f}x)")
        for key, what in (("cli", "--json"), ("cli_plot", "--json --plot F.png")):
            R = figures[key]
            print(f"  CLI      `surgery diff A.pt B.pt {what}` {R['wall_s']:.2f} s wall, {R['cpu_s']:.2f} s CPU "
                  f"(imports included); peak RSS {mib(R['peak_rss'])} = {R['peak_over_checkpoints']:.2f}x the checkpoints")
        print(f"  suggested split: first changed layer {figures['suggested_split']}, share at {figures['share_at']}"
              + (f"; savings {figures['savings']}" if figures["savings"] else ""))
        print(f"  targets (library and CLI --json): < {TIME_TARGET_S:g} s {'met' if ok_t else 'MISSED'}; "
              f"< {MEM_TARGET:g}x checkpoints {'met' if ok_m else 'MISSED'}; 1-min load average "
              f"{figures['loadavg_1min']:.1f} on {os.cpu_count()} CPUs (timings scale with it)")
    return 1 if args.check and not (ok_t and ok_m) else 0


if __name__ == "__main__":
    sys.exit(main())
