"""Shared fixtures: where the real Darknet cfgs are, and how to call the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SURGERY = str(Path(sys.executable).parent / "surgery")

# Two cores: keep torch from oversubscribing when pytest-xdist runs two workers.
torch.set_num_threads(1)


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: dynamo refuses to export it, the TorchScript
    tracer bakes in one branch, and it cannot be counted on the meta device — the model the
    export and profile tests use to check that such failures are reported, not raised."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


def folder_images(folder: Path, size: int = 32):
    """Every PNG under ``folder`` decoded independently of the project (Pillow, numpy): greyscale,
    resized to ``size`` x ``size``, normalised as the default for one channel (mean 0.5, std 0.5);
    (N, 1, size, size) and the labels (class = first sub-folder), sorted by path."""
    import numpy as np
    from PIL import Image

    files = sorted(Path(folder).rglob("*.png"))
    xs = []
    for p in files:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        xs.append((a - 0.5) / 0.5)
    labels = torch.tensor([int(p.relative_to(folder).parts[0]) for p in files])
    return torch.from_numpy(np.stack(xs))[:, None], labels


def fit_on_images(module: nn.Module, folder: Path, steps: int = 100, lr: float = 1e-2) -> nn.Module:
    """``module`` trained here on every image of ``folder`` at once (plain Adam and cross entropy,
    no project code): a teacher of known provenance. Returned in eval mode."""
    x, y = folder_images(folder)
    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        opt.step()
    return module.eval()


def teacher_and_student(ref: str, folder: Path, out: Path, lesion) -> tuple[Path, Path]:
    """``ref`` trained here on ``folder`` (:func:`fit_on_images`), saved as ``out/teacher.pt``, and
    a copy with ``lesion(module)`` applied (in place, no gradients) as ``out/student.pt``."""
    from surgery.core import io as sio

    net = sio.load(ref)
    teacher = fit_on_images(net.clone_module(), folder)
    sio.save(net.evolve(teacher), out / "teacher.pt")
    student = net.clone_module()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        lesion(student)
    sio.save(net.evolve(student.eval()), out / "student.pt")
    return out / "teacher.pt", out / "student.pt"


def shared_dir() -> Path | None:
    """The folder holding ``data/darknet/*.cfg``: the repository's own ``tests/`` first (a fresh
    clone stands alone), then ``$SURGERY_SHARED`` or a ``shared/`` beside the repository."""
    env = os.environ.get("SURGERY_SHARED")
    cands = [ROOT / "tests"] + ([Path(env)] if env else [])
    cands += [ROOT.parent / "shared", ROOT / "shared"]
    for c in cands:
        if (c / "data" / "darknet").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def darknet_dir() -> Path:
    d = shared_dir()
    if d is None:
        pytest.skip("shared/data/darknet not found beside the repo (set SURGERY_SHARED)")
    return d / "data" / "darknet"


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out)


def run_cli(*args: str, cwd=None, env=None, timeout=600) -> CliResult:
    """Run the installed ``surgery`` console script as a user would."""
    e = dict(os.environ)
    e.pop("SURGERY_DEBUG", None)
    # pytest-xdist's workers inherit COLUMNS=80 (execnet): a width a test asks for is passed in env
    e["COLUMNS"] = "200"
    e["OMP_NUM_THREADS"] = "1"
    if env:
        e.update(env)
    proc = subprocess.run([SURGERY, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout)
    return CliResult(proc)


@pytest.fixture
def cli():
    return run_cli
