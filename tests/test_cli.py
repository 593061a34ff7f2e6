"""The console script as a user runs it: help, version, info, zoo, and bad input (exit 2)."""

from __future__ import annotations

import torch
from torch import nn

import surgery

EXPECTED_COMMANDS = ["info", "zoo"]


def _one_line_error(res, *needles):
    assert res.code == 2, (res.code, res.out, res.err)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, res.err
    assert "Traceback" not in res.err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_help_lists_every_command_with_a_description(cli):
    res = cli("--help")
    assert res.code == 0
    for cmd in EXPECTED_COMMANDS:
        line = next(l for l in res.out.splitlines() if l.strip().startswith(cmd + " "))
        assert len(line.split()) > 2, line  # name + a description


def test_version(cli):
    res = cli("--version")
    assert res.code == 0 and res.out.strip() == f"surgery {surgery.__version__}"


def test_info_json(cli):
    res = cli("info", "zoo:resnet18:num_classes=10", "--json")
    assert res.code == 0, res.err
    d = res.json()
    assert isinstance(d["params"], int) and d["params"] == 11_181_642  # 11,689,512 - 1000*513 + 10*513
    assert d["input_shape"] == [3, 224, 224]
    assert d["output_shapes"] == [[10]]
    assert d["format"] == "zoo" and d["arch"] == "zoo:resnet18:num_classes=10"


def test_info_table(cli):
    res = cli("info", "zoo:resnet18")
    assert res.code == 0 and "11,689,512" in res.out


def test_zoo_list_json(cli):
    res = cli("zoo", "list", "--json")
    assert res.code == 0
    names = {m["name"] for m in res.json()["models"]}
    assert {"resnet50", "shufflenet_v2_x1_0", "diracnet34"} <= names


def test_zoo_build_then_info_then_no_overwrite(cli, tmp_path):
    out = tmp_path / "r.pt"
    res = cli("zoo", "build", "resnet18", "--set", "num_classes=5", "-o", out, "--seed", "3", "--json")
    assert res.code == 0, res.err
    assert res.json()["params"] == 11_689_512 - 1000 * 513 + 5 * 513
    info = cli("info", out, "--json").json()
    assert info["format"] == "checkpoint" and info["metadata"]["seed"] == 3
    assert str(out) in info["sources"] and len(info["sources"][str(out)]) == 64
    before = out.read_bytes()
    again = cli("zoo", "build", "resnet18", "-o", out)
    _one_line_error(again, str(out), "--force")
    assert out.read_bytes() == before
    assert cli("zoo", "build", "resnet18", "-o", out, "--force").code == 0


def test_missing_file(cli):
    _one_line_error(cli("info", "/no/such/model.pt"), "/no/such/model.pt", "does not exist")


def test_unknown_zoo_name_suggests(cli):
    _one_line_error(cli("info", "zoo:resnet05"), "resnet05", "resnet50")


def test_bad_input_shape(cli):
    _one_line_error(cli("info", "zoo:resnet18", "--input", "3xfoo"), "3xfoo")


def test_pickled_module_refused(cli, tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(nn.Conv2d(3, 3, 1), p)
    _one_line_error(cli("info", p), str(p), "--trust-pickle")
    ok = cli("info", p, "--trust-pickle", "--input", "3x8x8", "--json")
    assert ok.code == 0 and ok.json()["params"] == 12


def test_bare_state_dict_with_arch(cli, tmp_path):
    from surgery import io as sio

    p = tmp_path / "sd.pt"
    torch.save(sio.load("zoo:resnet18").module.state_dict(), p)
    _one_line_error(cli("info", p), "--arch")
    res = cli("info", p, "--arch", "zoo:resnet18", "--json")
    assert res.code == 0 and res.json()["format"] == "state_dict"


def test_debug_shows_traceback(cli):
    res = cli("info", "/no/such.pt", env={"SURGERY_DEBUG": "1"})
    assert res.code != 0 and "Traceback" in res.err


def test_usage_error_exit_2(cli):
    assert cli("info").code == 2
