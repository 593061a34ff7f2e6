"""``surgery export``: verified ONNX and Darknet cfg+weights, nothing written on failure."""

from __future__ import annotations

import torch

from surgery.core import io as sio
from surgery.core.verify import compare

TINY = "zoo:yolov3_tiny:width=128,height=128"


def test_export_darknet_and_onnx_round_trip(cli, tmp_path):
    cfg, onnx = tmp_path / "t.cfg", tmp_path / "t.onnx"
    res = cli("export", TINY, "--darknet", cfg, "--onnx", onnx, "--json")
    assert res.code == 0, res.err
    d = res.json()
    assert d["model"] == TINY and d["darknet"]["output"] == str(cfg) and d["darknet"]["identical"] is True
    assert d["darknet"]["weights"] == str(tmp_path / "t.weights")
    assert d["darknet"]["layers"] == 24 and d["darknet"]["batchnorms"] == 11
    assert d["onnx"]["output"] == str(onnx) and d["onnx"]["verify"]["max_rel"] <= d["onnx"]["verify"]["rtol"]
    assert d["onnx"]["batch"] == "dynamic" and d["onnx"]["output_names"] == ["head0_out0", "head0_out1"]
    src = sio.load(TINY)
    back = sio.load(str(cfg))  # same-stem .weights is picked up
    assert back.metadata["weights"] == str(tmp_path / "t.weights")
    for k, v in src.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k]), k
    rep = compare(src.module, back.module, src.input_shape, probes=1, batch=1)
    assert rep.max_abs == 0.0
    # written weights are byte-compatible: a second export of the loaded files gives the same bytes
    again = tmp_path / "again.cfg"
    assert cli("export", cfg, "--darknet", again).code == 0
    assert (tmp_path / "again.weights").read_bytes() == (tmp_path / "t.weights").read_bytes()


def test_export_refusals_write_nothing(cli, tmp_path):
    res = cli("export", "zoo:resnet18:num_classes=3", "--darknet", tmp_path / "r.cfg")
    assert res.code == 2 and "as ONNX instead" in res.err and "Traceback" not in res.err
    assert list(tmp_path.iterdir()) == []
    assert cli("export", TINY, "--darknet", tmp_path / "x.txt").code == 2
    assert cli("export", TINY, "--batch", "1,8").code == 2
    (tmp_path / "t.cfg").write_text("keep")
    res = cli("export", TINY, "--darknet", tmp_path / "t.cfg")
    assert res.code == 2 and "--force" in res.err
    assert (tmp_path / "t.cfg").read_text() == "keep" and not (tmp_path / "t.weights").exists()


def test_export_default_is_onnx_in_the_current_directory(cli, tmp_path):
    res = cli("export", "zoo:resnet18:num_classes=3", "--input", "3x32x32", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.err.strip().splitlines()[-1] == "wrote resnet18.onnx" and "wrote" not in res.out
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18.onnx"]
    again = cli("export", "zoo:resnet18:num_classes=3", "--input", "3x32x32", cwd=tmp_path)
    assert again.code == 2 and "--force" in again.err
