"""Bad input found by a new-user walk through the README: each gets one line and exit 2, and
nothing is written (DESIGN "Errors"); Darknet recurrent nets with [net] time_steps=T run through
every command that probes them (their batch unit is T)."""

from __future__ import annotations

import pytest

from conftest import ROOT
from test_hostile import listing, run_main

DATA = ROOT / "tests" / "data" / "darknet"


def _one_line(code, err, *needles):
    assert code == 2 and len(err) == 1 and err[0].startswith("surgery: error: "), err
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.parametrize("cmd", [["info"], ["fold"], ["export"], ["layers"]])
def test_input_the_network_cannot_take(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main([*cmd, "zoo:digits_cnn", "--input", "2x32x32"], capsys)
    _one_line(code, err, "does not take input 2x32x32", "--input")
    assert listing(tmp_path) == set()


@pytest.mark.parametrize("cmd", [["export", "zoo:digits_cnn", "--onnx", "h.onnx"],
                                 ["regroup", "zoo:digits_cnn", "--root", "2", "-o", "h.pt"]])
def test_an_input_too_big_for_memory(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main([*cmd, "--input", "1x100000x100000"], capsys)
    _one_line(code, err, "of memory but", "pass a smaller --input")
    assert listing(tmp_path) == set()


def test_regroup_that_changes_nothing_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["regroup", "zoo:resnet18", "--root", "3", "-o", "z.pt"], capsys)
    _one_line(code, err, "no conv of zoo:resnet18 is regrouped", "not divisible by 3 groups", "nothing written")
    assert listing(tmp_path) == set()


@pytest.mark.parametrize("args, needle", [
    (["zoo", "build", "digits_cnn", "-o", "r.onnx"], "a surgery checkpoint is a .pt file"),
    (["export", "zoo:digits_cnn", "--onnx", "d.txt"], "an ONNX file is named .onnx"),
    (["share", "--at", "3", "zoo:digits_cnn", "zoo:digits_cnn", "-o", "s.onnx"], "a surgery checkpoint is a .pt file"),
    (["profile", "zoo:digits_cnn+"], "no empty part around a +"),
    (["profile", "+zoo:digits_cnn"], "no empty part around a +"),
    (["profile", "zoo:digits_cnn", "--runtime", "cudagraph"], "no timing: every run failed or was unavailable"),
])
def test_misnamed_outputs_and_entries(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(args, capsys)
    assert code == 2 and any(needle in l for l in err), err
    assert listing(tmp_path) == set()


@pytest.fixture()
def steps3(tmp_path):
    cfg = tmp_path / "crnn3.cfg"
    cfg.write_text((DATA / "crnn.cfg").read_text().replace("time_steps=1", "time_steps=3"))
    assert "time_steps=3" in cfg.read_text()
    return cfg


def test_time_steps_net_folds_shares_and_profiles(steps3, tmp_path, capsys, monkeypatch):
    """fold and share verify on probe batches rounded up to whole sequences (3 rows); profile
    without --batch times one sequence; info reads the output on one sequence."""
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["fold", steps3, "-o", "f.pt"], capsys)
    assert code == 0, err
    code, err = run_main(["share", "--at", "1", steps3, steps3, "-o", "s.pt"], capsys)
    assert code == 0, err
    assert {"f.pt", "s.pt"} <= listing(tmp_path)
    code, err = run_main(["profile", steps3, "--min-runs", "2", "--max-runs", "2", "--warmup", "0", "--json"], capsys)
    assert code == 0, err
    code, err = run_main(["info", steps3], capsys)
    assert code == 0, err


def test_weights_for_a_model_that_has_its_own(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["zoo", "build", "digits_cnn", "-o", "a.pt"], capsys)
    assert code == 0
    code, err = run_main(["info", "a.pt", "--weights", "a.pt"], capsys)
    _one_line(code, err, "--weights applies to a .cfg", "this file has its own weights")
    code, err = run_main(["layers", "zoo:digits_cnn", "--weights", "a.pt"], capsys)
    _one_line(code, err, "a zoo model has its own weights")


def test_fold_says_why_a_batchnorm_stays(tmp_path, capsys, monkeypatch):
    """xnor.cfg: the two binary/xnor convolutions keep their BatchNorms, and the report says why."""
    from surgery.core import io as sio
    from surgery.fold import fold

    _, rep = fold(sio.load(str(DATA / "xnor.cfg")), only="bn")
    kept = [s for s in rep.skips if s.kind == "bn"]
    assert len(kept) == 2 and all("binarizes the weights" in s.reason for s in kept)
    assert len(rep.folds) == 1  # the plain convolution's BatchNorm folds
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["fold", DATA / "xnor.cfg", "-o", "x.pt"], capsys)
    assert code == 0 and listing(tmp_path) == {"x.pt"}, err


def test_diff_of_identical_models_says_so(cli):
    from surgery.core import io as sio

    res = cli("diff", "zoo:digits_cnn", "zoo:digits_cnn", "--json")
    n = len(res.json()["tensors"])  # every compared tensor: weights, biases, BatchNorm parameters
    assert n == sum(1 for k in sio.load("zoo:digits_cnn").module.state_dict() if not k.endswith("num_batches_tracked"))
    res = cli("diff", "zoo:digits_cnn", "zoo:digits_cnn")
    assert res.code == 0 and f"identical: all {n} compared tensors are equal" in res.out, res.out


@pytest.mark.parametrize("args, needle", [
    (["flops", "zoo:digits_cnn", "--batch", "1,,2"], "an empty value between commas"),
    (["profile", "zoo:digits_cnn", "--max-cv", "-1"], "max_cv -1.0 must be a fraction >= 0"),
    (["retarget", "zoo:digits_cnn", "--at", "3"], "Missing option '--classes'"),
])
def test_bad_values_are_one_line(args, needle, capsys):
    code, err = run_main(args, capsys)
    _one_line(code, err, needle)
