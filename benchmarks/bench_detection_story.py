"""The shared-backbone story (Bailer & Fassold, shared-backbone-yolov3) with trained heads, end to
end through the command line, on what ships here:

1. ``surgery data digit-boxes`` (the base task: 10 digit classes) and ``surgery data synth-text``
   (the new task: text), both at the network's input size, split by photograph;
2. the base: ``zoo:yolov3_tiny`` (10 classes, anchors from the digit boxes by k-means) trained end
   to end on the digit boxes (``surgery train``), its held-out mAP;
3. ``surgery retarget base.pt --at K --classes 1`` (anchors from the text boxes) and the text head
   trained with layers 0..K frozen (``--freeze 0-K``), its held-out mAP;
4. ``surgery diff base.pt text.pt``: the split it finds by itself (must be K);
5. ``surgery share --at K``: both heads verified against their models;
6. ``surgery eval --head N``: each head's mAP inside the shared model beside its own model's;
7. ``surgery profile base.pt base.pt+text.pt shared.pt``: the measured saving per extra task,
   ``(t(base+text) - t(shared)) / t(base)``, beside the FLOPs fraction of layers 0..K
   (``share --sweep K``) and the paper's Table I (YOLOv3 at 416, ``share --sweep 40,48,64,73``
   reproduces its fractions);
8. one training step of ``zoo:yolov3`` at 416 timed in-process: what full YOLOv3 costs here.

Every command's wall time, the mAPs, training images/s and the load average are printed (and
written to WORK/story.json).

    python benchmarks/bench_detection_story.py --work /tmp/story --size 128 --base-epochs 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SURGERY = str(Path(sys.executable).with_name("surgery"))
PAPER = {73: (0.655, 0.744), 64: (0.401, 0.663), 48: (0.156, 0.505), 40: (0.092, 0.424)}  # Table I


def run(args: list, log: list, cwd: Path, label: str) -> dict | None:
    """Run ``surgery ARGS --json`` in ``cwd``; record the wall time; return the JSON."""
    t0 = time.perf_counter()
    p = subprocess.run([SURGERY, *map(str, args), "--json"], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    dt = time.perf_counter() - t0
    cmd = "surgery " + " ".join(map(str, args))
    log.append({"step": label, "command": cmd, "seconds": round(dt, 1), "load": os.getloadavg()[0]})
    print(f"[{dt:7.1f} s] {cmd}", flush=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {cmd}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout) if p.stdout.strip() else None


def anchors(folder: Path, size: int, k: int = 6) -> str:
    """k-means anchors (w, h in input pixels, by area) of a YOLO folder's training boxes, as
    Darknet's ``calc_anchors`` suggests them."""
    import numpy as np
    from sklearn.cluster import KMeans

    rows = [np.loadtxt(f, ndmin=2) for f in sorted((folder / "train" / "labels").glob("*.txt")) if f.stat().st_size]
    wh = np.concatenate(rows)[:, 3:5] * size
    c = KMeans(k, n_init=4, random_state=0).fit(wh).cluster_centers_
    c = c[np.argsort(c.prod(1))]
    return ",".join(f"{max(1, round(w))},{max(1, round(h))}" for w, h in c)


