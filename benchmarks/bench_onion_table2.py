"""OnionNet Table 2 (onionnet-bmvc2016 §4.1) on both patch sources, trained as the paper trains.

The paper (Brown et al. MVSD, Titan Black): FPR@95 of S2/baseline, p̄ of S1 at TPR 0.99, time
per 100K pairs:

    P_M  0.0503  100.00%  12.111 s
    P_NS 0.0514   55.44%   9.677 s
    P    0.0601   54.05%   8.407 s

Here: ``surgery data patch-pairs --source both`` (half Middlebury stereo pairs, half HPatches-
style warps of the bundled photographs; held-out pairs from held-out photographs / rows only);
P_M, P_NS and P (zoo onion_pm / onion_p_ns / onion_p) trained from scratch through surgery/train
as §4.1 says — binary hinge L_S2, α = 0.5, SGD momentum 0.9, weight decay 5e-4, batch 128, random
flips — for ``--steps`` steps (cosine schedule; the paper: 256 epochs of ASGD at lr 0.1); S1
calibrated at TPR 0.99 on the training pairs; FPR@95 (S2 / baseline) and S1's held-out TPR,
FPR and p̄ on the held-out pairs; then all held-out pairs timed through the compacting cascade
runtime (zoo.onion_runtime.run) and P_M, in batches of ``--time-batch``, round-robin,
``--repeats`` rounds (benchmarks.common.time_models). Printed: the paper's columns beside ours,
the ratios P / P_M and P / P_NS, the targets of issue 25 and whether each is met, S1's held-out
rates, and each model's training-loss curve (mean hinge / S1 loss per tenth of the run).

    python benchmarks/bench_onion_table2.py --work /tmp/t2 --pairs 12000 --steps 120 --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import pick_device, time_models  # noqa: E402

PAPER = {"P_M": (0.0503, 1.0, 12.111), "P_NS": (0.0514, 0.5544, 9.677), "P": (0.0601, 0.5405, 8.407)}
ZOO = {"P_M": "zoo:onion_pm", "P_NS": "zoo:onion_p_ns", "P": "zoo:onion_p"}


class Batches(nn.Module):
    """A model (or the cascade runtime, stored thresholds, S2 only on survivors) over ``x`` in
    batches of ``size``; counts the pairs that passed S1."""

    def __init__(self, module: nn.Module, size: int, cascade: bool):
        super().__init__()
        self.module, self.size, self.cascade, self.passed = module, size, cascade, 0

    def forward(self, x):
        from zoo.onion_runtime import run

        self.passed = 0
        for xb in x.split(self.size):
            if self.cascade:
                self.passed += run(self.module, xb).n_passed
            else:
                self.module(xb)
        return None


def _curve(losses: list[dict], parts: int = 10) -> list[dict]:
    """Mean of each loss term over each tenth of the run."""
    out = []
    n = len(losses)
    for i in range(parts):
        chunk = losses[i * n // parts:(i + 1) * n // parts]
        if chunk:
            out.append({k: round(statistics.fmean(c[k] for c in chunk), 4) for k in chunk[0]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="onion-table2", help="Folder for the pairs, checkpoints and results.")
    ap.add_argument("--pairs", type=int, default=12000, help="Pairs in all (surgery data patch-pairs --pairs).")
    ap.add_argument("--source", default="both")
    ap.add_argument("--steps", type=int, default=120, help="Training steps per model.")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--tpr", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--time-batch", type=int, default=256, help="Pairs per forward when timing.")
    ap.add_argument("--models", default="P_M,P_NS,P")
    ap.add_argument("--retime", action="store_true",
                    help="Time again the models a previous run trained in --work (its results.json and "
                         "checkpoints), e.g. on a quiet machine; nothing is trained.")
    ap.add_argument("--s1-widths", default="",
                    help="Table 5 in small: also train P with S1 = this fraction of every hidden layer "
                         "(zoo:onion_p:s1_width=F), e.g. 0.125,0.25,0.5; plotted t against FPR@95 (table5.png).")
    ap.add_argument("--init", default="zoo", choices=("zoo", "kaiming"),
                    help="zoo: as `surgery zoo build` makes them (He-normal conv weights, zero biases: "
                         "zoo/patchnets.py); kaiming: the same init drawn again from seed 0 (how runs before "
                         "the zoo's init changed were made).")
    args = ap.parse_args(argv)

    from surgery.core import io as sio
    from surgery.datasets.patch_pairs import write_patch_pairs
    from surgery.onion.calibrate import calibrate
    from surgery.onion.train import JointConfig, joint_train
    from surgery.train import data as tdata
    from surgery.train.loop import Hooks, TrainConfig

    device = pick_device("cpu", args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs"
    t0 = time.perf_counter()
    if not (pairs / "pairs.json").is_file():
        write_patch_pairs(pairs, args.pairs, source=args.source, seed=0, force=True)
    gen_s = time.perf_counter() - t0
    try:
        load = " ".join(f"{v:.1f}" for v in __import__("os").getloadavg())
    except OSError:
        load = "?"
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
                                f"torch {torch.__version__}", "load_average_at_start": load,
                     "date": time.strftime("%Y-%m-%d %H:%M"),
                     "command": "python benchmarks/bench_onion_table2.py " + " ".join(argv or sys.argv[1:]),
                     "pairs_seconds": round(gen_s, 1), "models": {}}
    trained = {}
    names = args.models.split(",")
    for f in filter(None, args.s1_widths.split(",")):
        ZOO[f"P@{float(f):g}"] = f"zoo:onion_p:s1_width={float(f):g}"
        names.append(f"P@{float(f):g}")
    if args.retime:
        results = {**json.loads((work / "results.json").read_text()), "load_average_at_start": load,
                   "retimed": time.strftime("%Y-%m-%d %H:%M")}
        names = list(results["models"])
        trained = {n: sio.load(str(work / f"{n}.pt")) for n in names}
    for name in ([] if args.retime else names):
        net = sio.load(ZOO[name])
        if args.init == "kaiming":
            torch.manual_seed(0)
            for mod in net.module.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                    if mod.bias is not None:
                        nn.init.zeros_(mod.bias)
        losses: list[dict] = []
        hooks = Hooks(step=lambda step, terms, ips: losses.append(dict(terms)))
        cfg = JointConfig(data=str(pairs), alpha=args.alpha, s2_loss="hinge", flip=True, crop_scale=1.0,
                          train=TrainConfig(batch=args.batch, epochs=None, steps=args.steps, lr=args.lr,
                                            optimizer=args.optimizer, weight_decay=args.weight_decay,
                                            schedule=args.schedule, workers=0, seed=0))
        t0 = time.perf_counter()
        out, rep = joint_train(net, cfg, hooks=hooks)
        train_s = time.perf_counter() - t0
        row = {"train_steps": rep.steps, "epochs": round(rep.steps * args.batch / rep.train_images, 2),
               "train_s": round(train_s, 1), "fpr95": rep.after.get("s2_fpr95"),
               "fpr95_before": rep.before.get("s2_fpr95"), "s2_accuracy": rep.after.get("s2_accuracy"),
               "s1_accuracy": rep.after.get("s1_accuracy"), "loss_curve": _curve(losses)}
        if name != "P_M":
            out, cal = calibrate(out, str(pairs), tprs=[args.tpr])
            r = cal.operating_points[0]
            row.update({"thresholds": list(r.thresholds), "calibration_tpr": r.calibration.tpr,
                        "calibration_fpr": r.calibration.fpr, "calibration_pass_fraction": r.calibration.pass_fraction,
                        "val_s1_tpr": r.val.tpr, "val_s1_fpr": r.val.fpr, "pass_fraction": r.val.pass_fraction})
        else:
            row["pass_fraction"] = 1.0
        sio.save(out, work / f"{name}.pt", force=True)
        trained[name] = out
        results["models"][name] = row
        print(f"{name}: {rep.steps} steps in {train_s:.0f} s; FPR@95 {row['fpr95']}; p̄ {row['pass_fraction']}",
              file=sys.stderr)

    # every held-out pair, normalised as in training, timed in batches round-robin
    _, val_f = tdata.folders(pairs, None, labels=True)
    norm = tdata.Normalization.from_metadata(trained[names[-1]].metadata, 2)
    loader = torch.utils.data.DataLoader(tdata.FolderDataset(val_f, (2, 64, 64), train=False), batch_size=512,
                                         shuffle=False)
    x = torch.cat([tdata.prepare(b, norm, (64, 64), train=False, device=device) for b in loader])
    models = {n: Batches(trained[n].module.eval(), args.time_batch, n != "P_M") for n in names}
    times = time_models(models, x, warmup=1, repeats=args.repeats)
    for n, ts in times.items():
        med = statistics.median(ts)
        results["models"][n].update({"s_per_100k": med / x.shape[0] * 1e5, "time_runs_s": [round(t, 3) for t in ts],
                                     "timed_pass_fraction": models[n].passed / x.shape[0] if n != "P_M" else 1.0})
    results["val_pairs"] = int(x.shape[0])
    m = results["models"]
    if {"P", "P_M", "P_NS"} <= set(m):
        # per-round ratios (the rounds are interleaved, so load swings hit both sides of a ratio alike)
        per_round = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
        results["ratios"] = {"time_P_over_P_M": per_round("P", "P_M"), "time_P_over_P_NS": per_round("P", "P_NS"),
                             "time_P_NS_over_P_M": per_round("P_NS", "P_M"),
                             "fpr95_P_over_P_M": m["P"]["fpr95"] / m["P_M"]["fpr95"] if m["P_M"]["fpr95"] else None,
                             "paper_time_P_over_P_M": PAPER["P"][2] / PAPER["P_M"][2],
                             "paper_time_P_over_P_NS": PAPER["P"][2] / PAPER["P_NS"][2],
                             "paper_fpr95_P_over_P_M": PAPER["P"][0] / PAPER["P_M"][0]}
        rt = results["ratios"]
        results["targets"] = {
            "p_bar_P <= 0.60": m["P"]["pass_fraction"] <= 0.60,
            "FPR@95 P <= 1.25 x P_M": rt["fpr95_P_over_P_M"] is not None and rt["fpr95_P_over_P_M"] <= 1.25,
            "time P / P_M <= 0.75": rt["time_P_over_P_M"] <= 0.75,
            "time P < P_NS < P_M": m["P"]["s_per_100k"] < m["P_NS"]["s_per_100k"] < m["P_M"]["s_per_100k"]}

    print("| model | FPR@95 ours | FPR@95 paper | p̄ ours | p̄ paper | s / 100K pairs, ours (CPU) "
          "| s / 100K pairs, paper (Titan Black) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        r, p = m[n], PAPER.get(n)
        paper = (lambda i, fmt: "-" if p is None else fmt.format(p[i] * (100 if i == 1 else 1)))  # noqa: E731
        print(f"| {n} | {r['fpr95']:.4f} | {paper(0, '{:.4f}')} | {100 * r['pass_fraction']:.2f} % | "
              f"{paper(1, '{:.2f} %')} | {r['s_per_100k']:.1f} | {paper(2, '{:.3f}')} |")
    if "ratios" in results:
        rt = results["ratios"]
        print(f"\ntime P / P_M = {rt['time_P_over_P_M']:.3f} (paper {rt['paper_time_P_over_P_M']:.3f}); "
              f"P / P_NS = {rt['time_P_over_P_NS']:.3f} (paper {rt['paper_time_P_over_P_NS']:.3f}); "
              f"P_NS / P_M = {rt['time_P_NS_over_P_M']:.3f}; FPR@95 P / P_M = "
              + (f"{rt['fpr95_P_over_P_M']:.3f}" if rt["fpr95_P_over_P_M"] is not None else "-")
              + f" (paper {rt['paper_fpr95_P_over_P_M']:.3f})")
        for k, v in results["targets"].items():
            print(f"target {k}: {'met' if v else 'NOT met'}")
    for n in names:
        r = m[n]
        if n != "P_M":
            print(f"{n} S1 at TPR {args.tpr}: training TPR {r['calibration_tpr']:.4f} FPR {r['calibration_fpr']:.4f} "
                  f"p {r['calibration_pass_fraction']:.4f}; held-out TPR {r['val_s1_tpr']:.4f} "
                  f"FPR {r['val_s1_fpr']:.4f} p̄ {r['pass_fraction']:.4f}; S1 accuracy {r['s1_accuracy']}")
        print(f"{n} training ({r['train_steps']} steps, {r['epochs']} epochs, {r['train_s']:.0f} s): FPR@95 "
              f"{r['fpr95_before']} before -> {r['fpr95']} after; loss per tenth of the run: "
              + " ".join("/".join(f"{v:.3f}" for v in c.values()) for c in r["loss_curve"])
              + f" ({'/'.join(r['loss_curve'][0]) if r['loss_curve'] else ''})")
    widths = [n for n in names if n.startswith("P@")]
    if widths and "P_M" in m:
        results["table5"] = _table5(m, widths + (["P"] if "P" in m else []), work / "table5.png")
        t5 = results["table5"]
        print(f"\nTable 5 in small (S1 width sweep, {t5['plot']}): fastest width "
              f"{t5['fastest']}; fastest within FPR@95 <= 1.25 x P_M: {t5['fastest_within_fpr'] or 'none'}")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nmachine: {results['machine']}; load average at start {load}; {results['date']}; "
          f"pairs written in {results['pairs_seconds']:.1f} s"
          + (f"; timed again {results['retimed']}" if args.retime else "") + f"; results: {work / 'results.json'}")
    return 0


def _table5(m: dict, names: list[str], path: Path) -> dict:
    """t (s / 100K pairs) against FPR@95, one point per S1 width (Table 1's P is 1/3), P_M
    marked; the fastest width, and the fastest whose FPR@95 is within 1.25x P_M's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = {n: (float(n[2:]) if n.startswith("P@") else 1 / 3) for n in names}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for n in sorted(names, key=width.get):
        r = m[n]
        ax.plot(r["fpr95"], r["s_per_100k"], "o", color="#4C72B0")
        ax.annotate(f"S1 {width[n]:.3g} (p̄ {100 * r['pass_fraction']:.0f} %)", (r["fpr95"], r["s_per_100k"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    pm = m["P_M"]
    ax.plot(pm["fpr95"], pm["s_per_100k"], "s", color="#C44E52", label="P_M (monolithic)")
    ax.axvline(1.25 * pm["fpr95"], ls="--", lw=0.8, color="0.5", label="1.25 x P_M's FPR@95")
    ax.set_xlabel("FPR@95 on held-out pairs (lower is better)")
    ax.set_ylabel("s per 100K held-out pairs (this CPU)")
    ax.set_title("S1 width sweep: time against accuracy (OnionNet Table 5 in small)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(lw=0.3, alpha=0.6)
    ax.margins(x=0.2, y=0.1)  # room for the labels right of the points
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    ok = [n for n in names if m[n]["fpr95"] is not None and m[n]["fpr95"] <= 1.25 * pm["fpr95"]]
    fastest = lambda ns: min(ns, key=lambda n: m[n]["s_per_100k"]) if ns else None  # noqa: E731
    return {"widths": {n: width[n] for n in names}, "fastest": fastest(names), "fastest_within_fpr": fastest(ok),
            "plot": str(path)}


if __name__ == "__main__":
    sys.exit(main())
