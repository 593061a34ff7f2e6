"""OnionNet P against its monolithic baseline P_M at the paper's p̄ = 54 % (Table 2), on this CPU.

The paper (Titan Black, Torch/cuDNN) reports 8.407 s for P and 12.111 s for P_M per 100K
patch pairs: t/t_M = 0.694. Here, in one run, round-robin (benchmarks.common.time_models):

- ``P``  — the cascade runtime (zoo.onion_runtime.run): S1 on the batch, a forced pass
  mask of round(0.54·B) random survivors, the two-pass in-place compaction, S2 on the
  survivors, scatter back;
- ``P (gather)`` — the same with index_select compaction;
- ``P_M`` — the monolithic net on the whole batch;
- the compaction's own cost: the mask-to-block step and the scatter alone, timed on the
  tensors S1 produced (their share of t).

Next to the measured ratio: the complexity ratio (conv MACs from analyzers.cost on
ForcedPass, the paper's Σ n_{l-1} s² n_l m² ), and the paper's 0.694. Weights are random (time does
not depend on them). CPU only: no GPU is available in this environment.

    python benchmarks/bench_onion.py --batch 120 --threads 2 --repeats 10
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from analyzers import cost  # noqa: E402
from benchmarks.common import pick_device, time_models  # noqa: E402
from zoo.onion_runtime import ForcedPass, forced_mask, run, two_pass_plan  # noqa: E402
from zoo import registry  # noqa: E402

PAPER = 8.407 / 12.111


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--p", type=float, default=0.54)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    dev = pick_device("cpu", a.threads)
    torch.manual_seed(0)
    p = registry.get("onion_p").build().eval()
    pm = registry.get("onion_pm").build().eval()
    x = torch.randn(a.batch, 2, 64, 64)
    mask = forced_mask(a.batch, a.p, seed=0)
    n = int(mask.sum())

    with torch.inference_mode():
        _, shared = p.stage1(x)
    order = p.shared_layers()

    def compaction_only(_x):
        # the in-place two-pass compaction + scatter on S1's tensors, as run() does
        k, holes, movers = two_pass_plan(mask)
        rows = torch.arange(k)
        rows[holes] = movers
        for src, t in zip(order, shared):
            if src == -1:
                t.index_select(0, rows)
            elif holes.numel():
                t.index_copy_(0, holes, t.index_select(0, movers))
        out = torch.full((a.batch, 1), float("nan"))
        out.index_copy_(0, rows, torch.zeros(k, 1))
        return out

    models = {
        "P": lambda t: run(p, t, mask=mask),
        "P (gather)": lambda t: run(p, t, mask=mask, compaction="gather"),
        "P_M": pm,
        "compaction": compaction_only,
    }
    times = time_models(models, x, warmup=a.warmup, repeats=a.repeats)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    c_p = cost.analyze(ForcedPass(p, n), (2, 64, 64), batch=a.batch).totals
    c_m = cost.analyze(pm, (2, 64, 64), batch=a.batch).totals
    rep = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "date": datetime.date.today().isoformat(), "device": str(dev), "batch": a.batch, "p": a.p, "n_pass": n,
        "median_ms": med,
        "t_over_t_m": med["P"] / med["P_M"], "t_gather_over_t_m": med["P (gather)"] / med["P_M"],
        "complexity_t_over_t_m": c_p.conv_macs / c_m.conv_macs,
        "paper_t_over_t_m": PAPER,
        "compaction_share_of_t": med["compaction"] / med["P"],
    }
    if a.json:
        print(json.dumps(rep, indent=2))
        return 0
    print(f"OnionNet P vs P_M, batch {a.batch}, p = {a.p:.0%} ({n} survivors), {rep['machine']}")
    for k, v in med.items():
        print(f"  {k:<12} {v:9.2f} ms (median of {a.repeats})")
    print(f"t/t_M measured {rep['t_over_t_m']:.3f} (gather compaction {rep['t_gather_over_t_m']:.3f}); "
          f"complexity {rep['complexity_t_over_t_m']:.3f}; paper (Titan Black) {PAPER:.3f}")
    print(f"compaction + scatter: {med['compaction']:.2f} ms = {rep['compaction_share_of_t']:.1%} of t")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
