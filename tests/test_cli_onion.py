"""``surgery onion split|run|curve|export`` through the real console script."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def split_ckpt(tmp_path_factory):
    from conftest import run_cli

    d = tmp_path_factory.mktemp("onion")
    res = run_cli("onion", "split", "zoo:onion_pm", "--s1", "32,32,32,32,64,64,64", "--s1-classes", "2", "--json",
                  cwd=d)
    assert res.code == 0, res.err
    return d, res.json()


def test_split_default_output_and_json(split_ckpt):
    d, j = split_ckpt
    assert j["output"] == "onion_pm-onion.pt" and (d / "onion_pm-onion.pt").exists()
    assert j["n1"] == [32, 32, 32, 32, 64, 64, 64, 2] and j["n2"] == [64, 64, 64, 64, 128, 128, 128, 1]
    assert j["params_after"] == 843_971  # = zoo:onion_p (tests/test_onion.py's closed form)
    assert j["verify"]["max_rel"] < 1e-4 and set(j["moved"]) == {"max_abs", "max_rel", "top1_agreement"}
    assert [l["dropped_weights"] for l in j["layers"]][1] == 9 * 64 * 32


def test_run_skips_s2_for_rejected(split_ckpt, cli):
    d, _ = split_ckpt
    res = cli("onion", "run", "onion_pm-onion.pt", "--batch", "10", "--pass-fraction", "0.3", "--json", cwd=d)
    assert res.code == 0, res.err
    j = res.json()
    assert j["passed"] == 3 and j["rejected"] == 7 and j["verify"]["max_abs"] == 0.0
    assert [s["output"] is None for s in j["samples"]].count(True) == 7
    # S2's MACs scale with the survivors: all-pass vs 3 of 10 (S1 ran on all 10 either way)
    from test_onion_runtime import _stage_macs  # per-sample conv MACs of S1 and S2, closed form

    s1, s2 = _stage_macs()
    assert j["macs"] == 10 * s1 + 3 * s2 and j["macs_all_pass"] == 10 * (s1 + s2)


def test_export_pair(split_ckpt, cli):
    d, _ = split_ckpt
    res = cli("onion", "export", "onion_pm-onion.pt", cwd=d)
    assert res.code == 0, res.err
    assert (d / "onion_pm-onion-s1.onnx").exists() and (d / "onion_pm-onion-s2.onnx").exists()
    assert "verified in ONNX Runtime" in res.out


def test_curve_json_and_plot(cli, tmp_path):
    res = cli("onion", "curve", "zoo:onion_p", "--batch", "4", "--points", "2", "--runtime", "torch",
              "--min-time", "0", "--plot", "f.png", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    j = res.json()
    assert j["checks"]["complexity_t_below_t_ns"] and (tmp_path / "f.png").exists()
    assert [p["n_pass"] for p in j["points"]] == [0, 4]


@pytest.mark.parametrize("args, fragment", [
    (["split", "zoo:onion_pm", "--s1", "0"], "strictly between 0 and 1"),
    (["split", "zoo:onion_pm", "--s1", "1"], "strictly between 0 and 1"),
    (["split", "zoo:onion_pm", "--s1", "97,32,32,32,64,64,64"], "more than the layer's 96 filters"),
    (["split", "zoo:resnet18", "--s1", "0.5"], "joins 2 branches"),
    (["run", "zoo:onion_pm"], "not an OnionNet cascade"),
    (["curve", "zoo:onion_p", "--points", "1"], "at least 2 points"),
])
def test_bad_input_is_one_line(cli, tmp_path, args, fragment):
    res = cli("onion", *args, cwd=tmp_path)
    assert res.code == 2, res.err
    assert fragment in res.err and len(res.err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_readme_quotes_what_split_prints(split_ckpt):
    from conftest import ROOT

    _, j = split_ckpt
    text = (ROOT / "README.md").read_text()
    assert f"params {j['params_before']:,} -> {j['params_after']:,} ({j['dropped_weights']:,} S2->S1 weights" in text
