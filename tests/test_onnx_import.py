"""``.onnx`` model references (surgery.core.onnx_import) through the real console script.

The ONNX files are made here: torch exports of zoo nets (ResNet-18, ShuffleNet v2 with its
channel shuffle, YOLOv3-tiny with upsample/concat, the digits CNN with two different heads)
and a graph written with ``onnx.helper`` in the styles exporters in the wild use (weights as
``Constant`` nodes, symbolic dims, hardswish spelled ``Add->Clip->Mul->Div``, ``Gemm`` with
transB, ``Resize`` with scales, a ``Shape->Gather->Concat->Reshape`` flatten). The real
pretrained networks are PaddleOCR's (a MobileNetV3 text-direction classifier and a DB text
detector) shipped in the ``rapidocr-onnxruntime`` wheel (Apache-2.0; the [test] extra).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT
from surgery.core import io as sio
from surgery.core.onnx_io import quiet_exporters

FAST_TIMING = ["--warmup", "1", "--warmup-time", "0", "--min-runs", "3", "--max-runs", "5", "--min-time", "0.02"]


def _ts_export(ref: str, path: Path, shape, opset: int = 13):
    """A TorchScript-exporter ONNX file of a zoo net (BatchNorm kept, dynamic batch)."""
    net = sio.load(ref)
    buf = io.BytesIO()
    with quiet_exporters():
        torch.onnx.export(net.module.eval(), (torch.randn(2, *shape),), buf, dynamo=False, opset_version=opset,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    path.write_bytes(buf.getvalue())
    return path


def _wild_graph(path: Path, *, hidden: bool = True) -> Path:
    """A graph in the exporters-in-the-wild style (see the module docstring); input
    ``x: [N, 3, H, W]`` with N, H, W symbolic."""
    rng = np.random.default_rng(0)
    nodes, k = [], [0]

    def const(value, name=None):
        k[0] += 1
        name = name or f"Constant@{k[0]}"
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name)))
        return name

    def node(op, ins, **attrs):
        k[0] += 1
        out = f"{op.lower()}_{k[0]}.tmp_0"
        nodes.append(helper.make_node(op, ins, [out], name=f"{op}@{k[0]}", **attrs))
        return out

    w1 = const(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv1_weights")
    x = node("Conv", ["x", w1], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    bn = [const(v.astype(np.float32), f"bn1_{n}") for n, v in (("scale", rng.uniform(0.5, 1.5, 8)),
                                                               ("offset", rng.normal(0, 0.1, 8)),
                                                               ("mean", rng.normal(0, 0.2, 8)),
                                                               ("variance", rng.uniform(0.5, 2, 8)))]
    x = node("BatchNormalization", [x, *bn], epsilon=1e-5)
    # hardswish, decomposed as Paddle writes it
    a = node("Add", [x, const(np.float32(3.0))])
    c = node("Clip", [a, const(np.float32(0.0)), const(np.float32(6.0))])
    m = node("Mul", [x, c])
    x = node("Div", [m, const(np.float32(6.0))])
    w2 = const(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "conv2_weights")
    x = node("Conv", [x, w2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b2 = const(rng.normal(0, 0.1, (1, 16, 1, 1)).astype(np.float32), "conv2_offset")
    x = node("Relu", [node("Add", [x, b2])])
    x = node("Resize", [x, const(np.array([], np.float32)), const(np.array([1, 1, 2, 2], np.float32))],
             mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    x = node("GlobalAveragePool", [x])
    # flatten through host shape arithmetic: Reshape(x, Concat(Shape(x)[0:1], [-1]))
    n = node("Slice", [node("Shape", [x]), const(np.array([0], np.int64)), const(np.array([1], np.int64))])
    x = node("Reshape", [x, node("Concat", [n, const(np.array([-1], np.int64))], axis=0)])
    wfc = const(rng.normal(0, 0.3, (5, 16)).astype(np.float32), "fc_0.w_0")
    x = node("Gemm", [x, wfc, const(rng.normal(0, 0.1, 5).astype(np.float32), "fc_0.b_0")], transB=1)
    nodes[-1].output[0] = "y"
    dims = ["N", 3, "H", "W"] if hidden else [1, 3, 16, 16]
    g = helper.make_graph(nodes, "wild", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="wild-test")
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {
        "r18": _ts_export("zoo:resnet18:num_classes=10", d / "r18.onnx", (3, 64, 64)),
        "shuffle": _ts_export("zoo:shufflenet_v2_x0_5:num_classes=10", d / "shuffle.onnx", (3, 64, 64)),
        "yolo": _ts_export("zoo:yolov3_tiny:width=128,height=128", d / "yolo.onnx", (3, 128, 128)),
        "digits10": _ts_export("zoo:digits_cnn", d / "digits10.onnx", (1, 32, 32)),
        "digits5": _ts_export("zoo:digits_cnn:num_classes=5", d / "digits5.onnx", (1, 32, 32)),
        "wild": _wild_graph(d / "wild.onnx"),
        "dir": d,
    }


ZOO = {"r18": ("zoo:resnet18:num_classes=10", "3x64x64"), "shuffle": ("zoo:shufflenet_v2_x0_5:num_classes=10", "3x64x64"),
       "yolo": ("zoo:yolov3_tiny:width=128,height=128", "3x128x128")}


@pytest.mark.parametrize("key", list(ZOO))
def test_zoo_export_imports_exactly_and_counts_the_same(cli, files, key):
    ref, shape = ZOO[key]
    info = cli("info", files[key], "--json")
    assert info.code == 0, info.err
    d = info.json()
    imp = d["metadata"]["onnx_import"]
    assert d["format"] == "onnx" and d["arch"] == f"onnx:{files[key].name}"
    assert imp["sha256"] == hashlib.sha256(files[key].read_bytes()).hexdigest()
    assert imp["verify"]["against"] == "onnxruntime" and imp["verify"]["max_rel"] < 1e-5
    mine, theirs = cli("flops", files[key], "--json"), cli("flops", ref, "--input", shape, "--json")
    assert mine.code == 0 and theirs.code == 0, mine.err + theirs.err
    assert mine.json()["totals"]["macs"] == theirs.json()["totals"]["macs"]
    assert mine.json()["totals"]["params"] == theirs.json()["totals"]["params"]


def test_layers_are_standard_modules_named_as_in_torch(cli, files):
    res = cli("layers", files["r18"], "--json")
    assert res.code == 0, res.err
    layers = {l["name"]: l["type"] for l in res.json()["layers"]}
    assert layers["layer1.0.conv1"] == "Conv2d" and layers["layer1.0.bn1"] == "BatchNorm2d"
    assert layers["fc"] == "Linear"
    shuffle = {l["type"] for l in cli("layers", files["shuffle"], "--json").json()["layers"]}
    assert {"Conv2d", "BatchNorm2d", "reshape", "permute"} <= shuffle  # the channel shuffle
    yolo = {l["type"] for l in cli("layers", files["yolo"], "--json").json()["layers"]}
    assert {"Upsample", "cat", "LeakyReLU"} <= yolo


def test_fold_checkpoint_reloads_without_the_onnx_file(cli, files, tmp_path):
    res = cli("fold", files["r18"], "-o", tmp_path / "f.pt", "--json")
    assert res.code == 0, res.err
    assert res.json()["verify"]["max_rel"] < 1e-5
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "f.pt", alone / "f.pt")
    d = cli("info", "f.pt", "--json", cwd=alone).json()  # no .onnx beside it
    assert d["arch"] == "onnx:r18.onnx" and [s["op"] for s in d["recipe"]] == ["fold"]
    assert d["metadata"]["onnx_import"]["sha256"] == hashlib.sha256(files["r18"].read_bytes()).hexdigest()
    types = {l["type"] for l in cli("layers", "f.pt", "--json", cwd=alone).json()["layers"]}
    assert "BatchNorm2d" not in types and "Conv2d" in types
    text = cli("info", "f.pt", cwd=alone).out
    assert "r18.onnx (every layer)" in " ".join(text.split()) and "onnx import" in text


def test_export_of_an_edited_import_agrees_in_onnxruntime(cli, files, tmp_path):
    assert cli("fold", files["shuffle"], "-o", tmp_path / "s.pt").code == 0
    res = cli("export", tmp_path / "s.pt", "--onnx", tmp_path / "s.onnx", "--json")
    assert res.code == 0, res.err
    assert res.json()["onnx"]["verify"]["max_rel"] < 1e-4
    again = sio.load(str(tmp_path / "s.onnx"))  # and it imports again
    ref = sio.load(str(tmp_path / "s.pt"))
    x = torch.randn(3, *ref.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(again.module(x), ref.module(x), rtol=1e-4, atol=1e-5)


def test_regroup_diff_and_share_of_imports(cli, files, tmp_path):
    assert cli("regroup", files["r18"], "--root", "4", "-o", tmp_path / "rg.pt").code == 0
    diff = cli("diff", files["r18"], tmp_path / "rg.pt", "--json")
    assert diff.code == 0, diff.err
    # two imports with different heads (10 and 5 classes) on one backbone
    res = cli("share", "--at", "features.relu4", files["digits10"], files["digits5"], "-o", tmp_path / "sh.pt",
              "--json")
    assert res.code == 0, res.err
    assert len(res.json()["heads"]) == 2
    d = cli("diff", files["digits10"], files["digits5"], "--json")
    assert d.code == 0 and "fc.weight" in d.out


def test_onion_split_and_heal_of_an_import(cli, files, tmp_path):
    from surgery.datasets import write_digits

    res = cli("onion", "split", files["digits10"], "--s1", "0.5", "-o", tmp_path / "o.pt", "--json")
    assert res.code == 0, res.err
    data = write_digits(tmp_path / "digits", per_class=3).output
    assert cli("regroup", files["digits10"], "--root", "2", "-o", tmp_path / "g.pt").code == 0
    res = cli("heal", tmp_path / "g.pt", "--teacher", files["digits10"], "--data", data, "--steps", "2",
              "--batch", "8", "--workers", "0", "-o", tmp_path / "h.pt", cwd=tmp_path)
    assert res.code == 0, res.err
    assert sio.load(str(tmp_path / "h.pt")).arch.kind == "onnx"


def test_profile_torch_and_onnxruntime(cli, files):
    res = cli("profile", files["digits10"], "--runtime", "torch,onnxruntime", "--batch", "1", "--json", *FAST_TIMING)
    assert res.code == 0, res.err
    assert "onnxruntime" in res.out and "torch" in res.out


def test_wild_graph_needs_input_then_imports_every_style(cli, files, tmp_path):
    wild = files["wild"]
    res = cli("info", wild)
    assert res.code == 2 and "--input" in res.err and res.err.count("\n") == 1
    res = cli("layers", wild, "--input", "3x16x16", "--json")
    assert res.code == 0, res.err
    layers = res.json()["layers"]
    types = [l["type"] for l in layers]
    assert "Hardswish" in types and "Upsample" in types and "Linear" in types and "Flatten" in types
    assert not {"add", "truediv", "clamp"} & set(types)  # the hardswish is one module, the bias joined its conv
    assert sum(l["params"] for l in layers) == sio.load(str(wild), input_shape=(3, 16, 16)).params
    net = sio.load(str(wild), input_shape=(3, 16, 16))
    assert all(isinstance(p, torch.nn.Parameter) for p in net.module.parameters())
    assert not [n for n, b in net.module.named_buffers() if "running" not in n and "num_batches" not in n]
    res = cli("fold", wild, "--input", "3x16x16", "-o", tmp_path / "w.pt", "--json")
    assert res.code == 0, res.err
    res = cli("export", tmp_path / "w.pt", "--onnx", tmp_path / "w.onnx")
    assert res.code == 0, res.err
    other = cli("flops", wild, "--input", "3x32x48", "--json")  # another input size: shapes refold
    assert other.code == 0 and other.json()["input_shape"] == [3, 32, 48]


def _bad(path: Path, model) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_bad_onnx_is_one_line(cli, files, tmp_path):
    good = files["wild"].read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    import onnx

    m = onnx.load_from_string(good)
    m.opset_import[0].version = 99
    _bad(tmp_path / "opset.onnx", m)
    m = onnx.load_from_string(good)
    m.graph.node.append(helper.make_node("NonMaxSuppression", ["y"], ["z"], name="nms_0"))
    m.graph.output[0].name = "z"
    _bad(tmp_path / "op.onnx", m)
    m = onnx.load_from_string(good)
    m.graph.input[0].type.tensor_type.ClearField("shape")
    _bad(tmp_path / "noshape.onnx", m)
    cases = {"trunc.onnx": "truncated", "empty.onnx": "empty", "opset.onnx": "opset 99",
             "op.onnx": "NonMaxSuppression", "noshape.onnx": "--input"}
    for name, words in cases.items():
        res = cli("info", tmp_path / name, *([] if name == "noshape.onnx" else ["--input", "3x16x16"]))
        assert res.code == 2, (name, res.out, res.err)
        assert words in res.err and res.err.count("\n") == 1 and "Traceback" not in res.err, res.err
    assert "nms_0" in cli("info", tmp_path / "op.onnx", "--input", "3x16x16").err


# ------------------------------------------------------------------ PaddleOCR's pretrained nets


def _paddle(name: str) -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # no import: its __init__ needs OpenCV
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rapidocr-onnxruntime (the [test] extra) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.exists():
        pytest.skip(f"{name} is not in this rapidocr-onnxruntime")
    return path


CLS = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DET = "ch_PP-OCRv4_det_infer.onnx"


def test_paddle_classifier_every_command(cli, tmp_path):
    cls = _paddle(CLS)
    shape = ["--input", "3x48x192"]
    info = cli("info", cls, *shape, "--json")
    assert info.code == 0, info.err
    assert info.json()["params"] == 129_356 and info.json()["output_shapes"] == [[2]]
    layers = cli("layers", cls, *shape, "--json").json()["layers"]
    types = [l["type"] for l in layers]
    assert types.count("Hardswish") == 18 and types[-2:] == ["Linear", "Softmax"]  # 18 Add->Clip->Mul->Div
    res = cli("fold", cls, *shape, "-o", tmp_path / "cls.pt", "--json")
    assert res.code == 0, res.err
    assert "BatchNorm2d" not in {l["type"] for l in cli("layers", tmp_path / "cls.pt", "--json").json()["layers"]}
    split = cli("onion", "split", cls, *shape, "--s1", "0.5", "-o", tmp_path / "o.pt")
    assert split.code == 2 and "Div" not in split.err and "Hardswish" not in split.err  # SE blocks: not a chain
    res = cli("export", tmp_path / "cls.pt", "--onnx", tmp_path / "cls.onnx")
    assert res.code == 0, res.err


def test_paddle_detector_near_zero_sigmoid_map_verifies(cli, tmp_path):
    det = _paddle(DET)
    res = cli("fold", det, "--input", "3x64x64", "-o", tmp_path / "det.pt", "--json")
    assert res.code == 0, res.err  # a sigmoid map near zero: the absolute floor of the check
    res = cli("export", tmp_path / "det.pt", "--onnx", tmp_path / "det.onnx")
    assert res.code == 0, res.err
    res = cli("profile", det, "--input", "3x64x64", "--runtime", "torch,onnxruntime", "--batch", "1", *FAST_TIMING)
    assert res.code == 0, res.err


# ------------------------------------------------------------------ networks converters write (py:)

ENV = {"PYTHONPATH": str(ROOT / "tests" / "data")}


def test_converter_style_module_counts_folds_and_splits(cli, tmp_path):
    res = cli("flops", "py:wild_nets:make", "--json", env=ENV)
    assert res.code == 0, res.err
    d = res.json()
    assert any("cannot run on the meta device" in n for n in d["notes"])
    conv = 3 * 3 * 3 * 8 * 16 * 16 + 3 * 3 * 8 * 16 * 8 * 8  # conv1 + conv2 MACs at 3x16x16
    assert d["totals"]["macs"] == conv + 16 * 5
    layers = cli("layers", "py:wild_nets:make", "--json", env=ENV).json()["layers"]
    names = [l["name"] for l in layers]
    assert "cast" in names and "reshape" in names and "bn1" in names  # untraceable modules became leaves
    res = cli("fold", "py:wild_nets:make", "-o", tmp_path / "f.pt", "--json", env=ENV, cwd=tmp_path)
    assert res.code == 0, res.err
    res = cli("onion", "split", "py:wild_nets:chain", "--s1", "0.5", "-o", tmp_path / "o.pt", env=ENV, cwd=tmp_path)
    assert res.code == 0, res.err  # x * clamp(x + 3, 0, 6) / 6 is a hardswish, not a join


def test_shortcuts_never_stand_in_for_host_tensors():
    from analyzers.shortcuts import shortcut

    shape = [torch.tensor([2]), torch.tensor([-1])]
    assert shortcut(torch.ops.aten.cat.default, (shape,), {}) is None
    meta = [torch.empty(2, 3, device="meta")] * 2
    assert shortcut(torch.ops.aten.cat.default, (meta,), {}).shape == (4, 3)


def test_verify_has_an_absolute_floor():
    from surgery.core.verify import compare

    class Tiny(torch.nn.Module):
        def __init__(self, eps):
            super().__init__()
            self.eps = eps

        def forward(self, x):
            return torch.sigmoid(x - 20) + self.eps  # ~2e-9: a background sigmoid map

    rep = compare(Tiny(0.0), Tiny(1e-7), (4,))
    assert rep.max_rel > 1e-4 and rep.ok(1e-4)  # 1e-7 absolute on a near-zero map passes
    assert not compare(Tiny(0.0), Tiny(1e-3), (4,)).ok(1e-4)


def test_readme_models_from_onnx_block_runs_in_order(cli, tmp_path):
    """The README's "Models from ONNX" commands depend on each other: run them in one folder."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text.split("### Models from ONNX", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    cmds = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    cmds = [c for c in cmds if c.startswith("surgery ")]
    assert len(cmds) >= 4
    for cmd in cmds:
        res = cli(*shlex.split(cmd)[1:], cwd=tmp_path)
        assert res.code == 0, f"{cmd}\n{res.err}"
    info = " ".join(cli("info", "r18.onnx", cwd=tmp_path).out.split())
    assert "vs onnxruntime: max abs" in info and "r18.onnx (every layer)" in info
