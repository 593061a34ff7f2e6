"""Benchmark of ``surgery fold`` on DiracNet-34: training form vs folded vs a hand-built plain net.

Three networks, timed in the same run, interleaved (round-robin, the order rotating each
round) so drift and cache effects hit all alike:

- ``training``: ``zoo:diracnet34`` in eval mode (Dirac convs recompute ``W_hat`` every call,
  BatchNorm after every conv);
- ``folded``: ``surgery.fold.fold`` of it (an fx GraphModule: a chain of conv–ReLU pairs);
- ``plain``: an ``nn.Sequential`` of ``nn.Conv2d``/``nn.ReLU``/pooling/``nn.Linear`` with the
  same shapes, written out by hand with fresh random weights -- the speed a folded net should
  reach.

Targets (the issue): folded <= 0.7x training, folded <= 1.05x plain. ``--repeats`` rounds of
one timed forward per net under ``torch.inference_mode`` after ``--warmup`` rounds; batch 8 at
3x224x224 by default. A ratio is the median over rounds of the per-round ratio (the three
forwards of a round run back to back, so load from other processes mostly cancels); the
ratio of the median times is printed beside it. ``--check`` exits 1 when a target is missed.

    python benchmarks/bench_fold.py [--device cpu|cuda|auto] [--batch 8] [--repeats 7] [--channels-last]
                                    [--threads N] [--clock wall|process] [--json] [--check]
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
from surgery.fold import fold, module_counts  # noqa: E402

TARGET_VS_TRAINING = 0.70
TARGET_VS_PLAIN = 1.05


def plain_diracnet34(num_classes: int = 1000) -> nn.Sequential:
    """DiracNet-34's folded shapes, by hand: 7x7/2 stem, 3x3/2 max-pool, then 6/8/12/6 (ReLU, 3x3
    conv) pairs at 64/128/256/512 channels with 2x2 max-pools between groups, ReLU, global
    average pool, linear."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.MaxPool2d(3, 2, 1)]
    prev = 64
    for i, (width, convs) in enumerate(zip((64, 128, 256, 512), (6, 8, 12, 6))):
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(convs):
            layers += [nn.ReLU(), nn.Conv2d(prev, width, 3, padding=1)]
            prev = width
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes)]
    return nn.Sequential(*layers).eval()


def _conv_shapes(module: nn.Module) -> list[tuple]:
    return [(tuple(m.weight.shape), m.stride, m.padding, m.bias is not None)
            for m in module.modules() if isinstance(m, nn.Conv2d)]



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--channels-last", action="store_true",
                    help="run all three nets in channels_last (NHWC) memory format")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall: elapsed time; process: this process's CPU time (CPU only; with --threads 1 "
                         "it is insensitive to other processes sharing the cores)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)

    dev = pick_device(args.device, args.threads)

    net = sio.load("zoo:diracnet34")
    folded, rep = fold(net)  # verified at the default input (batch 2, 3x224x224, float32)
    with sio.seeded(1):
        plain = plain_diracnet34()
    if _conv_shapes(plain) != _conv_shapes(folded.module):
        raise SystemExit("bench_fold: the hand-built plain net does not match the folded shapes")
    models = {"training": net.module.eval(), "folded": folded.module.eval(), "plain": plain}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models = {k: m.to(dev, memory_format=fmt) for k, m in models.items()}
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev).contiguous(memory_format=fmt)

    if args.clock == "process" and dev.type != "cpu":
        raise SystemExit("bench_fold: --clock process measures CPU time; use it with --device cpu")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    times = time_models(models, x, warmup=args.warmup, repeats=args.repeats, clock=clock)
    med = {k: statistics.median(v) for k, v in times.items()}
    r_train = statistics.median(f / t for f, t in zip(times["folded"], times["training"]))
    r_plain = statistics.median(f / p for f, p in zip(times["folded"], times["plain"]))
    m_train, m_plain = med["folded"] / med["training"], med["folded"] / med["plain"]
    ok_train, ok_plain = r_train <= TARGET_VS_TRAINING, r_plain <= TARGET_VS_PLAIN
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    result = {
        "device": dev.type, "device_name": device_name, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "memory_format": "channels_last" if args.channels_last else "nchw",
        "clock": args.clock,
        "batch": args.batch, "input": [3, args.size, args.size],
        "repeats": args.repeats, "median_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
        "min_ms": {k: round(min(v) * 1e3, 2) for k, v in times.items()},
        "folded_vs_training": round(r_train, 3), "folded_vs_plain": round(r_plain, 3),
        "ratio_of_medians": {"folded_vs_training": round(m_train, 3), "folded_vs_plain": round(m_plain, 3)},
        "target_vs_training": TARGET_VS_TRAINING, "target_vs_plain": TARGET_VS_PLAIN,
        "met_vs_training": ok_train, "met_vs_plain": ok_plain,
        "verify_max_rel": rep.verify.max_rel, "modules_after": module_counts(folded.module),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"DiracNet-34 fold benchmark: {dev.type} ({device_name}), {result['threads']} threads, "
              f"batch {args.batch}x3x{args.size}x{args.size}, {result['memory_format']}, {args.clock} clock, median of {args.repeats}")
        for k in models:
            print(f"  {k:9s} {med[k] * 1e3:9.1f} ms  (min {min(times[k]) * 1e3:.1f})")
        print(f"  folded / training = {r_train:.3f}  (target <= {TARGET_VS_TRAINING}: {'met' if ok_train else 'MISSED'}; "
              f"ratio of medians {m_train:.3f})")
        print(f"  folded / plain    = {r_plain:.3f}  (target <= {TARGET_VS_PLAIN}: {'met' if ok_plain else 'MISSED'}; "
              f"ratio of medians {m_plain:.3f})")
        print(f"  fold verified: max rel diff {rep.verify.max_rel:.2e}")
    return 1 if args.check and not (ok_train and ok_plain) else 0


if __name__ == "__main__":
    sys.exit(main())
