"""Darknet's hierarchical softmax (``[softmax] tree=FILE``, YOLO9000's 9k.tree): groups as tree.c
``read_tree`` forms them, a softmax per group as ``softmax_tree``; the groups travel with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_cli
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from zoo.darknet import build_darknet, load_darknet
from zoo.darknet.layers import tree_group_sizes

# 9 nodes: root group {0,1}, children of 0 {2,3,4}, children of 1 {5,6}, children of 3 {7,8}
TREE = "animal -1\nthing -1\ndog 0\ncat 0\nbird 0\nrock 1\nchair 1\nrobin 3\nowl 3\n"
GROUPS = [2, 3, 2, 2]
CFG = """[net]
channels=3
height=6
width=6

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=9
size=3
stride=2
pad=1
activation=linear

[avgpool]

[softmax]
groups=1
temperature=2
tree=small.tree
"""


def _reference(x: np.ndarray, sizes, temp: float) -> np.ndarray:
    """A straight port of Darknet's softmax_tree loops (blas.c softmax, stride 1)."""
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        count = 0
        for n in sizes:
            v = x[b, count:count + n]
            if n:
                largest = v.max()
                e = np.exp(v / temp - largest / temp)
                out[b, count:count + n] = e / e.sum()
            count += n
    return out


def _write(tmp_path, tree=TREE):
    (tmp_path / "net.cfg").write_text(CFG)
    if tree is not None:
        (tmp_path / "small.tree").write_text(tree)
    return tmp_path / "net.cfg"


def test_groups_as_read_tree_forms_them():
    assert tree_group_sizes(TREE) == GROUPS
    assert tree_group_sizes("a 5\nb 5\nc -1\n") == [0, 2, 1]  # Darknet opens with an empty group here
    assert tree_group_sizes("a\n\nb 0") == [2, 1]  # no parent (or a blank line) is parent -1


def test_outputs_equal_a_per_group_softmax(tmp_path, monkeypatch):
    cfg = _write(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # found next to the cfg, not via the cwd
    net = load_darknet(cfg).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6) * 4
    with torch.no_grad():
        pre = net.layers[2](net.layers[1](net.layers[0](x)))
        y = net(x)[0]
    ref = _reference(pre.reshape(2, -1).double().numpy(), GROUPS, 2.0)
    np.testing.assert_allclose(y.reshape(2, -1).double().numpy(), ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(y.reshape(2, -1)[:, :2].sum(1), torch.ones(2))


def test_checkpoint_reloads_without_the_tree_file(tmp_path, monkeypatch):
    cfg = _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    net = sio.load(str(cfg))
    ckpt = sio.save(net, tmp_path / "net.pt")
    (tmp_path / "small.tree").unlink()
    back = sio.load(str(ckpt))
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(net.module(x)[0], back.module(x)[0])
    # Darknet export writes the tree= line as it was, not the inlined groups
    text = net.module.cfg_text(darknet=True)
    assert "tree=small.tree" in text and "surgery_tree_groups" not in text


def test_export_darknet_keeps_the_tree_line(tmp_path):
    cfg = _write(tmp_path)
    r = run_cli("export", str(cfg), "--darknet", str(tmp_path / "out.cfg"), cwd=tmp_path)
    assert r.code == 0, r.err
    text = (tmp_path / "out.cfg").read_text()
    assert "tree=small.tree" in text and "surgery_tree_groups" not in text
    assert load_darknet(tmp_path / "out.cfg") is not None  # the tree file beside it is found again


def test_missing_tree_file_is_one_line(tmp_path):
    cfg = _write(tmp_path, tree=None)
    with pytest.raises(SurgeryError, match="small.tree"):
        build_darknet(CFG)
    r = run_cli("info", str(cfg), cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "small.tree" in r.err and "tree file" in r.err, r.err


def test_tree_larger_than_the_inputs_is_refused(tmp_path):
    _write(tmp_path, tree=TREE + "x 2\n")
    with pytest.raises(SurgeryError, match="10 nodes but the layer has only 9 inputs"):
        load_darknet(tmp_path / "net.cfg")
