"""Healing a lossy surgery on real data: the digits story, and heal's throughput with 1 and 2
processes.

1. train a dense teacher (``zoo:digits_cnn``) with labels on scikit-learn's digits
   (``surgery train``'s library path);
2. a lossy edit: ``surgery regroup --root 4`` (Deep Roots root-4, deep-roots schedule);
3. measure the drop (held-out accuracy, top-1 agreement and KL to the teacher);
4. heal the regrouped net with ``kd`` and with ``kd,at`` (same seed, steps and data order);
   the ratio printed is what kd+at recovers against kd alone (the named alternative);
5. images/s of ``surgery heal`` with 1 process against ``torchrun --nproc_per_node=2``
   (gloo), both measured in this run with the same global batch.

    .venv/bin/python benchmarks/bench_heal.py --teacher-epochs 10 --heal-epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from surgery.core import io as sio  # noqa: E402
from surgery.datasets import write_digits  # noqa: E402
from surgery.heal import HealConfig, heal  # noqa: E402
from surgery.train import data as tdata  # noqa: E402
from surgery.train.loop import TrainConfig, TrainData, evaluate  # noqa: E402
from surgery.train.losses import LossSpec  # noqa: E402

SURGERY = str(Path(sys.executable).parent / "surgery")


def _metrics(e: dict) -> str:
    parts = [f"accuracy {e['accuracy']:.3f}"]
    if "top1_agreement" in e:
        parts += [f"agreement {e['top1_agreement']:.3f}", f"KL {e['kl_to_teacher']:.4f}"]
    return ", ".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _throughput(work: Path, data: str, student: Path, teacher: Path, steps: int, batch: int, procs: int) -> dict:
    args = ["heal", str(student), "--teacher", str(teacher), "--data", data, "--loss", "kd,at", "--steps", str(steps),
            "--batch", str(batch), "--workers", "0", "--no-flip", "--crop-scale", "0.5", "-o", f"tp{procs}.pt",
            "--force", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [SURGERY, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc_per_node={procs}",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), SURGERY, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--heal-epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--throughput-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the checkpoints in this folder.")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from surgery.regroup import regroup

    work = a.keep or Path(tempfile.mkdtemp(prefix="bench_heal."))
    work.mkdir(parents=True, exist_ok=True)
    data = str(work / "digits")
    if not Path(data).exists():
        write_digits(data)
    aug = dict(crop_scale=0.5, flip=False)  # digits: no flips (a mirrored 2 is no 2), mild crops

    t0 = time.perf_counter()
    dense = sio.load("zoo:digits_cnn")
    teacher, trep = heal(dense, None, HealConfig(data=data, losses=LossSpec.parse("ce"), **aug,
                                                 train=TrainConfig(batch=a.batch, epochs=a.teacher_epochs, lr=3e-3)))
    sio.save(teacher, work / "teacher.pt", force=True)
    print(f"teacher: zoo:digits_cnn trained {trep.steps} steps ({a.teacher_epochs} epochs, {trep.seconds:.0f} s, "
          f"{trep.images_per_s:.0f} images/s): held-out {_metrics(trep.after)}")

    student, rrep = regroup(teacher, 4)
    sio.save(student, work / "root4.pt", force=True)
    train_f, val_f = tdata.folders(data, None, labels=True)
    tdata_ = TrainData(train_f, val_f, (1, 32, 32), tdata.Normalization.from_metadata(teacher.metadata, 1))
    drop = evaluate(student.module, teacher.module, tdata_)
    cost = f"params {rrep.before.params:,} -> {rrep.after.params:,}, " if rrep.before and rrep.after else ""
    print(f"regroup --root 4 ({', '.join(f'{l.name} g{l.groups}' for l in rrep.layers)}): {cost}"
          f"held-out {_metrics(drop)}")

    results = {}
    for kinds in ("kd", "kd,at"):
        healed, hrep = heal(student, teacher, HealConfig(data=data, losses=LossSpec.parse(kinds), **aug,
                                                         train=TrainConfig(batch=a.batch, epochs=a.heal_epochs)))
        results[kinds] = hrep
        print(f"heal {kinds:6s}: {hrep.steps} steps ({hrep.seconds:.0f} s, {hrep.images_per_s:.0f} images/s) -> "
              f"held-out {_metrics(hrep.after)}")

    kd, kdat = results["kd"].after, results["kd,at"].after
    gap_kd = trep.after["accuracy"] - drop["accuracy"]
    print(f"accuracy recovered of the {gap_kd:.3f} drop: kd {(kd['accuracy'] - drop['accuracy']) / gap_kd:.3f}, "
          f"kd+at {(kdat['accuracy'] - drop['accuracy']) / gap_kd:.3f}; "
          f"ratio kd+at / kd accuracy = {kdat['accuracy'] / kd['accuracy']:.3f}")

    one = _throughput(work, data, work / "root4.pt", work / "teacher.pt", a.throughput_steps, a.batch, 1)
    two = _throughput(work, data, work / "root4.pt", work / "teacher.pt", a.throughput_steps, a.batch, 2)
    print(f"heal kd,at throughput, {a.throughput_steps} steps of global batch {a.batch}: 1 process "
          f"{one['images_per_s']:.0f} images/s, torchrun 2 processes {two['images_per_s']:.0f} images/s "
          f"(ratio {two['images_per_s'] / one['images_per_s']:.2f})")
    print(f"total {time.perf_counter() - t0:.0f} s; files in {work}")


if __name__ == "__main__":
    main()
