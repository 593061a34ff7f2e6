"""``surgery layers`` and ``surgery flops`` as a user runs them: the real console script for the
main paths, ``cli.main`` in-process for the option matrix (same code, no interpreter start-up)."""

from __future__ import annotations

import csv
import io
import json

import pytest

import cli
from surgery.core import io as sio

LAYER_KEYS = {"index", "name", "type", "input_shapes", "output_shape", "params", "macs", "flops", "bytes_read",
              "bytes_written"}


def main(capsys, *args) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # typer's standalone mode exits after a successful command
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _resnet18_macs(hw: int = 224) -> int:
    """Closed-form conv + fc MACs of ResNet-18 for one ``3 x hw x hw`` image (1,814,073,344 at 224)."""

    def stage(side, cin, cout, blocks=2):  # 3x3 convs, the first one strided, + a 1x1 projection
        macs = side * side * cout * cin * 9 + (2 * blocks - 1) * side * side * cout * cout * 9
        return macs + (side * side * cout * cin if cin != cout else 0)

    s = hw // 4  # after the stride-2 stem conv and the stride-2 max pool
    return ((hw // 2) ** 2 * 64 * 3 * 7 * 7 + stage(s, 64, 64) + stage(s // 2, 64, 128)
            + stage(s // 4, 128, 256) + stage(s // 8, 256, 512) + 512 * 1000)


# ----------------------------------------------------------------------------- console script


def test_layers_json_zoo(cli):
    r = cli("layers", "zoo:resnet18", "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["model"] == "zoo:resnet18" and d["input_shape"] == [3, 224, 224]
    assert all(LAYER_KEYS <= set(l) for l in d["layers"])
    first = d["layers"][0]
    assert first["input_shapes"] == [[3, 224, 224]] and first["output_shape"] == [64, 112, 112]
    assert first["macs"] == 112 * 112 * 64 * 3 * 49 and first["flops"] == 2 * first["macs"]
    assert sum(l["type"] == "add" for l in d["layers"]) == 8  # every residual + is a layer
    t = d["totals"]
    assert {"params", "macs", "flops", "bytes"} <= set(t)
    assert t["params"] == 11_689_512 and t["macs"] == sum(l["macs"] for l in d["layers"])
    assert t["bytes"] == sum(l["bytes_read"] + l["bytes_written"] for l in d["layers"])


def test_layers_darknet_cfg_table_and_json(cli, capsys, darknet_dir):
    cfg = darknet_dir / "yolov3-tiny.cfg"
    r = cli("layers", cfg, "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert [l["index"] for l in d["layers"]] == list(range(24))
    assert d["layers"][0]["type"] == "convolutional" and d["layers"][16]["type"] == "yolo"
    assert d["layers"][20]["input_shapes"] == [[128, 26, 26], [256, 26, 26]]  # route 19, 8
    code, out, _ = main(capsys, "layers", cfg)
    assert code == 0 and "BFLOPs" in out and "convolutional" in out
    assert "5.565" in out  # Darknet's total for yolov3-tiny at 416: 5.565 BFLOPs


def test_flops_darknet_convention_yolov3(cli):
    r = cli("flops", "zoo:yolov3", "--convention", "darknet", "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["convention"]["name"] == "darknet" and d["convention"]["includes"]
    assert round(d["totals"]["darknet_flops"] / 1e9, 2) == 65.86
    assert len(d["layers"]) == 107


def test_errors_are_one_line_exit_2(cli, capsys, tmp_path):
    r = cli("flops", "zoo:resnet18", "--convention", "gflops")
    assert r.code == 2 and r.out == ""
    assert r.err.startswith("surgery: error:") and len(r.err.strip().splitlines()) == 1, r.err
    for args in (("flops", "zoo:resnet18", "--by", "block"), ("flops", "zoo:resnet18", "--device-spec", "tpu"),
                 ("layers", tmp_path / "missing.pt"), ("layers", "zoo:resnet18", "--input", "3x0x5"),
                 ("layers", "zoo:yolov3_tiny", "--input", "3x7x7"), ("flops", "zoo:resnet18", "--batch", "0")):
        code, out, err = main(capsys, *args)
        assert code == 2, args
        assert err.startswith("surgery: error:") and len(err.strip().splitlines()) == 1, err
        assert out == ""


# ----------------------------------------------------------------------------- in process


def test_flops_table_states_the_convention(capsys):
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x64x64")
    assert code == 0
    assert "convention: macs" in out and "includes:" in out and "excludes:" in out
    for conv in ("flops", "fvcore", "all"):
        code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x64x64", "--convention", conv, "--by", "operator")
        assert code == 0 and f"convention: {conv}" in out and "aten.convolution" in out


def test_flops_views_json(capsys):
    base = ["flops", "zoo:resnet18", "--input", "3x64x64", "--json"]
    code, out, _ = main(capsys, *base)
    layer = json.loads(out)
    total = layer["totals"]["macs"]
    assert sum(r["macs"] for r in layer["layers"]) == total and layer["by"] == "layer"
    code, out, _ = main(capsys, *base, "--by", "module", "--depth", "1")
    mod = json.loads(out)
    assert {r["key"] for r in mod["groups"]} >= {"conv1", "layer1", "layer4", "fc"}
    assert sum(r["macs"] for r in mod["groups"]) == total
    code, out, _ = main(capsys, *base, "--by", "operator", "--convention", "flops")
    op = json.loads(out)
    assert op["groups"][0]["key"] == "aten.convolution" and sum(r["flops"] for r in op["groups"]) == 2 * total


def test_flops_roofline(capsys):
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--device-spec", "h100-sxm", "--json")
    d = json.loads(out)
    roof = d["roofline"]
    conv1 = d["layers"][0]  # the floor by its definition: max(FLOPs / peak, bytes / bandwidth), H100 SXM FP32
    floor = max(2 * (conv1["macs"] + conv1["other_macs"]) / 67e12, (conv1["bytes_read"] + conv1["bytes_written"]) / 3.35e12)
    assert roof["device"] == "h100-sxm" and conv1["roofline_ms"] == pytest.approx(floor * 1e3)
    assert roof["roofline_ms"] == pytest.approx(sum(r["roofline_ms"] for r in d["layers"]))
    assert {r["bound"] for r in d["layers"]} >= {"compute", "memory"}
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--device-spec", "a100", "--precision", "tf32")
    text = " ".join(out.split())  # prose wraps at the console width
    assert code == 0 and "latency floor" in text and "tf32" in text


def test_flops_sweep(capsys):
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x32x32,3x64x64", "--batch", "1,4", "--json",
                        "--device-spec", "h200")
    d = json.loads(out)
    rows = d["sweep"]
    assert [(r["input_shape"], r["batch"]) for r in rows] == [([3, 32, 32], 1), ([3, 32, 32], 4), ([3, 64, 64], 1),
                                                              ([3, 64, 64], 4)]
    assert rows[1]["totals"]["macs"] == 4 * rows[0]["totals"]["macs"] and rows[3]["totals"]["macs"] == 4 * rows[2]["totals"]["macs"]
    assert all(r["roofline_ms"] > 0 for r in rows) and len({r["totals"]["params"] for r in rows}) == 1
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x32x32,3x64x64")
    assert code == 0 and "× first" in out


def test_flops_csv(capsys):
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x64x64", "--csv", "--convention", "fvcore")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and rows[0]["name"] == "conv1" and "fvcore_macs" in rows[0]
    code, out, _ = main(capsys, "layers", "zoo:resnet18", "--input", "3x64x64", "--csv")
    assert code == 0 and next(csv.DictReader(io.StringIO(out)))["output_shape"] == "64x32x32"


def test_flops_fvcore_backend_beside_native(capsys):
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x64x64", "--backend", "fvcore", "--json")
    d = json.loads(out)
    fv = d["fvcore"]
    assert fv["matmul_macs"] == d["totals"]["macs"] == fv["native_macs"]
    assert fv["fvcore_macs"] == d["totals"]["fvcore_macs"] and "real CPU" in fv["note"]
    conv1 = d["layers"][0]
    assert conv1["fvcore_backend_macs"] == conv1["macs"]
    code, out, _ = main(capsys, "flops", "zoo:resnet18", "--input", "3x64x64", "--backend", "fvcore")
    assert code == 0 and "(equal)" in out


def test_commands_on_a_checkpoint(capsys, tmp_path):
    net = sio.load("zoo:resnet18")
    path = sio.save(net, tmp_path / "r18.pt")
    code, out, _ = main(capsys, "layers", path, "--json", "--batch", "2")
    d = json.loads(out)
    assert code == 0 and d["totals"]["params"] == net.params and d["batch"] == 2
    assert d["totals"]["macs"] == 2 * _resnet18_macs()  # torchvision's 1.81 GFLOPs (MACs) card
    code, out, _ = main(capsys, "flops", path, "--dtype", "float16", "--json")
    assert code == 0 and json.loads(out)["dtype"] == "float16"
