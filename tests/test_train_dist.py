"""`torchrun --nproc_per_node=2` on CPU (gloo) equals a one-process run with the same global batch."""

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

    one, _ = heal(sio.load(str(tmp_path / "student.pt")), sio.load(TEACHER), HealConfig(
        data=digits, losses=LossSpec.parse("kd,at"),
        train=TrainConfig(batch=8, steps=6, lr=0.01, optimizer="adamw", bn="freeze", seed=3)))
    two = sio.load(str(tmp_path / "two.pt")).module.state_dict()
    moved = False
    for k, v in one.module.state_dict().items():
        assert torch.allclose(v.double(), two[k].double(), rtol=1e-4, atol=1e-5), k
        moved |= not torch.equal(v, module.state_dict()[k])
    assert moved
