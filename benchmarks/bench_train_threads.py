"""Training throughput against the thread setting: `surgery train` on the digits with the default
threads (no --threads: threads x processes + workers <= cores, the main process counting as a
worker when it decodes itself) against every explicit --threads 1..cores, round-robin, median
images/s of several runs each. Target (issue 22): the default within 10 % of the best setting.

    .venv/bin/python benchmarks/bench_train_threads.py [--steps 60] [--repeats 3]

Prints one line per setting and the ratio default / best. Run it on a machine with nothing else
running: idle OpenMP threads spin, so other load changes which setting wins.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SURGERY = str(Path(sys.executable).parent / "surgery")


def run(args: list[str], cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([SURGERY, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="zoo:digits_cnn")
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        run(["data", "digits", "digits", "--json"], d)
        settings = ["default"] + [str(t) for t in range(1, cores + 1)]
        ips: dict[str, list[float]] = {s: [] for s in settings}
        used: dict[str, int] = {}
        for r in range(a.repeats):
            for s in settings[r % len(settings):] + settings[:r % len(settings)]:
                extra = [] if s == "default" else ["--threads", s]
                rep = run(["train", a.model, "--data", "digits", "--steps", str(a.steps), "--no-flip", "--json",
                           "-o", "m.pt", "--force", *extra], d)
                ips[s].append(rep["images_per_s"])
                used[s] = rep["threads"]
    med = {s: statistics.median(v) for s, v in ips.items()}
    best = max((s for s in settings if s != "default"), key=med.get)
    print(f"surgery train {a.model} --data digits --steps {a.steps} (batch 64, workers default), {cores} cores, "
          f"median of {a.repeats} round-robin runs")
    for s in settings:
        print(f"  --threads {s:>7} ({used[s]} thread{'s' if used[s] != 1 else ''}): {med[s]:8.0f} images/s")
    print(f"default / best (--threads {best}): {med['default'] / med[best]:.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
