"""surgery.retarget and the ``surgery retarget`` command: keep layers 0..K, fresh head for N classes."""

from __future__ import annotations

import pytest
import torch

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.retarget import retarget, retarget_blocks
from zoo.darknet import parse_cfg
from zoo.darknet_zoo import yolov3_tiny_cfg

TINY = "zoo:yolov3_tiny:width=128,height=128"
WIDE = "16,8,32,12,48,16,64,20,96,28,128,36"  # six w,h pairs, as yolov3-tiny has


def _layer_state(module, i):
    return {k: v for k, v in module.state_dict().items() if k.startswith(f"layers.{i}.")}


def _equal_layers(a, b, indices):
    for i in indices:
        sa, sb = _layer_state(a, i), _layer_state(b, i)
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


@pytest.fixture(scope="module")
def tiny():
    return sio.load(TINY)


def test_retarget_blocks_resizes_each_head_and_the_conv_before_it():
    blocks, old = retarget_blocks(parse_cfg(yolov3_tiny_cfg()), 2, WIDE)
    assert old == (80, 80)
    heads = [i for i, b in enumerate(blocks) if b["type"] == "yolo"]
    for i in heads:
        assert blocks[i]["classes"] == 2 and blocks[i]["anchors"] == WIDE
        assert blocks[i - 1]["filters"] == 3 * (2 + 5)


def test_zoo_detector_keeps_layers_up_to_k(tiny):
    task, rep = retarget(tiny, 13, 1, seed=1)
    assert rep.how == "zoo" and task.arch.kwargs["classes"] == 1 and task.recipe == ()
    assert _equal_layers(tiny.module, task.module, range(0, 14))
    assert not _equal_layers(tiny.module, task.module, [14])  # reinitialised
    assert rep.reinitialised == (14, 15, 18, 21, 22) and rep.old_classes == (80, 80)
    with torch.no_grad():
        outs = task.module(torch.randn(1, 3, 128, 128))
    assert [o.shape[1] for o in outs] == [18, 18]
    assert tiny.module.layers[15].conv.out_channels == 255  # the input is untouched


def test_seed_decides_the_fresh_layers(tiny):
    a, _ = retarget(tiny, 13, 1, seed=1)
    b, _ = retarget(tiny, 13, 1, seed=1)
    c, _ = retarget(tiny, 13, 1, seed=2)
    assert _equal_layers(a.module, b.module, range(24))
    assert not _equal_layers(a.module, c.module, [14])


def test_without_a_seed_the_fresh_layers_differ_from_a_zoo_built_base(tiny):
    # the zoo builds from seed 0: re-initialising from 0 again copies the base's layer 14 (the
    # random stream diverges at layer 15, whose conv is resized for the new class count)
    same, rep0 = retarget(tiny, 13, 1, seed=0)
    assert _equal_layers(tiny.module, same.module, [14]) and not _equal_layers(tiny.module, same.module, [18])
    assert rep0.unchanged == ("layers.14.conv.weight",)  # BN constants (unit variance...) are not reported
    task, rep = retarget(tiny, 13, 1)  # no seed: derived, reproducible, not the zoo's
    assert rep.seed_derived and rep.seed != 0 and rep.unchanged == ()
    assert not any(_equal_layers(tiny.module, task.module, [i]) for i in (14, 18, 21))
    again, rep2 = retarget(tiny, 13, 1)
    assert rep2.seed == rep.seed and _equal_layers(task.module, again.module, range(24))
    _, other = retarget(tiny, 13, 2)
    assert other.seed != rep.seed


def test_darknet_cfg_model_gets_a_rewritten_cfg(tmp_path, tiny):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(yolov3_tiny_cfg(width=128, height=128))
    net = sio.load(str(cfg))
    task, rep = retarget(net, 12, 2, anchors=WIDE, seed=0)
    assert rep.how == "darknet-cfg" and task.arch.kind == "darknet"
    blocks = parse_cfg(task.arch.cfg)
    assert blocks[1 + 16]["classes"] == "2" and blocks[1 + 15]["filters"] == "21"
    assert blocks[1 + 23]["anchors"] == WIDE
    assert _equal_layers(net.module, task.module, range(13))
    back = sio.load(str(sio.save(task, tmp_path / "task.pt")))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for p, q in zip(back.module(x), task.module(x)):
            assert torch.equal(p, q)


def test_resnet_gets_a_new_fc(tmp_path):
    base = sio.load("zoo:resnet18:num_classes=10")
    task, rep = retarget(base, "flatten", 4, seed=3)
    assert rep.how == "zoo" and task.arch.kwargs["num_classes"] == 4
    assert torch.equal(task.module.layer4[1].conv2.weight, base.module.layer4[1].conv2.weight)
    assert task.module.fc.out_features == 4


def test_a_model_with_a_recipe_is_retargeted_by_a_replayable_step(tmp_path):
    from surgery.fold import fold

    base = sio.load("zoo:resnet18:num_classes=10", input_shape=(3, 64, 64))
    folded, _ = fold(base, only=("bn",))
    task, rep = retarget(folded, "flatten", 3, seed=0)
    assert rep.how == "replay" and [s.op for s in task.recipe] == ["fold", "retarget"]
    back = sio.load(str(sio.save(task, tmp_path / "t.pt")))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back.module(x), task.module(x))
        assert back.module(x).shape == (2, 3)


@pytest.mark.parametrize("at, msg", [(15, "inside a head"), (17, "inside a head"), (99, "does not exist")])
def test_bad_cut_points(tiny, at, msg):
    with pytest.raises(SurgeryError, match=msg):
        retarget(tiny, at, 1)


def test_bad_arguments(tiny):
    with pytest.raises(SurgeryError, match="at least one class"):
        retarget(tiny, 13, 0)
    with pytest.raises(SurgeryError, match="anchors"):
        retarget(tiny, 13, 1, anchors="10,14,23")


def test_cli_retarget(cli, tmp_path):
    res = cli("retarget", TINY, "--at", "13", "--classes", "1", "--seed", "1", "-o", tmp_path / "t.pt", "--json")
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["at"] == 13 and rep["classes"] == 1 and rep["output"] == str(tmp_path / "t.pt")
    assert rep["arch"] == "zoo:yolov3_tiny:width=128,height=128,classes=1" and rep["model"] == TINY
    assert rep["seed"] == 1 and rep["seed_derived"] is False and rep["unchanged"] == []
    bad = cli("retarget", TINY, "--at", "15", "--classes", "1", "-o", tmp_path / "u.pt")
    assert bad.code == 2 and "inside a head" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert not (tmp_path / "u.pt").exists()


def test_cli_default_output_and_derived_seed(cli, tmp_path):
    res = cli("retarget", TINY, "--at", "13", "--classes", "1", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.err.strip().splitlines()[-1] == "wrote yolov3_tiny-1class@13.pt" and "(derived)" in res.out
    assert "wrote" not in res.out
    assert [p.name for p in tmp_path.iterdir()] == ["yolov3_tiny-1class@13.pt"]
    again = cli("retarget", TINY, "--at", "13", "--classes", "1", cwd=tmp_path)
    assert again.code == 2 and "--force" in again.err
    warned = cli("retarget", TINY, "--at", "13", "--classes", "1", "--seed", "0", "-o", "z.pt", cwd=tmp_path)
    assert warned.code == 0 and "1 re-initialised tensor(s) equal BASE's (layers.14.conv.weight)" in warned.err
