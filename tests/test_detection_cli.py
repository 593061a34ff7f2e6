"""Detection from the command line, as the README runs it: synth-text -> retarget YOLOv3-tiny to
1 class at layer 12 -> train with layers 0..12 frozen -> diff shows zero there -> eval prints mAP;
and bad input (one line naming the file and line, exit 2, nothing written)."""

from __future__ import annotations

import pytest

from surgery.core import io as sio

TINY = "zoo:yolov3_tiny:width=96,height=96"
FAST = ["--batch", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    from surgery.datasets.synth_text import write_synth_text

    return write_synth_text(tmp_path_factory.mktemp("data") / "text", n_train=8, n_val=4, size=96, seed=1).output


@pytest.fixture(scope="module")
def task_model(tmp_path_factory, text):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("models") / "yt.pt"
    res = run_cli("retarget", TINY, "--at", "12", "--classes", "1", "-o", out)
    assert res.code == 0, res.err
    return out


@pytest.mark.slow
def test_train_frozen_backbone_diff_zero_eval_map(cli, text, task_model, tmp_path):
    res = cli("train", task_model, "--data", text, "--steps", "4", "--freeze", "0-12", *FAST, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    out = tmp_path / "yt-trained.pt"
    assert rep["output"] == "yt-trained.pt" and out.exists()
    assert rep["steps"] == 4 and (rep["train_images"], rep["val_images"]) == (8, 4)
    assert rep["frozen_layers"] == list(range(13))
    assert set(rep["losses"]) == {"yolo"} and rep["losses"]["yolo"]["heads"] == 2
    assert set(rep["history"][-1]["loss"]) == {"box", "obj", "cls"}
    assert {"map50", "map", "images", "boxes", "detections"} <= set(rep["after"]) and rep["after"]["images"] == 4
    step = sio.load(str(out)).recipe[-1]
    assert step.op == "train" and step.args["frozen_layers"] == list(range(13))
    # weights AND BatchNorm statistics of layers 0..12 unchanged; the head moved
    d = cli("diff", task_model, out, "--json", "--tensors").json()
    frozen = [r for r in d["tensors"] if r["index"] <= 12]
    assert {r["kind"] for r in frozen} >= {"weight", "bias", "bn_weight", "running_mean", "running_var"}
    assert all(r["max"] == 0.0 for r in frozen), [r["param"] for r in frozen if r["max"] != 0]
    assert all(r["max"] > 0 for r in d["tensors"] if r["index"] in (13, 14, 15) and r["kind"] == "weight")
    assert d["split"]["share_at"] == 12
    # eval: the table and the JSON, the figures training printed for the same held-out images
    res = cli("eval", task_model, out, "--data", text)
    assert res.code == 0, res.err
    assert "mAP@0.5 %" in res.out and "yt-trained.pt" in res.out
    j = cli("eval", out, "--data", text, "--json").json()
    assert j["images"] == 4 and j["boxes"] == rep["after"]["boxes"]
    assert j["models"][0]["map50"] == pytest.approx(rep["after"]["map50"])


def _bad_copy(text, tmp_path, line):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(text, bad)
    (bad / "train" / "labels" / "3.txt").write_text(line)
    return bad


@pytest.mark.parametrize("line, msg", [
    ("0 0.5 0.5 0.2\n", "labels/3.txt:1: '0 0.5 0.5 0.2' has 4 fields"),
    ("1 0.5 0.5 0.2 0.2\n", "labels/3.txt:1: class 1 is out of range: the model has 1 class"),
    ("0 0.5 0.5 0.2 0.2\n0 1.2 0.5 0.2 0.2\n", "labels/3.txt:2: box 1.2 0.5 0.2 0.2 reaches outside the image"),
])
def test_bad_labels_one_line_exit_2_nothing_written(cli, text, task_model, tmp_path, line, msg):
    bad = _bad_copy(text, tmp_path, line)
    res = cli("train", task_model, "--data", bad, "--steps", "1", *FAST, "-o", tmp_path / "o.pt")
    assert res.code == 2 and msg in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.run").exists()


def test_detector_and_folder_kinds_must_match(cli, text, task_model, tmp_path):
    from surgery.datasets import write_digits

    digits = write_digits(tmp_path / "digits", per_class=2).output
    res = cli("train", task_model, "--data", digits, "--steps", "1", *FAST, "-o", tmp_path / "o.pt")
    assert res.code == 2 and "is a detector ([yolo] heads at layers 16, 23)" in res.err, res.err
    res = cli("train", "zoo:digits_cnn:width=2", "--data", text, "--steps", "1", *FAST, "-o", tmp_path / "p.pt")
    assert res.code == 2 and "has no Darknet [yolo] heads" in res.err, res.err
    res = cli("eval", task_model, "--data", text, "--teacher", task_model)
    assert res.code == 2 and "--teacher compares classifiers" in res.err
