"""`surgery eval`: accuracy, agreement and KL on image folders, checked against an independent
decode-and-forward (conftest.folder_images: Pillow, numpy, plain torch), several models side by side."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import folder_images, teacher_and_student
from surgery.core import io as sio
from surgery.datasets import write_digits

MODEL = "zoo:digits_cnn:width=2"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return Path(write_digits(tmp_path_factory.mktemp("data") / "digits", per_class=6).output)


@pytest.fixture(scope="module")
def models(digits, tmp_path_factory):
    """A teacher trained here on the digits (plain SGD, no project code) and a student with part
    of its classifier scrambled: accuracies and agreement strictly between 0 and 1."""
    def swap(m):
        m.fc.weight[:5] = m.fc.weight[:5].flip(0)  # classes 0..4 swapped around

    return teacher_and_student(MODEL, digits / "train", tmp_path_factory.mktemp("models"), swap)


def test_figures_equal_an_independent_forward(cli, digits, models, tmp_path):
    teacher, student = models
    res = cli("eval", teacher, student, MODEL, "--teacher", teacher, "--data", digits, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    x, y = folder_images(digits / "val")
    assert rep["data"] == str(digits / "val") and rep["images"] == len(y) == 60 and rep["labelled"]
    assert rep["classes"] == [str(i) for i in range(10)]
    with torch.no_grad():
        t = sio.load(str(teacher)).module.eval()(x)
        outs = {str(teacher): t, str(student): sio.load(str(student)).module.eval()(x),
                MODEL: sio.load(MODEL).module.eval()(x)}
    assert rep["teacher"]["model"] == str(teacher)
    assert rep["teacher"]["accuracy"] == pytest.approx(float((t.argmax(1) == y).float().mean()))
    assert [r["model"] for r in rep["models"]] == [str(teacher), str(student), MODEL]
    for r in rep["models"]:
        o = outs[r["model"]]
        assert r["accuracy"] == pytest.approx(float((o.argmax(1) == y).float().mean()))
        assert r["top1_agreement"] == pytest.approx(float((o.argmax(1) == t.argmax(1)).float().mean()))
        p_t = F.softmax(t, 1)
        kl = float((p_t * (F.log_softmax(t, 1) - F.log_softmax(o, 1))).sum(1).mean())
        assert r["kl_to_teacher"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    acc = {r["model"]: r["accuracy"] for r in rep["models"]}
    assert acc[str(teacher)] > 0.5 > acc[MODEL]  # trained vs random init: the data is really read
    assert 0 < rep["models"][1]["top1_agreement"] < 1


def test_table_side_by_side_and_unlabelled_folder(cli, digits, models, tmp_path):
    teacher, student = models
    res = cli("eval", teacher, student, "--teacher", teacher, "--data", digits, cwd=tmp_path)
    assert res.code == 0, res.err
    assert "accuracy %" in res.out and "agreement %" in res.out and "KL" in res.out
    assert f"{student}" in res.out and "(teacher)" in res.out and "60 images, 10 classes" in res.out
    loose = tmp_path / "loose"
    loose.mkdir()
    for p in sorted((digits / "val").rglob("*.png"))[:7]:
        shutil.copy(p, loose / f"{p.parent.name}-{p.name}")
    rep = cli("eval", student, "--teacher", teacher, "--data", loose, "--json", cwd=tmp_path).json()
    assert rep["images"] == 7 and not rep["labelled"] and rep["classes"] == []
    assert rep["models"][0]["accuracy"] is None and rep["models"][0]["top1_agreement"] is not None
    table = cli("eval", student, "--data", loose, cwd=tmp_path)
    assert table.code == 0 and "unlabelled" in table.out and "accuracy" not in table.out.split("\n", 2)[1]


def test_eval_reports_what_train_reports(cli, digits, tmp_path):
    """The held-out accuracy `surgery train` prints after its last epoch is what eval measures on
    the checkpoint it wrote (same images, the normalisation the checkpoint records)."""
    res = cli("train", MODEL, "--data", digits, "--steps", "3", "--batch", "8", "--workers", "0", "--no-flip",
              "-o", "t.pt", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    after = res.json()["after"]
    rep = cli("eval", "t.pt", "--data", digits, "--json", cwd=tmp_path).json()
    assert rep["models"][0]["accuracy"] == pytest.approx(after["accuracy"])
    assert rep["images"] == after["images"]


@pytest.mark.parametrize("args, needle", [
    (["MODEL", "--data", "nowhere"], "does not exist"),
    (["MODEL", "--data", "DIGITS", "--teacher", "zoo:resnet18"], "must see the same images"),
    (["MODEL", "--data", "DIGITS", "--batch", "0"], "--batch 0"),
])
def test_bad_input_is_one_line(cli, digits, tmp_path, args, needle):
    args = [MODEL if a == "MODEL" else str(digits) if a == "DIGITS" else a for a in args]
    res = cli("eval", *args, cwd=tmp_path)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert res.code == 2 and len(lines) == 1 and needle in lines[0], (res.code, res.err)
    assert list(tmp_path.iterdir()) == []


def test_kl_is_zero_for_a_model_against_itself(cli, digits, models, tmp_path):
    teacher, _ = models
    rep = cli("eval", teacher, "--teacher", teacher, "--data", digits / "val", "--json", cwd=tmp_path).json()
    assert rep["data"] == str(digits / "val")
    r = rep["models"][0]
    assert r["top1_agreement"] == 1.0 and math.isclose(r["kl_to_teacher"], 0.0, abs_tol=1e-6)


def test_eval_help_imports_nothing_heavy():
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys, contextlib, io; from cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['eval', '--help'])\n"
            "    except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print(','.join(sorted(m for m in ('torch', 'numpy', 'PIL', 'matplotlib') if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported by `surgery eval --help`: {res.stdout.strip()}"
