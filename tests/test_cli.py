"""The console script as a user runs it: help, version, info, zoo, and bad input (exit 2)."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

import surgery
from conftest import ROOT

EXPECTED_COMMANDS = ["info", "zoo", "layers", "flops", "share", "retarget", "diff", "fold", "profile", "export"]


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


def test_zoo_build_writes_a_default_output_named_after_the_model(cli, tmp_path):
    res = cli("zoo", "build", "zoo:digits_cnn:num_classes=5", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.json()["output"] == "digits_cnn-num_classes=5.pt" and (tmp_path / "digits_cnn-num_classes=5.pt").exists()
    _one_line_error(cli("zoo", "build", "zoo:digits_cnn:num_classes=5", cwd=tmp_path), "--force")


# ---- start-up: `surgery --help` must not pay for torch


def test_importing_the_cli_does_not_import_torch():
    """`import cli` registers every command (typer needs only their options); torch and the
    library's heavy modules load inside the command that runs. A module that imports torch at
    its top (cli_commands/*.py) makes this fail."""
    code = ("import sys; import cli; heavy = sorted(m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', "
            "'matplotlib', 'fvcore') if m in sys.modules); print(','.join(heavy))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported at start-up: {res.stdout.strip()}"


def test_command_help_imports_nothing_heavy():
    """`surgery CMD --help` parses the group's options and renders the command's help: neither
    may pull in torch, numpy or pydantic (typer 0.29 imported pydantic there, ~0.1 s; pinned 0.28)."""
    code = ("import sys, contextlib, io; from cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['share', '--help'], ['onion', 'split', '--help'], ['flops', '-h']):\n"
            "        try: main(argv)\n"
            "        except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print(','.join(sorted(m for m in ('torch', 'numpy', 'pydantic', 'onnx', 'matplotlib') if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported by a command's --help: {res.stdout.strip()}"


def test_short_help_and_examples_for_every_command(cli):
    top = cli("-h")
    assert top.code == 0 and "layers" in top.out
    for cmd in EXPECTED_COMMANDS:
        args = ["zoo", "build"] if cmd == "zoo" else [cmd]
        res = cli(*args, "-h")
        assert res.code == 0, (cmd, res.err)
        assert "Examples:" in res.out and f"surgery {' '.join(args)} " in res.out, (cmd, res.out)
    from cli_commands.base import app
    from cli_commands.lazy import load_all

    load_all()  # command modules load lazily; register every one

    for g in app.registered_groups:  # every sub-command of zoo, data, onion too
        for c in g.typer_instance.registered_commands:
            args = [g.name, c.name or c.callback.__name__]
            res = cli(*args, "-h")
            assert res.code == 0 and "Examples:" in res.out and f"surgery {' '.join(args)} " in res.out, (args, res.out)


# ---- tables for people: nothing cut at 100 columns, times without exponents


def test_tables_fit_100_columns_without_cutting_anything(cli, tmp_path):
    env = {"COLUMNS": "100"}
    assert cli("zoo", "build", "digits_cnn", "-o", "a.pt", cwd=tmp_path).code == 0
    assert cli("zoo", "build", "digits_cnn", "--seed", "1", "-o", "b.pt", cwd=tmp_path).code == 0
    runs = [("layers", "zoo:resnet50"), ("flops", "zoo:resnet50", "--device-spec", "h100-sxm"),
            ("flops", "zoo:resnet50", "--by", "module", "--depth", "3"), ("info", "a.pt"), ("zoo", "list"),
            ("diff", "a.pt", "b.pt"), ("diff", "a.pt", "b.pt", "--tensors")]
    for args in runs:
        res = cli(*args, env=env, cwd=tmp_path)
        assert res.code == 0, (args, res.err)
        assert "…" not in res.out, (args, res.out)
        assert max(len(l) for l in res.out.splitlines()) <= 100, args
    # the longest ResNet-50 layer name is printed whole on one line
    assert "layer4.0.downsample.0" in cli("layers", "zoo:resnet50", env=env).out


def test_times_are_printed_without_exponents():
    from cli_commands.base import fmt_ms

    assert [fmt_ms(x) for x in (1250.3, 12.345, 1.0, 0.012345, 0)] == ["1,250", "12.3", "1.00", "0.0123", "0"]


def test_diff_of_unrelated_models_exits_2(cli):
    _one_line_error(cli("diff", "zoo:digits_cnn", "zoo:resnet18"), "no tensor in common")


def test_missing_file(cli):
    _one_line_error(cli("info", "/no/such/model.pt"), "/no/such/model.pt", "does not exist")


def test_unknown_zoo_name_suggests(cli):
    _one_line_error(cli("info", "zoo:resnet05"), "resnet05", "resnet50")


def test_bad_input_shape(cli):
    _one_line_error(cli("info", "zoo:resnet18", "--input", "3xfoo"), "3xfoo")


def test_pickled_module_refused(cli, tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(nn.Conv2d(3, 3, 1), p)
    _one_line_error(cli("info", p), str(p), "--trust-code")
    ok = cli("info", p, "--trust-pickle", "--input", "3x8x8", "--json")  # the old name still works
    assert ok.code == 0 and ok.json()["params"] == 12


def test_bare_state_dict_with_arch(cli, tmp_path):
    from surgery.core import io as sio

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


# ---- Darknet bad input through the console script: one line, exit 2, nothing written

TINY_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=4
size=1
stride=1
pad=1
activation=linear
"""


def _tiny_with_weights(tmp_path):
    from zoo.darknet import build_darknet, write_weights

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    write_weights(build_darknet(TINY_CFG), tmp_path / "tiny.weights")
    return cfg, tmp_path / "tiny.weights"


def test_darknet_cfg_with_weights_loads(cli, tmp_path):
    cfg, _ = _tiny_with_weights(tmp_path)
    d = cli("info", cfg, "--json").json()
    # conv 3->8 (3x3, BN: beta+gamma) + conv 8->4 (1x1, bias)
    assert d["params"] == 8 * 3 * 9 + 2 * 8 + 4 * 8 + 4
    assert d["format"] == "darknet" and len(d["sources"]) == 2


def test_truncated_weights(cli, tmp_path):
    cfg, w = _tiny_with_weights(tmp_path)
    w.write_bytes(w.read_bytes()[:-8])
    _one_line_error(cli("info", cfg), "tiny.weights")


def test_oversized_weights(cli, tmp_path):
    cfg, w = _tiny_with_weights(tmp_path)
    w.write_bytes(w.read_bytes() + b"\0" * 16)
    _one_line_error(cli("info", cfg), "tiny.weights")


def test_unknown_section(cli, tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(TINY_CFG + "\n[teleporter]\nsize=3\n")
    _one_line_error(cli("info", cfg), "teleporter", "bad.cfg")


def test_bad_route_index(cli, tmp_path):
    cfg = tmp_path / "route.cfg"
    cfg.write_text(TINY_CFG + "\n[route]\nlayers=-7\n")
    _one_line_error(cli("info", cfg), "route")


def test_failed_command_writes_nothing(cli, tmp_path):
    cfg, w = _tiny_with_weights(tmp_path)
    w.write_bytes(w.read_bytes()[:-8])
    out = tmp_path / "out.pt"
    res = cli("fold", cfg, "-o", out)
    assert res.code == 2 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.cfg", "tiny.weights"]


# ---- argument checks happen before any slow work, and give one line + exit 2


def test_layers_bflops_column_counts_convolutions_only(cli, darknet_dir):
    """Darknet's BFLOPs exclude [connected] layers: `layers` and `flops --convention darknet`
    agree on AlexNet (whose three connected layers hold 59 M MACs)."""
    cfg = darknet_dir / "alexnet.cfg"
    layers = cli("layers", cfg, "--json").json()
    conv = sum(l["flops"] for l in layers["layers"] if l["type"] == "convolutional")
    table = cli("layers", cfg, "--input", "3x227x227")
    assert table.code == 0
    total_line = next(l for l in table.out.splitlines() if "total" in l)
    assert f"{conv / 1e9:.3f}" in total_line
    assert f"{layers['totals']['flops'] / 1e9:.3f}" not in total_line  # conv+linear would be larger
    flops = cli("flops", cfg, "--convention", "darknet", "--json").json()
    assert flops["totals"]["macs"] * 2 > conv


def test_bad_arguments_fail_fast(cli):
    _one_line_error(cli("profile", "zoo:resnet18", "--device-spec", "bogus"), "bogus")
    _one_line_error(cli("profile", "zoo:resnet18", "--batch", "0"), "--batch")
    _one_line_error(cli("profile", "zoo:resnet18", "--threads", "0"), "--threads")
    _one_line_error(cli("profile", "zoo:resnet18", "--min-runs", "5", "--max-runs", "2"), "min_runs")
    _one_line_error(cli("flops", "zoo:resnet18", "--device-spec", "h100-sxm", "--precision", "bf16"), "bf16", "bfloat16")
    _one_line_error(cli("info", "zoo:resnet18", "--input", "3xx224"), "3xx224")
    _one_line_error(cli("info", "zoo:resnet18", "--input", "3,224,224"), "3,224,224")


def test_share_sweep_takes_layer_names(cli):
    res = cli("share", "zoo:resnet18:num_classes=10", "zoo:resnet18:num_classes=10", "--sweep", "layer3.1.conv2,20",
              "--json")
    assert res.code == 0, res.err
    rows = res.json()["sweep"]
    assert len(rows) == 2 and all(0 < r["saved_fraction"]["params"] < 1 for r in rows)


def test_layer_input_shapes_are_the_call_arguments(cli, darknet_dir):
    """Darknet's printout shows what a layer is called with: AlexNet's first [connected]
    reads the 256x6x6 max-pool output (and flattens it itself); a two-source route shows both."""
    d = cli("layers", darknet_dir / "alexnet.cfg", "--json").json()
    by = {l["index"]: l for l in d["layers"]}
    assert by[8]["type"] == "connected" and by[8]["input_shapes"] == [by[7]["output_shape"]] == [[256, 6, 6]]
    y = cli("layers", "zoo:yolov3", "--json").json()
    r86 = next(l for l in y["layers"] if l["index"] == 86)
    assert r86["input_shapes"] == [[256, 26, 26], [512, 26, 26]] and r86["output_shape"] == [768, 26, 26]


def test_zoo_list_at_80_columns_keeps_arguments_whole(cli):
    """A foldable column wraps at spaces with its longest word whole while the width allows it;
    at 80 columns zoo list leaves out `family` (said in the caption) so num_classes=1000 stays whole."""
    res = cli("zoo", "list", env={"COLUMNS": "80"})
    assert res.code == 0
    lines = res.out.splitlines()
    assert max(len(l) for l in lines if l.startswith(("│", "┃", "┏", "└"))) <= 80
    assert "num_classes=1000," in res.out and "left out at 80 columns: family" in res.out


# ---- start-up: command modules load when their command runs (cli_commands/lazy.py)


def test_root_help_imports_no_command_module_and_loads_only_the_one_that_runs():
    code = ("import sys, contextlib, io; from cli import main\n"
            "def mods(): return sorted(m for m in sys.modules if m.startswith('cli_commands.') and m not in base)\n"
            "base = {'cli_commands.base', 'cli_commands.lazy'}\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['--help'])\n"
            "    except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print('help:' + ','.join(mods()))\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['regroup', '--help'])\n"
            "    except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print('regroup:' + ','.join(mods()))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    after_help, after_regroup = (l.split(":", 1)[1] for l in res.stdout.strip().splitlines())
    assert after_help == "", f"imported by `surgery --help`: {after_help}"
    assert "cli_commands.regroup" in after_regroup.split(",")
    assert "cli_commands.heal" not in after_regroup and "cli_commands.onion" not in after_regroup


def test_the_lazy_table_lists_every_command_with_its_own_summary():
    import typer.main

    from cli_commands.base import app
    from cli_commands.lazy import COMMANDS, load_all

    load_all()
    group = typer.main.get_command(app)
    real = {name: group.commands[name] for name in group.commands}
    assert sorted(real) == sorted(COMMANDS), "a command is missing from cli_commands/lazy.py's table, or extra"
    for name, (_, summary) in COMMANDS.items():
        assert real[name].get_short_help_str(10_000) == summary, (name, real[name].get_short_help_str(10_000))


def test_a_mistyped_command_is_one_line_with_a_suggestion(cli):
    res = cli("regrup", "x.pt")
    _one_line_error(res, "No such command 'regrup'", "Did you mean 'regroup'?")