def yolov3_step(size: int, data: Path, threads: int, steps: int = 2) -> float:
    """Training images/s of zoo:yolov3 (10 classes) at ``size``: ``steps`` timed steps of one
    letterboxed digit-boxes image each (Darknet's loss, AdamW), after one untimed."""
    import torch

    sys.path.insert(0, str(ROOT))
    from surgery.core import io as sio
    from surgery.core.graph import output_tensors
    from surgery.detect.heads import net_hw, yolo_heads
    from surgery.detect.labels import yolo_folders
    from surgery.detect.loss import detection_loss
    from surgery.detect.task import DetectionTask
    from surgery.detect.train import darknet_normalization
    from surgery.train.loop import TrainData

    torch.set_num_threads(threads)
    net = sio.load(f"zoo:yolov3:classes=10,width={size},height={size}")
    train, _ = yolo_folders(data, classes=10)
    task = DetectionTask(yolo_heads(net.module), net_hw(net.module, net.input_shape), max_boxes=train.max_boxes)
    td = TrainData(train, None, tuple(net.input_shape), darknet_normalization(None, 3), task=task)
    ds = task.dataset(train, td.shape, train=True)
    m = net.module.train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    times = []
    for i in range(steps + 1):
        sample = torch.utils.data.default_collate([ds[(i, 0)]])
        t0 = time.perf_counter()
        b = task.batch(sample, td, train=True, device="cpu")
        loss = sum(detection_loss(task.heads, output_tensors(m(b.images)), b.targets, task.net_hw).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return steps / sum(times[1:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="story", help="folder for the data, models and story.json")
    ap.add_argument("--size", type=int, default=128, help="network input and image side (a multiple of 32)")
    ap.add_argument("--at", type=int, default=12, help="K: the last shared layer (yolov3_tiny: 12 = the backbone)")
    ap.add_argument("--digits", default="2000,300", help="digit-boxes train,val images")
    ap.add_argument("--text", default="800,200", help="synth-text train,val images")
    ap.add_argument("--base-epochs", type=int, default=8)
    ap.add_argument("--text-epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--yolov3-size", type=int, default=416, help="0: skip timing full YOLOv3")
    args = ap.parse_args(argv)
    w = Path(args.work)
    w.mkdir(parents=True, exist_ok=True)
    log: list = []
    start, load0 = time.perf_counter(), os.getloadavg()
    s, k = args.size, args.at
    fast = ["--threads", args.threads, "--workers", 0, "--batch", args.batch, "--no-flip", "--keep", "best", "--force"]

    dtr, dva = args.digits.split(",")
    ttr, tva = args.text.split(",")
    run(["data", "digit-boxes", "digits", "--train", dtr, "--val", dva, "--size", s, "--force"], log, w, "data")
    run(["data", "synth-text", "text", "--train", ttr, "--val", tva, "--size", s, "--force"], log, w, "data")
    base_ref = f"zoo:yolov3_tiny:classes=10,width={s},height={s},anchors={anchors(w / 'digits', s)}"
    base = run(["train", base_ref, "--data", "digits", "--epochs", args.base_epochs, "--lr", args.lr, *fast,
                "-o", "base.pt"], log, w, "train base")
    run(["retarget", "base.pt", "--at", k, "--classes", 1, "--anchors", anchors(w / "text", s), "-o", "text.pt",
         "--force"], log, w, "retarget")
    text = run(["train", "text.pt", "--data", "text", "--freeze", f"0-{k}", "--epochs", args.text_epochs,
                "--lr", args.lr, *fast, "-o", "text-trained.pt"], log, w, "train text head")
    diff = run(["diff", "base.pt", "text-trained.pt"], log, w, "diff")
    shared = run(["share", "--at", k, "base.pt", "text-trained.pt", "-o", "shared.pt", "--force"], log, w, "share")
    ev0 = run(["eval", "base.pt", "shared.pt", "--head", 0, "--data", "digits"], log, w, "eval head 0")
    ev1 = run(["eval", "text-trained.pt", "shared.pt", "--head", 1, "--data", "text"], log, w, "eval head 1")
    sweep = run(["share", "--sweep", k, "base.pt", "text-trained.pt"], log, w, "sweep")
    paper = run(["share", "--sweep", ",".join(map(str, sorted(PAPER))), "zoo:yolov3", "zoo:yolov3"], log, w, "sweep")
    prof = run(["profile", "base.pt", "base.pt+text-trained.pt", "shared.pt", "--threads", args.threads,
                "--min-time", 5], log, w, "profile")
    v3 = yolov3_step(args.yolov3_size, w / "digits", args.threads) if args.yolov3_size else None
    total = time.perf_counter() - start

    t = {r["model"]: r["median_ms"] for r in prof["results"]}
    t_base, t_sep, t_shared = t["base.pt"], t["base.pt+text-trained.pt"], t["shared.pt"]
    frac = sweep["sweep"][0]["saved_fraction"]
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
        "cpus": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg(), "seconds": round(total, 1),
        "settings": vars(args), "base_ref": base_ref,
        "base": {k2: base[k2] for k2 in ("after", "images_per_s", "seconds", "steps", "best")},
        "text": {k2: text[k2] for k2 in ("before", "after", "images_per_s", "seconds", "steps", "frozen_layers")},
        "diff_split": diff["split"], "share_heads": shared["heads"], "share_saved_fraction": shared["saved_fraction"],
        "eval_head0": ev0["models"], "eval_head1": ev1["models"],
        "profile_ms": {"base": t_base, "base+text": t_sep, "shared": t_shared},
        "measured_saving": (t_sep - t_shared) / t_base, "flops_fraction": frac["macs"], "params_fraction": frac["params"],
        "yolov3_sweep": paper["sweep"], "yolov3_train_images_per_s": v3, "log": log,
    }
    (w / "story.json").write_text(json.dumps(out, indent=1) + "\n")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    print(f"\nshared-backbone story: {out['date']}, {platform.processor() or platform.machine()} x{os.cpu_count()}, "
          f"load {load0[0]:.2f} -> {out['load_after'][0]:.2f}, {total / 60:.1f} min in all")
    print(f"base   {base_ref}: {base['steps']} steps, {base['images_per_s']:.1f} images/s, "
          f"{base['seconds'] / 60:.1f} min; held-out mAP@0.5 {pct(base['after']['map50'])} %, "
          f"mAP@0.5:0.95 {pct(base['after']['map'])} %")
    print(f"text   retarget --at {k} --classes 1, layers 0..{k} frozen: {text['steps']} steps, "
          f"{text['images_per_s']:.1f} images/s, {text['seconds'] / 60:.1f} min; held-out mAP@0.5 "
          f"{pct(text['before']['map50'])} % -> {pct(text['after']['map50'])} %, mAP@0.5:0.95 {pct(text['after']['map'])} %")
    print(f"diff   suggested split: first changed layer {diff['split']['first_changed']}, share at "
          f"{diff['split']['share_at']} ({'= K' if diff['split']['share_at'] == k else 'NOT K'})")
    print("share  heads: " + "; ".join(f"{h['model']} max rel {h['verify']['max_rel']:.2g}" for h in shared["heads"]))
    for name, ev in (("digits", ev0), ("text", ev1)):
        a, b = ev["models"]
        same = (a["map50"], a["map"], a["detections"]) == (b["map50"], b["map"], b["detections"])
        print(f"eval   {name}: {a['model']} mAP@0.5 {pct(a['map50'])} % ({a['detections']} detections); shared.pt head "
              f"{b['head']} {pct(b['map50'])} % ({b['detections']}) -> {'equal' if same else 'DIFFERENT'}")
    print(f"profile median ms: base {t_base:.2f}, base+text {t_sep:.2f}, shared {t_shared:.2f}; measured saving per "
          f"extra task {out['measured_saving']:.3f} of the base; FLOPs fraction of layers 0..{k} {frac['macs']:.3f} "
          f"(params {frac['params']:.3f})")
    print("paper Table I (YOLOv3 at 416): " + "; ".join(
        f"k={r['at']} weights {r['saved_fraction']['params']:.3f} (paper {PAPER[r['at']][0]}) FLOPs "
        f"{r['saved_fraction']['macs']:.3f} (paper {PAPER[r['at']][1]})" for r in paper["sweep"]))
    if v3 is not None:
        print(f"yolov3 at {args.yolov3_size}: {v3:.2f} training images/s ({1 / v3:.1f} s an image) on "
              f"{args.threads} thread(s)")
    print(f"wrote {w / 'story.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
