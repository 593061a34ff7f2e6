"""surgery.share / share_darknet and the ``surgery share`` command.

YOLOv3 runs at 3x128x128 here (the paper's 416 only for the cost counts, on the meta
device); CLI cases use YOLOv3-tiny, which is 7x smaller.
"""

from __future__ import annotations


import pytest
import torch

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.graph import layer_graph
from surgery.retarget import retarget
from surgery.share import DivergedError, plan_cut, share, sweep
from surgery.share import combined_blocks
from zoo.darknet import build_darknet, load_darknet, parse_cfg, write_cfg
from zoo.darknet_zoo import yolov3_cfg

YOLO = "zoo:yolov3:width=128,height=128"
TINY = "zoo:yolov3_tiny:width=128,height=128"
# The paper's Table I (k=73; 74 is a shortcut without weights, so it is the same)
PAPER = {40: (0.092, 0.424), 48: (0.156, 0.505), 64: (0.401, 0.663), 73: (0.655, 0.744), 74: (0.655, 0.744)}


def _outs(module, x):
    with torch.no_grad():
        out = module(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _same(a, b, tol=0.0):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.shape == q.shape
        assert (p - q).abs().max().item() <= tol


@pytest.fixture(scope="module")
def yolo():
    base = sio.load(YOLO)
    task, _ = retarget(base, 74, 1, seed=1)
    return base, task


@pytest.fixture(scope="module")
def tiny():
    base = sio.load(TINY)
    task, _ = retarget(base, 13, 1, seed=1)
    return base, task


# ------------------------------------------------------------------ the combined cfg


@pytest.mark.parametrize("k, layers", [(74, 140), (73, 141)])
def test_yolov3_combined_cfg_has_the_papers_layer_count(k, layers):
    blocks = parse_cfg(yolov3_cfg(80))
    task = parse_cfg(yolov3_cfg(1))
    combined, routes = combined_blocks(blocks, [task], k)
    assert len(combined) - 1 == layers and routes == [107]
    assert combined[108] == {"type": "route", "layers": str(k)}  # layer 107 routes to k
    # the task's routes 86 (-1,61) and 98 (-1,36) read the shared layers 61 and 36
    shift = 107 - k
    assert combined[1 + 86 + shift]["layers"] == "-1,61"
    assert combined[1 + 98 + shift]["layers"] == "-1,36"
    assert combined[1 + 83 + shift]["layers"] == "-4"  # inside the task block: stays relative
    if k == 73:  # the task's shortcut 74 (from=-3 -> 71) now reads the shared layer 71
        assert combined[1 + 108] == {**task[1 + 74], "from": "71"}
    with torch.device("meta"):  # shapes are checked by the builder; no weights needed
        net = build_darknet(write_cfg(combined))
    assert len(net.layers) == layers
    assert net.output_indices == (82, 94, 106, 82 + shift, 94 + shift, 106 + shift)
    assert net.layers[107].inputs == (k,)
    assert net.layers[108].inputs == ((107,) if k == 74 else (107, 71))


def test_pjreddie_yolov3_cfg_gives_the_same_counts(darknet_dir):
    blocks = parse_cfg((darknet_dir / "yolov3.cfg").read_text())
    for k, layers in ((74, 140), (73, 141)):
        combined, _ = combined_blocks(blocks, [blocks], k)
        with torch.device("meta"):
            assert len(build_darknet(write_cfg(combined)).layers) == layers


def test_two_tasks_repeat_the_route_and_task_block():
    blocks = parse_cfg(yolov3_cfg(80))
    combined, routes = combined_blocks(blocks, [parse_cfg(yolov3_cfg(1)), parse_cfg(yolov3_cfg(2))], 74)
    assert routes == [107, 140] and len(combined) - 1 == 107 + 2 * 33
    assert combined[1 + 140 + (86 - 74)]["layers"] == "-1,61"


def test_sweep_fractions_match_the_paper():
    base = sio.load("zoo:yolov3")  # 416x416, counted on the meta device
    rep = sweep(base, [], sorted(PAPER))
    for row in rep.sweep:
        w, f = PAPER[row.at]
        assert row.saved_fraction.params == pytest.approx(w, abs=0.002), row
        assert row.saved_fraction.macs == pytest.approx(f, abs=0.002), row


# ------------------------------------------------------------------ the surgery


def test_yolov3_share_at_74_reproduces_both_heads(yolo):
    base, task = yolo
    net, rep = share(base, [task], 74)
    assert rep.representation == "darknet" and rep.layers == 140 and len(net.module.layers) == 140
    assert [h.outputs for h in rep.heads] == [3, 3]
    for h in rep.heads:
        assert h.layers_equal and h.max_rel <= 1e-5
    assert rep.cut_edges == ((36, 98), (61, 86), (74, 75))
    x = torch.randn(1, 3, 128, 128)
    out = _outs(net.module, x)
    _same(out[:3], _outs(base.module, x), 1e-5)
    _same(out[3:], _outs(task.module, x), 1e-5)
    # savings: the combined model holds the shared layers once
    assert rep.params.combined == rep.params.separate - rep.shared["params"]
    assert rep.macs.combined == rep.macs.separate - rep.shared["macs"]
    assert rep.saved_fraction.params == pytest.approx(0.655, abs=0.002)
    assert rep.saved_fraction.macs == pytest.approx(0.744, abs=0.002)
    # the inputs are untouched and the checkpoint needs no replay
    assert net.arch.kind == "darknet" and net.recipe == () and base.module is not net.module


def test_share_at_73_with_a_task_retrained_from_74(yolo):
    base, task = yolo  # layers 0..74 equal, so 0..73 are too
    net, rep = share(base, [task], 73)
    assert rep.layers == 141 and all(h.max_rel <= 1e-5 for h in rep.heads)


def test_tiny_two_tasks_outputs_in_order(tiny):
    base, task = tiny
    other, _ = retarget(base, 13, 3, seed=2, anchors="10,14,23,27,37,58,81,82,135,169,344,319")
    net, rep = share(base, [task, other], 13)
    assert rep.layers == 24 + 2 * 11 and [h.outputs for h in rep.heads] == [2, 2, 2]
    x = torch.randn(2, 3, 128, 128)
    out = _outs(net.module, x)
    assert [o.shape[1] for o in out] == [255, 255, 18, 18, 24, 24]
    _same(out[4:], _outs(other.module, x), 1e-5)


def test_resnet18_two_fc_heads_share_the_last_pre_fc_layer(tmp_path):
    base = sio.load("zoo:resnet18:num_classes=10", input_shape=(3, 64, 64))
    t1, _ = retarget(base, "flatten", 5, seed=1)
    t2, _ = retarget(base, "flatten", 3, seed=2)
    net, rep = share(base, [t1, t2], "flatten")
    assert rep.representation == "fx" and [h.outputs for h in rep.heads] == [1, 1, 1]
    names = [l.name for l in layer_graph(net.module).layers]
    assert names[-3:] == ["base.fc", "heads.0.fc", "heads.1.fc"]
    assert rep.params.combined == base.params + (512 * 5 + 5) + (512 * 3 + 3)
    x = torch.randn(2, 3, 64, 64)
    out = _outs(net.module, x)
    assert [tuple(o.shape) for o in out] == [(2, 10), (2, 5), (2, 3)]
    _same(out[1:2], _outs(t1.module, x), 1e-5)
    # a pickle-free checkpoint that replays the share step structurally
    p = sio.save(net, tmp_path / "shared.pt")
    raw = torch.load(p, weights_only=True)
    assert raw["recipe"][0]["op"] == "share" and raw["recipe"][0]["args"]["at"] == rep.at
    back = sio.load(str(p))
    _same(_outs(back.module, x), out)


CLASSIFIER = """
[net]
channels=3
height=32
width=32

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[avgpool]

[convolutional]
filters=10
size=1
stride=1
pad=1
activation=linear

[softmax]
groups=1
"""


def test_darknet_classifiers_share_as_an_fx_graph(tmp_path):
    (tmp_path / "cls.cfg").write_text(CLASSIFIER)
    base = sio.load(str(tmp_path / "cls.cfg"))
    task, rep = retarget(base, 3, 4, seed=0)  # no yolo head: the last conv is resized by a replayable step
    assert rep.how == "replay"
    net, rep = share(base, [task], 3)
    assert rep.representation == "fx" and [h.outputs for h in rep.heads] == [1, 1]
    x = torch.randn(2, 3, 32, 32)
    out = _outs(net.module, x)
    assert [tuple(o.shape) for o in out] == [(2, 10, 1, 1), (2, 4, 1, 1)]
    _same(out, _outs(base.module, x) + _outs(task.module, x), 1e-6)
    back = sio.load(str(sio.save(net, tmp_path / "s.pt")))
    _same(_outs(back.module, x), out)
    with pytest.raises(SurgeryError, match="Darknet detectors"):
        share(base, [task], 3, darknet=True)


def test_darknet_save_load_round_trip(tiny, tmp_path):
    base, task = tiny
    net, _ = share(base, [task], 13)
    back = sio.load(str(sio.save(net, tmp_path / "s.pt")))
    x = torch.randn(1, 3, 128, 128)
    _same(_outs(back.module, x), _outs(net.module, x))


def test_a_diverged_task_is_refused_then_allowed(tiny):
    base, task = tiny
    moved = task.clone_module()
    with torch.no_grad():
        moved.layers[4].conv.weight.mul_(1.05)
    diverged = task.evolve(moved, source="moved")
    with pytest.raises(DivergedError, match="--allow-diverged") as e:
        share(base, [diverged], 13)
    (d,) = [h for h in e.value.heads if not h.layers_equal][0].diverged_layers
    assert d.index == 4 and d.weight_rel == pytest.approx(0.05, rel=0.05)
    net, rep = share(base, [diverged], 13, allow_diverged=True)
    assert rep.heads[0].max_abs == 0 and not rep.heads[1].layers_equal
    # how far the head moved: on BASE's layers 0..13 it computes what the unmoved task computes
    from surgery.core.verify import compare

    moved = compare(diverged.module, task.module, base.input_shape, probes=2, batch=1)
    assert moved.max_rel > 1e-3 and rep.heads[1].max_abs == pytest.approx(moved.max_abs, rel=1e-4)


@pytest.mark.parametrize("at, msg", [(200, "does not exist"), (23, "last layer"), (17, "inside a head"),
                                     ("layers.99", "no layer named")])
def test_bad_cut_points(tiny, at, msg):
    base, task = tiny
    with pytest.raises(SurgeryError, match=msg):
        plan_cut(base, [task], at)


def test_different_backbones_are_refused(tiny):
    base, _ = tiny
    with pytest.raises(SurgeryError, match=r"layer 0 .*conv.weight of shape \[32, 3, 3, 3\].*\[16, 3, 3, 3\]: "
                                           "the backbones differ in width"):
        plan_cut(base, [sio.load(YOLO)], 5)  # tiny's first conv has 16 filters, YOLOv3's 32
    narrow = sio.load("zoo:resnet18:num_classes=10")
    wide = sio.load("zoo:resnet34:num_classes=10")
    with pytest.raises(SurgeryError, match="does not have"):
        plan_cut(narrow, [wide], 40)


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from conftest import run_cli

    d = tmp_path_factory.mktemp("share")
    res = run_cli("retarget", TINY, "--at", "13", "--classes", "1", "--seed", "1", "-o", d / "text.pt")
    assert res.code == 0, res.err
    return d


def _one_line_error(res, *needles):
    assert res.code == 2, (res.code, res.out, res.err)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_share_darknet_output_loads_back(cli, tiny_files):
    d = tiny_files
    res = cli("share", "--at", "13", TINY, d / "text.pt", "-o", d / "both.pt", "--darknet", d / "both.cfg", "--json")
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["at"] == 13 and rep["output"] == str(d / "both.pt") and rep["layers"] == 35
    assert [h["layers_equal"] for h in rep["heads"]] == [True, True]
    assert all(h["verify"]["max_abs"] <= 1e-5 for h in rep["heads"])
    assert rep["darknet"] == {"output": str(d / "both.cfg"), "weights": str(d / "both.weights")}
    # the savings, from the layer modules and the conv formula (not from the cost analyzer)
    base_mod = sio.load(TINY).module
    shared_p = sum(p.numel() for l in base_mod.layers[:14] for p in l.parameters())
    total_p = sum(p.numel() for p in base_mod.parameters())
    conv_macs = [l.conv.weight[0].numel() * l.out_shape[0] * l.out_shape[1] * l.out_shape[2]
                 if hasattr(l, "conv") else 0 for l in base_mod.layers]
    assert rep["shared"] == {"params": shared_p, "macs": sum(conv_macs[:14])}
    assert rep["saved_fraction"]["params"] == pytest.approx(shared_p / total_p, rel=1e-9)
    assert rep["saved_fraction"]["macs"] == pytest.approx(sum(conv_macs[:14]) / sum(conv_macs), rel=1e-9)
    sep, comb = rep["totals"]["separate"], rep["totals"]["combined"]
    assert comb["params"] == sep["params"] - shared_p and comb["macs"] == sep["macs"] - sum(conv_macs[:14])
    x = torch.randn(1, 3, 128, 128)
    pt = sio.load(str(d / "both.pt"))
    dk = load_darknet(d / "both.cfg", d / "both.weights").eval()
    assert len(dk.layers) == 35
    _same(_outs(dk, x), _outs(pt.module, x))
    base, task = sio.load(TINY), sio.load(str(d / "text.pt"))
    _same(_outs(pt.module, x), _outs(base.module, x) + _outs(task.module, x), 1e-5)
    info = cli("info", d / "both.pt", "--json").json()
    assert info["output_shapes"] == [[255, 4, 4], [255, 8, 8], [18, 4, 4], [18, 8, 8]]


def test_cli_sweep_prints_the_table_and_writes_nothing(cli, tmp_path):
    res = cli("share", "--sweep", "40,48,64,73", "zoo:yolov3", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rows = res.json()["sweep"]
    assert [r["at"] for r in rows] == [40, 48, 64, 73]
    for r in rows:
        w, f = PAPER[r["at"]]
        assert r["saved_fraction"]["params"] == pytest.approx(w, abs=0.002)
        assert r["saved_fraction"]["macs"] == pytest.approx(f, abs=0.002)
    assert list(tmp_path.iterdir()) == []
    table = cli("share", "--sweep", "73", "zoo:yolov3")
    assert table.code == 0 and "0.655" in table.out and "0.744" in table.out


@pytest.mark.parametrize("at, needle", [("200", "does not exist"), ("17", "inside a head")])
def test_cli_bad_cut_exits_2_and_writes_nothing(cli, tiny_files, tmp_path, at, needle):
    res = cli("share", "--at", at, TINY, tiny_files / "text.pt", "-o", tmp_path / "o.pt",
              "--darknet", tmp_path / "o.cfg")
    _one_line_error(res, needle)
    assert list(tmp_path.iterdir()) == []


def test_cli_different_widths_exit_2(cli, tmp_path):
    blocks = parse_cfg(sio.load(TINY).module.cfg_text())
    blocks[1]["filters"] = "8"
    blocks[3]["filters"] = "16"
    (tmp_path / "narrow.cfg").write_text(write_cfg(blocks))
    res = cli("share", "--at", "13", TINY, tmp_path / "narrow.cfg", "-o", tmp_path / "o.pt")
    _one_line_error(res, "differ in width", "layer 0")
    assert not (tmp_path / "o.pt").exists()


def test_cli_diverged_task_needs_allow_diverged(cli, tiny_files, tmp_path):
    task = sio.load(str(tiny_files / "text.pt"))
    with torch.no_grad():
        task.module.layers[2].conv.weight.add_(0.01)
    sio.save(task, tmp_path / "moved.pt")
    res = cli("share", "--at", "13", TINY, tmp_path / "moved.pt", "-o", tmp_path / "o.pt")
    _one_line_error(res, "--allow-diverged", "layer 2")
    assert "weight median" in res.out and not (tmp_path / "o.pt").exists()
    res = cli("share", "--at", "13", TINY, tmp_path / "moved.pt", "-o", tmp_path / "o.pt", "--allow-diverged",
              "--json")
    assert res.code == 0, res.err
    heads = res.json()["heads"]
    assert heads[1]["layers_equal"] is False and heads[1]["moved"]["max_abs"] > 0 and "verify" not in heads[1]
    assert [d["index"] for d in heads[1]["diverged_layers"]] == [2]


def test_cli_headline_command_writes_a_named_default_output(cli, tiny_files, tmp_path):
    """`surgery share --at K base.pt text.pt`, typed exactly so: runs, verifies, writes base-text@K.pt."""
    import shutil

    shutil.copy(tiny_files / "text.pt", tmp_path / "text.pt")
    sio.save(sio.load(TINY), tmp_path / "base.pt")
    res = cli("share", "--at", "13", "base.pt", "text.pt", cwd=tmp_path)
    assert res.code == 0, res.err
    assert "every head reproduces its source model" in res.out
    assert res.err.strip().splitlines()[-1] == "wrote base-text@13.pt" and "wrote" not in res.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-text@13.pt", "base.pt", "text.pt"]
    stamp = (tmp_path / "base-text@13.pt").stat().st_mtime_ns
    again = cli("share", "--at", "13", "base.pt", "text.pt", cwd=tmp_path)
    _one_line_error(again, "base-text@13.pt", "--force")
    assert (tmp_path / "base-text@13.pt").stat().st_mtime_ns == stamp
    assert cli("share", "--at", "13", "base.pt", "text.pt", "--force", "--json", cwd=tmp_path).json()["output"] == \
        "base-text@13.pt"


def test_cli_usage_errors(cli, tmp_path):
    _one_line_error(cli("share", TINY, TINY, "-o", tmp_path / "o.pt"), "--at")
    _one_line_error(cli("share", "--sweep", "13", TINY, "-o", tmp_path / "o.pt"), "--sweep")


@pytest.mark.slow
def test_cli_onnx_export(cli, tiny_files, tmp_path):
    res = cli("share", "--at", "13", TINY, tiny_files / "text.pt", "-o", tmp_path / "o.pt",
              "--onnx", tmp_path / "o.onnx", "--json")
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["onnx"]["output"] == str(tmp_path / "o.onnx") and rep["onnx"]["verify"]["max_rel"] <= 1e-4
    import onnx

    graph = onnx.load(str(tmp_path / "o.onnx")).graph
    assert [o.name for o in graph.output] == ["head0_out0", "head0_out1", "head1_out0", "head1_out1"]
    assert [i.name for i in graph.input] == ["input"] and graph.input[0].type.tensor_type.shape.dim[0].dim_param
