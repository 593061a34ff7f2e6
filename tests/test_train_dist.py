"""`torchrun --nproc_per_node=2` on CPU (gloo) equals a one-process run with the same global batch:
the weights, and the held-out figures before, after every epoch and after — each process measures
its half of the held-out images and the figures are those of all of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import SURGERY
from surgery.core import io as sio
from surgery.datasets import write_digits
from surgery.heal import HealConfig, heal
from surgery.train.loop import TrainConfig
from surgery.train.losses import LossSpec

TEACHER = "zoo:digits_cnn:width=2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("env, msg", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "a rank must be in 0..WORLD_SIZE-1"),
])
def test_torchrun_environment_read_once_and_checked(monkeypatch, env, msg):
    from surgery.core.errors import SurgeryError
    from surgery.train import dist

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    dist.environment.cache_clear()
    try:
        with pytest.raises(SurgeryError, match=msg):
            dist.environment()
    finally:
        monkeypatch.undo()
        dist.environment.cache_clear()
    assert dist.environment() == dist.Env(0, 1, 0, 1)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    digits = write_digits(tmp_path / "digits", per_class=4).output
    net = sio.load(TEACHER)
    module = net.clone_module()
    with torch.no_grad():
        module.fc.weight.mul_(-1)
    sio.save(net.evolve(module), tmp_path / "student.pt")
    # BatchNorm statistics frozen: torch's SyncBatchNorm refuses CPU tensors, so with "update"
    # each CPU process would normalise with its own half batch (see surgery/train/dist.py)
    args = ["heal", str(tmp_path / "student.pt"), "--teacher", TEACHER, "--data", digits, "--loss", "kd,at",
            "--steps", "6", "--batch", "8", "--lr", "0.01", "--bn", "freeze", "--workers", "0", "--seed", "3",
            "-o", "two.pt", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SURGERY_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), SURGERY, *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rep = json.loads(proc.stdout)  # rank 0 alone prints: one JSON document
    assert rep["world_size"] == 2 and rep["steps"] == 6

    one, rep1 = heal(sio.load(str(tmp_path / "student.pt")), sio.load(TEACHER), HealConfig(
        data=digits, losses=LossSpec.parse("kd,at"),
        train=TrainConfig(batch=8, steps=6, lr=0.01, optimizer="adamw", bn="freeze", seed=3)))
    # the held-out figures of both processes together are the one process's (all 40 images)
    assert rep["before"]["images"] == rep1.before["images"] == 40
    assert set(rep["before"]) == set(rep1.before) == {"images", "kl_to_teacher", "top1_agreement", "accuracy"}
    for key in ("before", "after", "teacher_eval"):
        got, want = rep[key], getattr(rep1, key)
        assert set(got) == set(want), key
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (key, k)
    assert len(rep["history"]) == len(rep1.history) and all("eval" in r for r in rep["history"])
    two = sio.load(str(tmp_path / "two.pt")).module.state_dict()
    moved = False
    for k, v in one.module.state_dict().items():
        assert torch.allclose(v.double(), two[k].double(), rtol=1e-4, atol=1e-5), k
        moved |= not torch.equal(v, module.state_dict()[k])
    assert moved


@pytest.mark.slow
def test_two_process_detection_map_equals_one_process(tmp_path):
    """Detection training under torchrun: each process detects on its half of the held-out images
    and the mAP (before, every epoch, after) is that of all of them — the one-process figures."""
    import json
    from pathlib import Path

    from surgery.datasets.synth_text import write_synth_text
    from surgery.detect.data import Augment
    from surgery.detect.heads import net_hw, yolo_heads
    from surgery.detect.labels import yolo_folders
    from surgery.detect.task import DetectionTask
    from surgery.detect.train import darknet_normalization
    from surgery.train.loop import TrainData, train

    cfg = Path(__file__).parent / "data" / "detect" / "text-yolo-64.cfg"
    text = write_synth_text(tmp_path / "text", n_train=8, n_val=5, size=64, seed=2, max_words=3).output
    # a student that already finds some held-out boxes (fitted on them), so the figures are not all 0
    net = sio.load(str(cfg))
    _, held = yolo_folders(text, classes=1)
    still = Augment(flip=False, scale_jitter=0.0, translate=0.0, hue=0.0, saturation=1.0, exposure=1.0)
    task = DetectionTask(yolo_heads(net.module), net_hw(net.module, net.input_shape), still, max_boxes=held.max_boxes)
    fit = train(net.module, task.loss, TrainData(held, None, tuple(net.input_shape), darknet_normalization(None, 3),
                                                 task=task), TrainConfig(batch=5, steps=200, lr=3e-3, schedule="cosine"))
    sio.save(net.evolve(fit.module), tmp_path / "student.pt")

    args = ["train", str(tmp_path / "student.pt"), "--data", text, "--steps", "4", "--batch", "4", "--lr", "0.001",
            "--workers", "0", "--seed", "3", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SURGERY_DEBUG", None)
    reps = {}
    for n in (2, 1):
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                  "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), SURGERY] if n == 2 else [SURGERY]
        proc = subprocess.run([*launch, *args, "-o", f"p{n}.pt"], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reps[n] = json.loads(proc.stdout)  # rank 0 alone prints: one JSON document
    two, one = reps[2], reps[1]
    assert (two["world_size"], one["world_size"]) == (2, 1) and two["steps"] == one["steps"] == 4
    assert one["before"]["images"] == 5 and one["before"]["boxes"] == held.num_boxes
    assert one["before"]["map50"] > 0  # the fitted student finds boxes: the comparison means something
    for got, want in [(two["before"], one["before"]), (two["after"], one["after"])] + [
            (a["eval"], b["eval"]) for a, b in zip(two["history"], one["history"], strict=True)]:
        assert set(got) == set(want) == {"map50", "map", "images", "boxes", "detections"}
        assert (got["images"], got["boxes"], got["detections"]) == (want["images"], want["boxes"], want["detections"])
        assert got["map50"] == pytest.approx(want["map50"], rel=1e-4, abs=1e-6)
        assert got["map"] == pytest.approx(want["map"], rel=1e-4, abs=1e-6)
