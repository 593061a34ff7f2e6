"""`--data DIR` on every command that judges a model on probe inputs (regroup, fold, share,
export, onion split/run, profile of a cascade): real images instead of random tensors, and the
report says which it used. The figures are checked against `surgery eval` and `onion
calibrate` run on the same images (other code paths)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import SURGERY
from surgery.datasets import write_digits
from surgery.datasets.stereo_patches import write_stereo_patches

MODEL = "zoo:digits_cnn:width=2"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """40 held-out images: fewer than a probe's 64, so a probe holds every one of them."""
    return Path(write_digits(tmp_path_factory.mktemp("data") / "digits", per_class=4).output)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return Path(write_stereo_patches(tmp_path_factory.mktemp("data") / "pairs", n_train=32, n_val=16).output)


def _images(probe: dict, n: int, folder: Path) -> None:
    assert probe == {"kind": "images", "source": f"{n} images from {folder}", "images": n, "data": str(folder)}


def test_regroup_moved_on_images_is_what_eval_measures(cli, digits, tmp_path):
    res = cli("regroup", MODEL, "--root", "4", "--data", digits, "-o", "r.pt", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    _images(rep["probe"], 40, digits / "val")
    ev = cli("eval", "r.pt", "--teacher", MODEL, "--data", digits, "--json", cwd=tmp_path).json()
    assert rep["moved"]["top1_agreement"] == pytest.approx(ev["models"][0]["top1_agreement"])
    rand = cli("regroup", MODEL, "--root", "4", "-o", "s.pt", "--json", cwd=tmp_path).json()
    assert rand["probe"] == {"kind": "random", "source": "random normal", "images": 8, "data": None}
    table = cli("regroup", MODEL, "--root", "4", "-o", "t.pt", cwd=tmp_path)
    assert "moved on random normal" in table.out and "--data DIR" in table.out
    table = cli("regroup", MODEL, "--root", "4", "-o", "u.pt", "--data", digits, cwd=tmp_path)
    assert f"moved on 40 images from {digits / 'val'}" in table.out


def test_fold_share_export_verify_on_images(cli, digits, tmp_path):
    fold = cli("fold", MODEL, "--data", digits, "-o", "f.pt", "--json", cwd=tmp_path)
    assert fold.code == 0, fold.err
    f = fold.json()
    _images(f["probe"], 40, digits / "val")
    assert f["verify"]["probes"] * f["verify"]["batch"] >= 40 and f["verify"]["max_rel"] < 1e-5
    assert cli("retarget", MODEL, "--at", "6", "--classes", "3", "--seed", "1", "-o", "t3.pt", cwd=tmp_path).code == 0
    share = cli("share", "--at", "6", MODEL, "t3.pt", "--data", digits / "val", "-o", "s.pt", "--json", cwd=tmp_path)
    assert share.code == 0, share.err
    _images(share.json()["probe"], 40, digits / "val")
    assert all(h["verify"]["max_rel"] < 1e-5 for h in share.json()["heads"])
    exp = cli("export", MODEL, "--onnx", "m.onnx", "--batch", "16", "--data", digits, "--json", cwd=tmp_path)
    assert exp.code == 0, exp.err
    onnx = exp.json()["onnx"]
    _images(onnx["probe"], 32, digits / "val")  # a fixed batch of 16: the 40 images make two whole batches
    assert onnx["verify"]["probes"] == 2
    text = cli("export", MODEL, "--onnx", "n.onnx", "--data", digits, cwd=tmp_path)
    assert f"on 40 images from {digits / 'val'}" in text.out


def test_data_errors_are_one_line_before_any_work(cli, digits, tmp_path):
    for args in (["regroup", MODEL, "--root", "4", "--data", "nowhere"],
                 ["fold", MODEL, "--data", "nowhere"],
                 ["regroup", MODEL, "--root", "4", "--data", str(digits), "--probes", "0"],
                 ["export", MODEL, "--darknet", "x.cfg", "--data", str(digits)]):
        res = cli(*args, cwd=tmp_path)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1, (args, res.err)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def calibrated(pairs, tmp_path_factory):
    """zoo:onion_pm split into a cascade and calibrated on the pairs at TPR 0.5 (untrained: the
    threshold passes part of the held-out pairs)."""
    d = tmp_path_factory.mktemp("cascade")
    from conftest import run_cli

    assert run_cli("onion", "split", "zoo:onion_pm", "--s1", "32,32,32,32,64,64,64", "--s1-classes", "2",
                   "-o", "pm.pt", cwd=d).code == 0
    res = run_cli("onion", "calibrate", "pm.pt", "--data", pairs, "--tpr", "0.5", "-o", "pmc.pt", "--json", cwd=d)
    assert res.code == 0, res.err
    return d / "pmc.pt", res.json()


def test_onion_split_and_run_on_images(cli, pairs, calibrated, tmp_path):
    split = cli("onion", "split", "zoo:onion_pm", "--s1", "0.5", "--data", pairs, "-o", "p.pt", "--json", cwd=tmp_path)
    assert split.code == 0, split.err
    _images(split.json()["probe"], 16, pairs / "val")
    path, cal = calibrated
    p_bar = cal["operating_points"][0]["val"]["pass_fraction"]
    run = cli("onion", "run", path, "--data", pairs, "--batch", "64", "--json", cwd=tmp_path).json()
    _images(run["probe"], 16, pairs / "val")
    # the cascade's runtime on the held-out pairs passes exactly what calibrate counted there
    assert run["batch"] == 16 and run["pass_fraction"] == pytest.approx(p_bar) == run["passed"] / 16
    assert run["calibrated_pass_fraction"] == pytest.approx(p_bar)
    text = cli("onion", "run", path, "--batch", "4", cwd=tmp_path)
    assert "probe: random normal" in text.out and f"calibrated p̄ = {p_bar:.3f}" in text.out


def test_profile_of_a_cascade_at_its_operating_point(cli, pairs, calibrated, tmp_path):
    path, cal = calibrated
    p_bar = cal["operating_points"][0]["val"]["pass_fraction"]
    assert 0 < p_bar < 0.5
    res = cli("profile", path, "zoo:onion_pm", "--batch", "1,8", "--min-time", "0", "--min-runs", "2", "--json",
              cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    c = rep["cascades"]
    assert len(c) == 1 and c[0]["model"] == str(path) and c[0]["how"] == "calibrated"
    assert c[0]["pass_fraction"] == pytest.approx(p_bar)
    assert c[0]["survivors"] == {"1": 0, "8": round(p_bar * 8)}
    s1, full = c[0]["macs_s1"], c[0]["macs_all_pass"]
    assert s1 < c[0]["macs_at_p"] < full and c[0]["macs_at_p"] == round(s1 + p_bar * (full - s1))
    rows = {(r["model"], r["batch"]): r for r in rep["results"]}
    assert rows[(str(path), 1)]["macs"] == s1  # batch 1 at p < 0.5: S2 never runs
    assert rows[(str(path), 8)]["macs"] == (8 * s1 + round(p_bar * 8) * (full - s1)) // 8
    measured = cli("profile", path, "--data", pairs, "--batch", "2", "--min-time", "0", "--min-runs", "2", "--json",
                   cwd=tmp_path).json()["cascades"][0]
    assert measured["how"] == "measured" and measured["images"] == 16
    assert measured["pass_fraction"] == pytest.approx(p_bar)  # the held-out pairs calibrate measured on
    text = cli("profile", path, "--batch", "2", "--min-time", "0", "--min-runs", "2", cwd=tmp_path)
    assert f"OnionNet cascade at p = {p_bar:.3f}" in text.out and "stored by onion calibrate" in text.out
    unc = cli("profile", "zoo:onion_p", "--batch", "2", "--min-time", "0", "--min-runs", "2", "--json",
              cwd=tmp_path).json()["cascades"][0]
    assert unc["how"] == "uncalibrated" and unc["pass_fraction"] == 1.0 and unc["macs_at_p"] == unc["macs_all_pass"]


def test_profile_plus_names(cli, tmp_path):
    assert cli("zoo", "build", "digits_cnn:width=2", "-o", "a+b.pt", cwd=tmp_path).code == 0
    res = cli("profile", "a+b.pt", "--min-time", "0", "--min-runs", "2", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.json()["models"] == ["a+b.pt"]
    bad = cli("profile", "x.pt+a+b.pt", cwd=tmp_path)
    assert bad.code == 2 and "'+' joins models run one after the other" in bad.err and "'x.pt'" in bad.err


def _piped(*args, cwd, env=None):
    """The console script with stdout and stderr to pipes and no COLUMNS: a log file."""
    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "SURGERY_DEBUG")}
    e["OMP_NUM_THREADS"] = "1"
    e.update(env or {})
    return subprocess.run([SURGERY, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=600)


def test_piped_output_never_cuts_wraps_or_drops(tmp_path):
    res = _piped("onion", "split", "zoo:onion_pm", "--s1", "32,32,32,32,64,64,64", "--s1-classes", "2",
                 "-o", "pm.pt", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    header = next(l for l in res.stdout.splitlines() if "dropped energy %" in l)
    assert "first-n1 split %" in header and "S1/S2" in header  # no column left out
    lines = res.stdout.splitlines()
    moved = next(l for l in lines if l.startswith("moved from the original"))
    assert "top-1 agreement" in moved  # the sentence is one line, not wrapped at 80 columns
    title = next(l for l in lines if l.startswith("onion split"))
    assert "per conv layer" in title


def test_calibrate_thresholds_tell_values_apart():
    from cli_commands.onion_train import distinct_digits

    import numpy as np

    a = float(np.float32(0.50651))
    b = float(np.nextafter(np.float32(a), np.float32(1)))
    d = distinct_digits([a, b])
    assert f"{a:.{d}g}" != f"{b:.{d}g}"
    assert distinct_digits([0.5, 0.25]) == 4 and distinct_digits([0.5, 0.5]) == 4


def test_progress_lines_in_a_log(tmp_path):
    res = _piped("profile", "zoo:digits_cnn", "--batch", "1,2", "--min-time", "0.3", "--min-runs", "2",
                 cwd=tmp_path, env={"SURGERY_PROGRESS_S": "0.05"})
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stderr.splitlines() if "elapsed" in l]
    assert lines and all("\x1b" not in l for l in lines)
    assert any("/2 (" in l for l in lines)  # done/total of the two runs (batch 1, 2)


def test_curve_marks_the_calibrated_operating_point(cli, calibrated, tmp_path):
    path, cal = calibrated
    p_bar = cal["operating_points"][0]["val"]["pass_fraction"]
    res = cli("onion", "curve", path, "--batch", "4", "--points", "2", "--runtime", "torch", "--min-time", "0",
              "--plot", "c.png", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.json()["calibrated_pass_fraction"] == pytest.approx(p_bar)
    assert (tmp_path / "c.png").stat().st_size > 10_000
    plain = cli("onion", "curve", "zoo:onion_p", "--batch", "2", "--points", "2", "--runtime", "torch", "--min-time",
                "0", "--json", cwd=tmp_path).json()
    assert plain["calibrated_pass_fraction"] is None


def test_diff_moved_on_images_is_what_eval_measures(cli, digits, tmp_path):
    assert cli("zoo", "build", "digits_cnn:width=2", "--seed", "1", "-o", "b.pt", cwd=tmp_path).code == 0
    res = cli("diff", MODEL, "b.pt", "--data", digits, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    moved = res.json()["moved"]
    _images(moved["probe"], 40, digits / "val")
    ev = cli("eval", "b.pt", "--teacher", MODEL, "--data", digits, "--json", cwd=tmp_path).json()
    assert moved["top1_agreement"] == pytest.approx(ev["models"][0]["top1_agreement"])
    assert moved["kl"] == pytest.approx(ev["models"][0]["kl_to_teacher"])
    assert moved["accuracy_a"] == pytest.approx(ev["teacher"]["accuracy"])
    text = cli("diff", MODEL, "b.pt", "--data", digits, cwd=tmp_path)
    assert f"moved on 40 images from {digits / 'val'}: top-1 agreement" in text.out
    assert "moved" not in cli("diff", MODEL, "b.pt", "--json", cwd=tmp_path).json()
