"""`surgery heal` / `surgery train` from the command line: healing brings a lesioned student
back towards its teacher on held-out images (measured here, independently), a heal with freeze
(proved with `surgery diff`), the recipe step, and bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import folder_images, teacher_and_student
from surgery.core import io as sio
from surgery.datasets import write_digits
from surgery.train.loop import TrainConfig
from surgery.train.losses import LossSpec

TEACHER = "zoo:digits_cnn:width=2"
FAST = ["--batch", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits", per_class=4).output


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The teacher with its classifier negated: a lossy edit to heal."""
    net = sio.load(TEACHER)
    module = net.clone_module()
    with torch.no_grad():
        module.fc.weight.mul_(-1)
    path = tmp_path_factory.mktemp("models") / "student.pt"
    sio.save(net.evolve(module), path)
    return path


@pytest.mark.slow
def test_heal_with_freeze_diff_shows_zero_there(cli, digits, student, tmp_path):
    res = cli("heal", student, "--teacher", TEACHER, "--data", digits, "--loss", "kd,at", "--steps", "4",
              "--freeze", "0-5", *FAST, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    out = tmp_path / "student-healed.pt"
    assert rep["output"] == "student-healed.pt" and out.exists()
    assert rep["steps"] == 4 and rep["train_images"] == 40 and rep["val_images"] == 40
    assert rep["frozen_layers"] == [0, 1, 2, 3, 4, 5]
    assert [p["student"]["shape"][1:] for p in rep["pairs"]] == [[32, 32], [16, 16], [8, 8]]
    assert set(rep["before"]) == {"images", "kl_to_teacher", "top1_agreement", "accuracy"}
    assert (tmp_path / "student-healed.run" / "state.pt").exists()
    # the output is a normal checkpoint whose recipe records the healing
    healed = sio.load(str(out))
    step = healed.recipe[-1]
    assert step.op == "heal" and step.args["steps"] == 4 and set(step.args["losses"]) == {"kd", "at"}
    assert len(step.args["data_sha256"]) == 64 and step.args["teacher"] == TEACHER
    # layers 0..5 (conv0, bn0, relu0, conv1, bn1, relu1) unchanged, as surgery diff shows
    d = cli("diff", student, out, "--json").json()
    rows = {r["param"]: r for r in d["tensors"]}
    for name in ("features.conv0.weight", "features.bn0.weight", "features.bn0.bias", "features.bn0.running_mean",
                 "features.conv1.weight", "features.bn1.running_var"):
        assert rows[name]["max"] == 0.0, name


def _held_out(model_path, teacher_path, digits):
    """(KL(teacher || model) averaged over the held-out images, top-1 agreement), by a plain
    forward of independently decoded images."""
    x, _ = folder_images(digits / "val")
    with torch.no_grad():
        s = sio.load(str(model_path)).module.eval()(x)
        t = sio.load(str(teacher_path)).module.eval()(x)
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    return float(kl), float((s.argmax(1) == t.argmax(1)).float().mean())


@pytest.mark.slow
def test_heal_brings_a_lesioned_student_back_on_held_out_images(cli, digits, tmp_path):
    """A teacher trained here on the digits; the student is it with its classifier negated (it
    disagrees with the teacher on every image). Healing with kd on the training images lowers
    the KL to the teacher and raises the top-1 agreement on the held-out images, and the report's
    before/after figures are those of the input and the output."""
    from pathlib import Path

    digits = Path(digits)
    teacher_and_student(TEACHER, digits / "train", tmp_path, lambda m: m.fc.weight.mul_(-1))
    res = cli("heal", "student.pt", "--teacher", "teacher.pt", "--data", digits, "--loss", "kd", "--steps", "100",
              "--lr", "2e-2", "--no-flip", "--crop-scale", "1", *FAST, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    kl0, agree0 = _held_out(tmp_path / "student.pt", tmp_path / "teacher.pt", digits)
    kl1, agree1 = _held_out(tmp_path / "student-healed.pt", tmp_path / "teacher.pt", digits)
    assert agree0 == 0.0 and kl0 > 1.0
    print(f"held-out KL {kl0:.4f} -> {kl1:.4f}, agreement {agree0:.3f} -> {agree1:.3f}")
    assert kl1 < 0.25 * kl0 and agree1 >= agree0 + 0.3
    assert rep["before"]["kl_to_teacher"] == pytest.approx(kl0, rel=1e-4)
    assert rep["after"]["kl_to_teacher"] == pytest.approx(kl1, rel=1e-4)
    assert rep["before"]["top1_agreement"] == pytest.approx(agree0)
    assert rep["after"]["top1_agreement"] == pytest.approx(agree1)


@pytest.mark.slow
def test_train_with_labels_then_resume_finished_run(cli, digits, tmp_path):
    res = cli("train", TEACHER, "--data", digits, "--epochs", "2", "--no-flip", *FAST, "-o", "t.pt", "--json",
              cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["op"] == "train" and rep["steps"] == 10 and rep["teacher"] is None
    assert set(rep["after"]) == {"images", "accuracy"}
    assert sio.load(str(tmp_path / "t.pt")).recipe[-1].op == "train"
    # resuming a finished run trains nothing more and writes the same weights
    (tmp_path / "t.pt").rename(tmp_path / "first.pt")
    again = cli("train", "--resume", "t.run", "--json", cwd=tmp_path)
    assert again.code == 0, again.err
    assert again.json()["resumed_at"] == 10
    a = torch.load(tmp_path / "first.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "t.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unreadable_images_are_skipped_and_counted(cli, digits, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    (data / "train" / "3" / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "train" / "3" / "empty.jpg").write_bytes(b"")
    res = cli("heal", TEACHER, "--teacher", TEACHER, "--data", data, "--steps", "1", *FAST, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["skipped_images"] == 2 and rep["train_images"] == 40
    assert sorted(rep["skipped"]) == ["3/broken.png", "3/empty.jpg"]


@pytest.mark.parametrize("args, msg", [
    (["--data", "missing"], "does not exist"),
    (["--data", "DIGITS", "--teacher", "zoo:digits_cnn:width=2,num_classes=5"], "outputs"),
    (["--data", "DIGITS", "--epochs", "0"], "at least 1 epoch"),
])
def test_bad_input_one_line_exit_2_nothing_written(cli, digits, student, tmp_path, args, msg):
    args = [digits if a == "DIGITS" else a for a in args]
    base = ["heal", student] + ([] if "--teacher" in args else ["--teacher", TEACHER])
    res = cli(*base, *map(str, args), *FAST, cwd=tmp_path)
    assert res.code == 2, res.err
    assert res.err.startswith("surgery: error:") and len(res.err.strip().splitlines()) == 1, res.err
    assert msg in res.err
    assert list(tmp_path.iterdir()) == []  # no output, no run directory


def _library_cases(tmp_path, digits):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"nope")
    return [
        (dict(data=str(empty)), {}, "holds no .png/.jpg/.jpeg images"),
        (dict(data=str(broken)), {}, "none of its 1 images can be read"),
        (dict(data=digits, losses=LossSpec.parse("at"), match="features.conv9:1"), {}, "features.conv9"),
        (dict(data=digits, losses=LossSpec.parse("at"), match="fc:1"), {}, "does not output a C x H x W feature map"),
        (dict(data=digits, freeze="nosuchlayer"), {}, "nosuchlayer"),
        (dict(data=digits, losses=LossSpec.parse("kd")), {"teacher": None}, "--teacher"),
        (dict(data=digits, losses=LossSpec.parse("ce")), {"student": "zoo:digits_cnn:width=2,num_classes=5",
                                                          "teacher": None},
         "10 classes"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_input_library_leaves_no_run_directory(digits, tmp_path, case):
    from surgery.core.errors import SurgeryError
    from surgery.heal import HealConfig, heal

    kw, models, msg = _library_cases(tmp_path, digits)[case]
    student = sio.load(models.get("student", TEACHER))
    teacher = sio.load(TEACHER) if models.get("teacher", TEACHER) else None
    cfg = HealConfig(**{"train": TrainConfig(batch=8, steps=1), **kw})
    with pytest.raises(SurgeryError, match=re.escape(msg)):
        heal(student, teacher, cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_existing_run_directory_refused_without_force(cli, digits, student, tmp_path):
    (tmp_path / "student-healed.run").mkdir()
    (tmp_path / "student-healed.run" / "config.json").write_text("{}")
    res = cli("heal", student, "--teacher", TEACHER, "--data", digits, "--steps", "1", *FAST, cwd=tmp_path)
    assert res.code == 2 and "--resume" in res.err
    assert not (tmp_path / "student-healed.pt").exists()


def test_darknet_detector_distils_on_raw_head_outputs(digits, tmp_path):
    from conftest import ROOT
    from surgery.heal import HealConfig, heal

    text = (ROOT / "tests" / "data" / "darknet" / "yolov3-tiny.cfg").read_text()
    text = "\n".join("width=64" if l.startswith("width=") else "height=64" if l.startswith("height=") else l
                     for l in text.splitlines())
    (tmp_path / "tiny.cfg").write_text(text)
    teacher = sio.load(str(tmp_path / "tiny.cfg"))
    _, rep = heal(teacher, teacher, HealConfig(data=digits, losses=LossSpec.parse("kd"),
                                               train=TrainConfig(batch=8, steps=1, bn="freeze")))
    # two yolo heads, not class logits: kd is their mean squared error, evaluated as such
    assert set(rep.before) == {"images", "mse_to_teacher"} and rep.before["mse_to_teacher"] == 0.0
    assert rep.history[-1]["loss"] == {"kd": 0.0}


def test_interrupted_run_says_how_to_resume_and_resumes(digits, tmp_path):
    """Ctrl-C (SIGINT) after a saved state: exit 130, one line naming the resume command, which
    then finishes the run (--epochs on resume sets its length)."""
    import os
    import signal
    import subprocess
    import time

    from conftest import SURGERY, run_cli

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("SURGERY_DEBUG", None)
    proc = subprocess.Popen([SURGERY, "train", TEACHER, "--data", str(digits), "--epochs", "400", "--save-every", "2",
                             *FAST, "-o", "m.pt"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    state = tmp_path / "m.run" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert state.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [l for l in err.strip().splitlines() if l.startswith("surgery:")]
    assert lines == ["surgery: interrupted (SIGINT); partial outputs removed; resume with "
                     "`surgery train --resume m.run`"], err
    assert not (tmp_path / "m.pt").exists()
    done = run_cli("train", "--resume", "m.run", "--epochs", "40", "--json", cwd=tmp_path)
    assert done.code == 0, done.err
    rep = done.json()
    assert 2 <= rep["resumed_at"] < 200 and rep["steps"] == 200 and (tmp_path / "m.pt").is_file()
