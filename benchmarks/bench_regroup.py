"""Benchmark of ``surgery regroup`` (issue 12): search time, retained energy, and the speed of
root topologies.

Parts (``--parts``, default all, latency last):

- ``search``: the permutation search for ResNet-50 v1 root-8 (target < 60 s on the 2-core
  machine), against ``--permute none`` (contiguous blocks, no search) in the same run.
- ``energy``: retained weight energy with the searched permutation against contiguous blocks
  (the named alternative) on (a) a structured example — a conv that is block-diagonal under a
  hidden permutation plus 5% dense noise — and (b) a real checkpoint made here: ``zoo:digits_cnn``
  trained for ``--epochs`` on scikit-learn's bundled digits (8x8 upsampled to 32x32), regrouped
  at root 4 (constant), with held-out accuracy before/after for both permutations.
- ``latency``: ResNet-50 v1 root-1..64 (``zoo:resnet50:variant=v1,root=N``), measured CPU latency
  with torch eager (1 and 2 threads, batch 1 and 8, NCHW and channels-last) and ONNX Runtime
  CPU, round-robin over the roots, against MACs and memory-access bytes from
  ``analyzers.cost``; ratios against root-1 measured in the same run; ``--plot`` draws latency
  against MACs.

    python benchmarks/bench_regroup.py [--parts search,energy,latency] [--repeats 5] [--epochs 8]
                                       [--roots 1,2,4,8,16,32,64] [--plot regroup-latency.png] [--json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import pick_device, time_models  # noqa: E402
from surgery.core import io as sio  # noqa: E402
from zoo.plugin import build_zoo  # noqa: E402
from surgery.core.net import ArchSpec, Net  # noqa: E402
from surgery.partition import contiguous  # noqa: E402
from surgery.regroup import regroup  # noqa: E402


def part_search() -> dict:
    net = sio.load("zoo:resnet50:variant=v1")
    t0 = time.perf_counter()
    _, best = regroup(net, 8, cost=False, probes=0)
    t_best = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, none = regroup(net, 8, cost=False, probes=0, permute="none")
    t_none = time.perf_counter() - t0
    return {"model": "zoo:resnet50:variant=v1", "root": 8, "search_s": best.search_s, "regroup_s": t_best,
            "regroup_contiguous_s": t_none, "target_search_s": 60.0,
            "mean_retained": best.retained, "mean_contiguous": none.retained}


class _Structured(nn.Module):
    def __init__(self, c=128, groups=8, noise=0.05, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv0 = nn.Conv2d(3, c, 1)
        self.bn0 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 10, 1)
        ho = torch.tensor(contiguous([c // groups] * groups))[torch.randperm(c, generator=g)]
        hi = torch.tensor(contiguous([c // groups] * groups))[torch.randperm(c, generator=g)]
        mask = (ho[:, None] == hi[None, :]).float()[:, :, None, None]
        with torch.no_grad():
            self.conv1.weight.mul_(mask + noise * (1 - mask))

    def forward(self, x):
        return self.conv2(self.relu(self.bn1(self.conv1(self.relu(self.bn0(self.conv0(x)))))))


def _digits(seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(y))
    return (x[perm[:n]], y[perm[:n]]), (x[perm[n:]], y[perm[n:]])


@torch.no_grad()
def _accuracy(module, data) -> float:
    module.eval()
    x, y = data
    return float((module(x).argmax(1) == y).float().mean())


def part_energy(epochs: int) -> dict:
    out = {}
    src = Net(_Structured().eval(), ArchSpec("zoo", "structured"), (3, 16, 16), source="structured")
    _, best = regroup(src, 8, schedule="constant", cost=False)
    _, none = regroup(src, 8, schedule="constant", cost=False, permute="none", probes=2)
    out["structured"] = {"channels": 128, "groups": 8, "noise": 0.05, "retained": best.layers[0].retained,
                         "contiguous": best.layers[0].contiguous, "expected": 1 / 8,
                         "gain": best.layers[0].retained / best.layers[0].contiguous,
                         "moved_max_rel_best": best.moved.max_rel, "moved_max_rel_contiguous": none.moved.max_rel}
    # a real checkpoint: digits_cnn trained here
    train, test = _digits()
    net = sio.load("zoo:digits_cnn")
    model = net.module.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(train[1]), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(train[0][idx]), train[1][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    trained = net.evolve(model)
    acc = _accuracy(model, test)
    rows = {}
    for permute in ("best", "none"):
        new, rep = regroup(trained, 4, schedule="constant", cost=False, permute=permute, probes=2, batch=16)
        rows[permute] = {"accuracy": _accuracy(new.module, test), "top1_agreement": rep.moved.top1_agreement,
                         "max_rel": rep.moved.max_rel,
                         "retained": [round(l.retained, 4) for l in rep.layers],
                         "contiguous": [round(l.contiguous, 4) for l in rep.layers]}
    out["digits_cnn"] = {"epochs": epochs, "train_s": train_s, "test_samples": len(test[1]),
                         "accuracy_dense": acc, "root": 4, "schedule": "constant", **{f"permute_{k}": v
                                                                                       for k, v in rows.items()}}
    return out


_EXPORTED: dict = {}


def _ort_module(module, x, threads, key):
    from surgery.core.onnx_io import OrtModule, export_model
    from surgery.core.ort_session import ort_session

    if key not in _EXPORTED:  # one export per (root, batch); a session per thread count
        _EXPORTED[key] = export_model(module, x, exporter="torchscript").data
    return OrtModule(ort_session(_EXPORTED[key], threads=threads))


def part_latency(roots, repeats: int, plot: str | None, runtimes=("torch", "torch-channels-last", "onnxruntime"),
                 thread_counts=(1, 2), batches=(1, 8)) -> dict:
    from analyzers.cost import analyze

    nets = {r: build_zoo("resnet50", {"variant": "v1", "root": r}) for r in roots}
    costs = {}
    for r, n in nets.items():
        t = analyze(n).totals
        costs[r] = {"params": t.params, "macs": t.macs, "bytes": t.bytes}
    rows = []
    for threads in thread_counts:
        pick_device("cpu", threads)
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224)
            variants = {}
            if "torch" in runtimes:
                variants["torch"] = ({r: n.module.eval() for r, n in nets.items()}, x)
            if "torch-channels-last" in runtimes:
                cl = {r: n.clone_module().eval().to(memory_format=torch.channels_last) for r, n in nets.items()}
                variants["torch-channels-last"] = (cl, x.contiguous(memory_format=torch.channels_last))
            try:
                if "onnxruntime" in runtimes:
                    variants["onnxruntime"] = ({r: _ort_module(n.module.eval(), x, threads, (r, batch)) for r, n in nets.items()}, x)
            except Exception as e:  # report, go on with torch
                rows.append({"runtime": "onnxruntime", "threads": threads, "batch": batch, "error": str(e)[:200]})
            for runtime, (models, xin) in variants.items():
                times = time_models({str(r): m for r, m in models.items()}, xin, warmup=1, repeats=repeats)
                base = statistics.median(times[str(roots[0])])
                for r in roots:
                    med = statistics.median(times[str(r)])
                    ratio = statistics.median(a / b for a, b in zip(times[str(r)], times[str(roots[0])]))
                    rows.append({"runtime": runtime, "threads": threads, "batch": batch, "root": r,
                                 "median_ms": med * 1e3, "vs_root1": ratio, "vs_root1_of_medians": med / base,
                                 **costs[r]})
    if plot:
        _plot(rows, roots, plot)
    return {"roots": list(roots), "repeats": repeats, "rows": rows}


def _plot(rows, roots, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, batch in zip(axes, (1, 8)):
        for rt in ("torch", "torch-channels-last", "onnxruntime"):
            for threads, style in ((1, "--"), (2, "-")):
                pts = [r for r in rows if r.get("runtime") == rt and r["threads"] == threads and r["batch"] == batch
                       and "median_ms" in r]
                if pts:
                    ax.plot([p["macs"] / 1e9 for p in pts], [p["median_ms"] for p in pts], style, marker="o",
                            label=f"{rt}, {threads} thr")
                    for p in pts:
                        if threads == 2 and rt == "torch":
                            ax.annotate(str(p["root"]), (p["macs"] / 1e9, p["median_ms"]), fontsize=7)
        ax.set_xlabel("GMACs (batch 1)")
        ax.set_ylabel(f"latency at batch {batch} (ms)")
        ax.set_title(f"ResNet-50 v1 root-N, batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="search,energy,latency")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--roots", default="1,2,4,8,16,32,64")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--runtimes", default="torch,torch-channels-last,onnxruntime")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    res = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
                      f"default, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d")}
    if "search" in parts:
        res["search"] = part_search()
    if "energy" in parts:
        res["energy"] = part_energy(a.epochs)
    if "latency" in parts:
        res["latency"] = part_latency([int(r) for r in a.roots.split(",")], a.repeats, a.plot,
                                      tuple(a.runtimes.split(",")), tuple(int(t) for t in a.threads.split(",")),
                                      tuple(int(b) for b in a.batches.split(",")))
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    if "search" in res:
        s = res["search"]
        print(f"search: ResNet-50 v1 root-8 permutation search {s['search_s']:.1f} s (target < 60 s); "
              f"regroup {s['regroup_s']:.1f} s vs {s['regroup_contiguous_s']:.1f} s with contiguous blocks; "
              f"mean retained {s['mean_retained']:.4f} vs contiguous {s['mean_contiguous']:.4f}")
    if "energy" in res:
        e = res["energy"]["structured"]
        print(f"structured 128ch/8 groups + 5% noise: retained {e['retained']:.4f} vs contiguous {e['contiguous']:.4f} "
              f"({e['gain']:.2f}x); moved max rel {e['moved_max_rel_best']:.3g} vs {e['moved_max_rel_contiguous']:.3g}")
        d = res["energy"]["digits_cnn"]
        print(f"digits_cnn trained {d['epochs']} epochs ({d['train_s']:.0f} s): test accuracy {d['accuracy_dense']:.4f}")
        for k in ("best", "none"):
            r = d[f"permute_{k}"]
            print(f"  root-4 permute {k}: accuracy {r['accuracy']:.4f}, top-1 agreement {r['top1_agreement']:.3f}, "
                  f"retained {r['retained']} (contiguous {r['contiguous']})")
    if "latency" in res:
        print(f"{'runtime':22} thr batch root   median_ms  vs_root1     GMACs   MB")
        for r in res["latency"]["rows"]:
            if "error" in r:
                print(f"{r['runtime']:22} {r['threads']:3} {r['batch']:5}  error: {r['error']}")
                continue
            print(f"{r['runtime']:22} {r['threads']:3} {r['batch']:5} {r['root']:4} {r['median_ms']:11.1f} "
                  f"{r['vs_root1']:9.3f} {r['macs'] / 1e9:9.3f} {r['bytes'] / 1e6:6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
