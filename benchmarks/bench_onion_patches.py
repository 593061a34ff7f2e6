"""OnionNet's patch-matching experiment (onionnet-bmvc2016 §4.1, Table 2) on data that ships here.

The paper trains P_M ("2ch-deep"), the non-sharing cascade P_NS and the cascade P on the
Brown et al. MVSD patches and reports FPR@95 of S2/baseline, the pass fraction p̄ of S1
calibrated at TPR 0.99, and the forward time per 100K pairs (Titan Black):

    P_M  0.0503  100.00%  12.111 s
    P_NS 0.0514   55.44%   9.677 s
    P    0.0601   54.05%   8.407 s

Here: patch pairs cut from the Middlebury motorcycle pair (surgery.datasets.stereo_patches;
the held-out pairs come from a band of rows never used in training), each model trained for
the same number of steps through surgery/train's loop (L_S2 = binary hinge, α = 0.5, AdamW
instead of the paper's 256 epochs of ASGD), S1 calibrated at TPR 0.99 on the training pairs
(surgery.onion.calibrate), FPR@95 and p̄ measured on the held-out pairs, and the time per
100K pairs measured on this CPU: the held-out pairs as one batch through the cascade runtime
(zoo.onion_runtime.run: S1, compaction, S2 on the survivors, scatter) and through P_M,
round-robin in one run (benchmarks.common.time_models). The ratio printed is P against P_M
and against P_NS, as the paper's "31% / 13% faster".

    python benchmarks/bench_onion_patches.py --work /tmp/onion-bench --steps 80
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


class Cascade(nn.Module):
    """The cascade runtime as a module (stored thresholds; S2 only on survivors)."""

    def __init__(self, cascade):
        super().__init__()
        self.cascade = cascade

    def forward(self, x):
        from zoo.onion_runtime import run

        return run(self.cascade, x).output


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="onion-bench", help="Folder for the pairs and checkpoints.")
    ap.add_argument("--train-pairs", type=int, default=4000)
    ap.add_argument("--val-pairs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=80, help="Training steps per model (batch --batch).")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--tpr", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="Also write the results here.")
    args = ap.parse_args(argv)

    from surgery.core import io as sio
    from surgery.datasets.stereo_patches import write_stereo_patches
    from surgery.onion.calibrate import calibrate
    from surgery.onion.train import JointConfig, joint_train
    from surgery.train import data as tdata
    from surgery.train.loop import TrainConfig

    device = pick_device("cpu", args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "pairs"
    if not (pairs / "pairs.json").is_file():
        write_stereo_patches(pairs, n_train=args.train_pairs, n_val=args.val_pairs, seed=0, force=True)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), "
                                f"torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
                     "command": "python benchmarks/bench_onion_patches.py " + " ".join(argv or sys.argv[1:]),
                     "models": {}}
    trained = {}
    for name, ref in ZOO.items():
        ckpt = work / f"{name}.pt"
        net = sio.load(ref)
        cfg = JointConfig(data=str(pairs), alpha=args.alpha, s2_loss="hinge",
                          train=TrainConfig(batch=args.batch, epochs=None, steps=args.steps, lr=args.lr, workers=0,
                                            seed=0))
        t0 = time.perf_counter()
        out, rep = joint_train(net, cfg)
        train_s = time.perf_counter() - t0
        row = {"train_steps": rep.steps, "train_s": round(train_s, 1), "fpr95": rep.after.get("s2_fpr95"),
               "s2_accuracy": rep.after.get("s2_accuracy"), "s1_accuracy": rep.after.get("s1_accuracy")}
        if name != "P_M":
            out, cal = calibrate(out, str(pairs), tprs=[args.tpr])
            r = cal.operating_points[0]
            row.update({"threshold": r.thresholds[1], "calibration_tpr": r.calibration.tpr,
                        "calibration_pass_fraction": r.calibration.pass_fraction, "val_s1_tpr": r.val.tpr,
                        "val_s1_fpr": r.val.fpr, "pass_fraction": r.val.pass_fraction})
        else:
            row["pass_fraction"] = 1.0
        sio.save(out, ckpt, force=True)
        trained[name] = out
        results["models"][name] = row
        print(f"{name}: trained {rep.steps} steps in {train_s:.0f} s; {row}", file=sys.stderr)

    # the held-out pairs as one batch, normalised as in training
    _, val_f = tdata.folders(pairs, None, labels=True)
    norm = tdata.Normalization.from_metadata(trained["P"].metadata, 2)
    loader = torch.utils.data.DataLoader(tdata.FolderDataset(val_f, (2, 64, 64), train=False),
                                         batch_size=len(val_f), shuffle=False)
    x = tdata.prepare(next(iter(loader)), norm, (64, 64), train=False, device=device)
    models = {"P_M": trained["P_M"].module.eval(), "P_NS": Cascade(trained["P_NS"].module.eval()),
              "P": Cascade(trained["P"].module.eval())}
    times = time_models(models, x, warmup=1, repeats=args.repeats)
    for name, ts in times.items():
        med = statistics.median(ts)
        results["models"][name]["s_per_100k"] = med / x.shape[0] * 1e5
    results["val_pairs"] = int(x.shape[0])
    m = results["models"]
    results["ratios"] = {"P_M_over_P": m["P_M"]["s_per_100k"] / m["P"]["s_per_100k"],
                         "P_NS_over_P": m["P_NS"]["s_per_100k"] / m["P"]["s_per_100k"],
                         "paper_P_M_over_P": PAPER["P_M"][2] / PAPER["P"][2],
                         "paper_P_NS_over_P": PAPER["P_NS"][2] / PAPER["P"][2]}

    print("| model | FPR@95 (ours) | FPR@95 (paper) | p̄ (ours) | p̄ (paper) | s / 100K pairs (ours, CPU) "
          "| s / 100K pairs (paper, Titan Black) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("P_M", "P_NS", "P"):
        r, p = m[name], PAPER[name]
        print(f"| {name} | {r['fpr95']:.4f} | {p[0]:.4f} | {100 * r['pass_fraction']:.2f}% | {100 * p[1]:.2f}% | "
              f"{r['s_per_100k']:.1f} | {p[2]:.3f} |")
    rt = results["ratios"]
    print(f"time P_M / P = {rt['P_M_over_P']:.2f} (paper {rt['paper_P_M_over_P']:.2f}); "
          f"P_NS / P = {rt['P_NS_over_P']:.2f} (paper {rt['paper_P_NS_over_P']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
