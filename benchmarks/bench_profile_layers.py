"""Benchmark ``surgery profile --by``: the ShuffleNet v2 thesis's evidence (§3.1.1) on this machine.

1. **Table 3.1** — share of inference time per operator kind (convolution, data movement,
   element-wise, channel shuffle, other) for ShuffleNet v2 1× and MobileNet v2 1× at 224×224,
   batch 1, with :func:`analyzers.layer_profile.profile_layers`: torch eager and ONNX Runtime,
   1 thread and all threads; printed beside the seed's GPU (GTX 1080Ti) and ARM (Snapdragon
   810) rows, which were measured on ShuffleNet **v1** (1×, g=3) and MobileNet v2 in MegBrain.
2. **P1** — 10 blocks of two 1×1 convs (c1→c2, c2→c1) on a 56×56 input at fixed FLOPs
   (c1·c2 = c²) for c1:c2 = 1:1, 1:2, 1:6, 1:12, at several FLOPs levels (c): time against the
   memory access cost hw(c1+c2)+c1c2 per conv, both as a ratio to the 1:1 net measured in the
   same run (round-robin, order rotating).
3. **P2** — 10 stacked grouped 1×1 convs c→c at fixed FLOPs (c²/g constant: c = c0·√g) for
   g = 1, 2, 4, 8: time against the memory access cost hw·2c + c²/g, as a ratio to g = 1.

Memory access costs come from the cost analyzer (layer-boundary bytes / 4: the formula's elements,
checked here). Output: markdown tables (``--markdown``) or JSON, and PNG plots (``--plot-dir``).

    .venv/bin/python benchmarks/bench_profile_layers.py [--quick] [--threads 1,2] [--markdown]
        [--plot-dir docs] [--skip table|p1|p2] [--levels 32,64,128] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyzers.cost import analyze
from analyzers.latency import TimingConfig
from analyzers.layer_profile import KINDS, profile_layers
from benchmarks.common import time_models

# The seed's Table 3.1 (MegBrain, full fusion; ShuffleNet v1 1x g=3, MobileNet v2 1x, 224x224)
SEED_ROWS = [
    ("seed: ShuffleNet v1 · GPU (1080Ti)", {"convolution": .50, "data movement": .20, "element-wise": .15,
                                            "channel shuffle": .05, "other": .10}),
    ("seed: ShuffleNet v1 · ARM (SD810, 1 thr)", {"convolution": .87, "data movement": .01, "element-wise": .04,
                                                  "channel shuffle": 0.0, "other": .08}),
    ("seed: MobileNet v2 · GPU (1080Ti)", {"convolution": .54, "data movement": .22, "element-wise": .23,
                                           "other": .01}),
    ("seed: MobileNet v2 · ARM (SD810, 1 thr)", {"convolution": .89, "data movement": .003, "element-wise": .105,
                                                 "other": .002}),
]
MODELS = ("zoo:shufflenet_v2_x1_0", "zoo:mobilenet_v2")
RATIOS = (1, 2, 6, 12)
GROUPS = (1, 2, 4, 8)
HW = 56


# ------------------------------------------------------------------ 1. Table 3.1


def table31(threads_list, timing) -> list:
    reps = []
    for ref in MODELS:
        for runtime in ("torch", "onnxruntime"):
            for th in threads_list:
                reps.append(profile_layers(ref, runtime=runtime, threads=th, timing=timing))
    return reps


def table31_markdown(reps) -> str:
    head = ("| setting | Conv | Data | Element-wise | Shuffle | Other | model ms (no profiler) | profiled ms | "
            "sum of layers ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [head]
    for label, shares in SEED_ROWS:
        cells = [f"{100 * shares[k]:.1f}%" if k in shares else "–" for k in KINDS]
        lines.append(f"| {label} | " + " | ".join(cells) + " | | | |")
    for r in reps:
        name = r.model.replace("zoo:", "")
        cells = [f"{100 * r.kind(k).share:.1f}%" for k in KINDS]
        lines.append(f"| {name} · {r.runtime.replace(':cpu', '')} · {r.threads} thr | " + " | ".join(cells)
                     + f" | {r.model_ms:.2f} | {r.profiled_ms:.2f} | {r.layers_sum_ms:.2f} |")
    seen = set()
    for r in reps:
        if r.model in seen:
            continue
        seen.add(r.model)
        name = r.model.replace("zoo:", "")
        lines.append(f"| {name} · share of MACs | " + " | ".join(f"{100 * r.kind(k).macs_share:.1f}%" for k in KINDS)
                     + " | | | |")
        lines.append(f"| {name} · share of bytes | " + " | ".join(f"{100 * r.kind(k).bytes_share:.1f}%"
                                                                  for k in KINDS) + " | | | |")
    return "\n".join(lines)


# ------------------------------------------------------------------ 2./3. P1, P2


class Stack(nn.Module):
    """``convs`` 1x1 convs (no bias, no activation), channels cycling through ``widths``."""

    def __init__(self, widths: list[int], groups: int = 1):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(a, b, 1, bias=False, groups=groups)
                                     for a, b in zip(widths[:-1], widths[1:])])

    def forward(self, x):
        return self.convs(x)


def p1_nets(c: int) -> dict:
    """c1:c2 -> (net, c1, c2): 10 blocks of (c1->c2, c2->c1) with c1*c2 ~ c^2."""
    out = {}
    for r in RATIOS:
        c1 = max(1, round(c / math.sqrt(r)))
        c2 = max(1, round(c * math.sqrt(r)))
        out[f"1:{r}"] = (Stack([c1, c2] * 10 + [c1]).eval(), c1, c2)
    return out


def p2_nets(c0: int) -> dict:
    """g -> (net, c): 10 grouped 1x1 convs c->c with c^2/g ~ c0^2 (c a multiple of g)."""
    out = {}
    for g in GROUPS:
        c = max(g, round(c0 * math.sqrt(g) / g) * g)
        out[f"g={g}"] = (Stack([c] * 11, groups=g).eval(), c, g)
    return out


def _mac_elements(net: nn.Module, cin: int) -> tuple[int, int]:
    """(MACs, memory access cost in elements) of one forward, from the cost analyzer."""
    rep = analyze(net, (cin, HW, HW))
    return rep.totals.macs, rep.totals.bytes // 4


def run_experiment(kind: str, level: int, threads: int, repeats: int, warmup: int, clock: str = "auto") -> list[dict]:
    """Time the nets of one experiment round-robin. ``clock``: ``process`` (this process's CPU time:
    insensitive to other jobs on a shared machine, right for 1 thread), ``wall``, or ``auto``
    (process for 1 thread, wall for more: several threads' CPU time is not latency)."""
    nets = p1_nets(level) if kind == "p1" else p2_nets(level)
    rows, models, inputs = [], {}, {}
    for name, spec in nets.items():
        net, cin = spec[0], spec[1]
        macs, mac_el = _mac_elements(net, cin)
        if kind == "p1":
            c1, c2 = spec[1], spec[2]
            formula = 10 * (HW * HW * (c1 + c2) + c1 * c2) * 2  # two convs per block
        else:
            c, g = spec[1], spec[2]
            formula = 10 * (HW * HW * 2 * c + c * c // g)
        assert mac_el == formula, (name, mac_el, formula)  # the analyzer computes exactly the seed's formula
        models[name] = net
        inputs[name] = torch.randn(1, cin, HW, HW)
        rows.append({"experiment": kind, "level": level, "threads": threads, "name": name,
                     "clock": "process" if (clock == "process" or (clock == "auto" and threads == 1)) else "wall",
                     "channels": list(spec[1:]), "macs": macs, "mac_elements": mac_el})
    torch.set_num_threads(threads)
    # round-robin over the nets (their inputs differ in channels: one callable per net)
    wrapped = {n: _Fixed(m, inputs[n]) for n, m in models.items()}
    use_process = clock == "process" or (clock == "auto" and threads == 1)
    times = time_models(wrapped, torch.empty(0), warmup=warmup, repeats=repeats,
                        clock=time.process_time if use_process else time.perf_counter)
    base_name = next(iter(nets))
    base_t = statistics.median(times[base_name])
    base = next(r for r in rows if r["name"] == base_name)
    for r in rows:
        t = times[r["name"]]
        per_round = [a / b for a, b in zip(t, times[base_name])]
        r.update(median_ms=statistics.median(t) * 1e3, ratio=statistics.median(per_round),
                 ratio_of_medians=statistics.median(t) / base_t, mac_ratio=r["mac_elements"] / base["mac_elements"],
                 macs_ratio=r["macs"] / base["macs"])
    return rows


class _Fixed(nn.Module):
    """A net with its own input, callable with a dummy (time_models passes one input to all)."""

    def __init__(self, net: nn.Module, x: torch.Tensor):
        super().__init__()
        self.net, self.x = net, x

    def forward(self, _ignored):
        return self.net(self.x)


def experiment_markdown(rows: list[dict], kind: str) -> str:
    label = "c1:c2" if kind == "p1" else "groups"
    out = [f"| c (level) | threads (clock) | {label} | channels | MACs | memory access (elements) | ms | time × vs "
           f"{'1:1' if kind == 'p1' else 'g=1'} | memory access × |", "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["experiment"] != kind:
            continue
        out.append(f"| {r['level']} | {r['threads']} ({r['clock']}) | {r['name']} | {', '.join(map(str, r['channels']))} | "
                   f"{r['macs'] / 1e6:.1f}M | {r['mac_elements'] / 1e6:.2f}M | {r['median_ms']:.2f} | "
                   f"**{r['ratio']:.2f}** | {r['mac_ratio']:.2f} |")
    return "\n".join(out)


def plot_experiments(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for ax, kind, names in ((axes[0], "p1", [f"1:{r}" for r in RATIOS]), (axes[1], "p2", [f"g={g}" for g in GROUPS])):
        sub = [r for r in rows if r["experiment"] == kind]
        keys = sorted({(r["level"], r["threads"]) for r in sub})
        for j, (level, th) in enumerate(keys):
            ys = [next(r["ratio"] for r in sub if (r["level"], r["threads"], r["name"]) == (level, th, n)) for n in names]
            wall = any(r["clock"] == "wall" for r in sub if (r["level"], r["threads"]) == (level, th))
            ax.plot(range(len(names)), ys, marker="o", ls=":" if wall else "-", alpha=0.45 if wall else 1.0,
                    label=f"c={level}, {th} thr" + (" (wall clock)" if wall else " (CPU time)"),
                    color=plt.cm.viridis(j / max(1, len(keys) - 1)))
        mac = [next(r["mac_ratio"] for r in sub if r["name"] == n and r["level"] == keys[0][0]) for n in names] if keys else []
        ax.plot(range(len(names)), mac, "k--", lw=1, label=f"memory access × (c={keys[0][0]})" if keys else None)
        ax.set_xticks(range(len(names)), names)
        ax.axhline(1.0, color="0.6", lw=0.8)
        ax.set_ylabel("time ÷ time of " + ("1:1" if kind == "p1" else "g=1") + " (same run)")
        ax.set_title("P1: 1×1 convs at fixed FLOPs, c1:c2" if kind == "p1" else "P2: grouped 1×1 convs at fixed FLOPs",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"ShuffleNet v2 guidelines on this CPU (torch {torch.__version__}, 56×56, batch 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None, help="comma list (default: 1 and all cores)")
    ap.add_argument("--levels", default="32,64,128", help="P1 FLOPs levels: c of the 1:1 net")
    ap.add_argument("--p2-levels", default="64,128", help="P2 FLOPs levels: c of the g=1 net")
    ap.add_argument("--repeats", type=int, default=30, help="rounds of the P1/P2 round-robin")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of profiled runs per Table 3.1 row")
    ap.add_argument("--clock", default="auto", choices=("auto", "process", "wall"),
                    help="P1/P2 clock: process CPU time (auto: for 1 thread) or wall time")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: table, p1, p2")
    ap.add_argument("--quick", action="store_true", help="short timing (a smoke run, not a measurement)")
    ap.add_argument("--plot-dir", default=None, help="write profile-kinds.png and p1-p2.png here")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save-json", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, os.cpu_count() or 1})
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    repeats, min_time = (5, 0.2) if args.quick else (args.repeats, args.min_time)
    timing = TimingConfig(warmup=3, warmup_s=0.5, min_runs=10, max_runs=200, min_time_s=min_time, max_time_s=30)
    out: dict = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "threads": threads,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        out["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    reps = []
    if "table" not in skip:
        reps = table31(threads, timing)
        out["table31"] = [r.to_json(top=5) for r in reps]
    rows: list[dict] = []
    for kind, levels in (("p1", args.levels), ("p2", args.p2_levels)):
        if kind in skip:
            continue
        for level in (int(v) for v in levels.split(",")):
            for th in threads:
                rows += run_experiment(kind, level, th, repeats, warmup=3, clock=args.clock)
    out["experiments"] = rows
    if args.plot_dir:
        d = Path(args.plot_dir)
        d.mkdir(parents=True, exist_ok=True)
        if reps:
            from analyzers.layer_profile_plot import plot_kinds

            plot_kinds(reps, d / "profile-kinds.png", extra_rows=SEED_ROWS, force=True,
                       title=f"Table 3.1 on this CPU (torch {torch.__version__}) beside the seed's GPU/ARM rows")
        if rows:
            plot_experiments(rows, d / "p1-p2.png")
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(out, indent=1, default=str))
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(f"torch {out['torch']}, {out['cpu_count']} cores, threads {threads}, {out['date']}, "
              f"load average {out.get('load_average')}")
        if reps:
            print("\nTable 3.1 (share of the sum of per-layer times)\n")
            print(table31_markdown(reps))
            print("\nwhole model vs profiler: " + "; ".join(
                f"{r.model.replace('zoo:', '')} {r.runtime} {r.threads} thr: {r.model_ms:.2f} ms, profiled "
                f"{r.profiled_ms:.2f}, layers {r.layers_sum_ms:.2f}" for r in reps))
        if any(r["experiment"] == "p1" for r in rows):
            print("\nP1: 10 blocks of 1x1 convs (c1->c2, c2->c1), 56x56, batch 1, torch eager\n")
            print(experiment_markdown(rows, "p1"))
        if any(r["experiment"] == "p2" for r in rows):
            print("\nP2: 10 grouped 1x1 convs c->c, 56x56, batch 1, torch eager\n")
            print(experiment_markdown(rows, "p2"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
