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
from zoo.darknet.head_layers import tree_group_sizes

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


# ------------------------------------------------------------------------------------ export: the files beside the cfg

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from zoo.darknet.head_layers import map_entries  # noqa: E402
from zoo.darknet.side_files import tree_text  # noqa: E402

DATA = Path(__file__).parent / "data" / "darknet"
REGION_GROUPS, REGION_MAP = [2, 3, 2, 2], [2, 3, 7, 5]  # tiny.tree (root {animal, thing}, ...) and tiny.map, by hand


def _region_src(d: Path) -> Path:
    d.mkdir()
    for f in ("region-tree.cfg", "tiny.tree", "tiny.map"):
        shutil.copy(DATA / f, d)
    return d / "region-tree.cfg"


def _same_network(src_cfg, out_cfg, expect: dict[str, list[int]]):
    """The written cfg built from its own path (weights beside it) has the source's tensors and the
    expected tree/map values."""
    src = sio.load(str(src_cfg)).module
    back = load_darknet(out_cfg, out_cfg.with_suffix(".weights"))
    for k, v in src.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    last = back.layers[-1]
    assert {k: list(getattr(last, k)) for k in expect} == expect


@pytest.mark.parametrize("kind", ["region", "softmax"])
def test_export_into_another_directory_loads_from_there(tmp_path, monkeypatch, kind):
    from test_json_schema import SECTIONS, check

    if kind == "region":
        src, names, expect = _region_src(tmp_path / "src"), ["tiny.tree", "tiny.map"], {"tree": REGION_GROUPS,
                                                                                        "map": REGION_MAP}
    else:
        (tmp_path / "src").mkdir()
        src, names, expect = _write(tmp_path / "src"), ["small.tree"], {"tree": GROUPS}
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "out" / "x.cfg"
    r = run_cli("export", src, "--darknet", out, "--json", cwd=tmp_path / "elsewhere")
    assert r.code == 0, r.err
    d = r.json()
    assert not check(d, SECTIONS["export"]["fields"])  # side_files as docs/JSON.md says
    side = d["darknet"]["side_files"]
    assert [(f["name"], f["action"], f["path"], f["source"]) for f in side] == [
        (n, "copied", str(tmp_path / "out" / n), str(src.parent / n)) for n in names]
    for n in names:  # the originals, byte for byte
        assert (tmp_path / "out" / n).read_bytes() == (src.parent / n).read_bytes()
    monkeypatch.chdir(tmp_path / "elsewhere")  # an empty working directory: only out/ holds the written cfg's files
    _same_network(src, out, expect)
    # a second export into the same directory finds the files there
    r = run_cli("export", out, "--darknet", tmp_path / "out" / "y.cfg", "--json", cwd=tmp_path / "elsewhere")
    assert r.code == 0, r.err
    assert [f["action"] for f in r.json()["darknet"]["side_files"]] == ["present"] * len(names)


def test_a_checkpoint_without_the_files_gets_them_reconstructed(tmp_path, monkeypatch):
    src = _region_src(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    net = sio.load(str(src))
    ckpt = sio.save(net, tmp_path / "src" / "net.pt")
    (tmp_path / "src" / "tiny.tree").unlink()
    (tmp_path / "src" / "tiny.map").unlink()
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "rt.cfg"
    r = run_cli("export", ckpt, "--darknet", out, cwd=tmp_path)
    assert r.code == 0, r.err
    assert "placeholder node names" in r.err and "wrote out/tiny.tree" not in r.err
    assert f"wrote {tmp_path / 'out' / 'tiny.tree'}: the tree= file of layer 2, written from the model" in r.err
    text = (tmp_path / "out" / "tiny.tree").read_text()
    assert tree_group_sizes(text) == REGION_GROUPS  # as Darknet's read_tree groups it
    assert len(text.splitlines()) == 9 and all(len(l.split()) == 2 for l in text.splitlines())
    assert (tmp_path / "out" / "tiny.map").read_text() == "2\n3\n7\n5\n"
    assert map_entries((tmp_path / "out" / "tiny.map").read_text()) == REGION_MAP
    monkeypatch.chdir(tmp_path / "out")
    back = load_darknet(out, out.with_suffix(".weights"))
    for k, v in net.module.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert back.layers[2].tree == tuple(REGION_GROUPS) and back.layers[2].map == tuple(REGION_MAP)


@pytest.mark.parametrize("sizes", [[2, 3, 2, 2], [1], [5, 1, 1, 4], [0, 2, 1], [0], [9418]])
def test_tree_text_reads_back_to_its_groups(sizes):
    assert tree_group_sizes(tree_text(sizes)) == sizes


def test_tree_text_refuses_groups_read_tree_never_forms():
    with pytest.raises(SurgeryError, match="read_tree"):
        tree_text([2, 0, 1])


def test_a_different_file_beside_the_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny.tree").write_text("x -1\n")  # one group of 1, not the model's
    out = tmp_path / "out" / "rt.cfg"
    r = run_cli("export", DATA / "region-tree.cfg", "--darknet", out, cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "tiny.tree" in r.err and "--force" in r.err and "Traceback" not in r.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny.tree"]
    assert (tmp_path / "out" / "tiny.tree").read_text() == "x -1\n"
    r = run_cli("export", DATA / "region-tree.cfg", "--darknet", out, "--force", cwd=tmp_path)
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "tiny.tree").read_bytes() == (DATA / "tiny.tree").read_bytes()


def test_a_missing_sub_directory_is_refused(tmp_path):
    src = _region_src(tmp_path / "src")
    src.write_text(src.read_text().replace("tree=tiny.tree", "tree=data/tiny.tree"))
    (tmp_path / "src" / "data").mkdir()
    shutil.move(tmp_path / "src" / "tiny.tree", tmp_path / "src" / "data" / "tiny.tree")
    (tmp_path / "out").mkdir()
    r = run_cli("export", src, "--darknet", tmp_path / "out" / "x.cfg", cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "out/data" in r.err and "create it" in r.err, r.err
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "out" / "data").mkdir()
    r = run_cli("export", src, "--darknet", tmp_path / "out" / "x.cfg", cwd=tmp_path)
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "data" / "tiny.tree").read_bytes() == (DATA / "tiny.tree").read_bytes()


def test_side_files_are_taken_back_when_the_enclosing_write_fails(tmp_path, monkeypatch):
    from surgery.export import write_darknet

    src = _region_src(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    net = sio.load(str(src))
    (tmp_path / "out").mkdir()
    outs = [tmp_path / "out" / "x.cfg", tmp_path / "out" / "x.weights", tmp_path / "out" / "x.pt"]
    seen = {}

    def write(tmps):
        rep = write_darknet(net, tmps[0], tmps[1])
        seen["side"] = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
        seen["actions"] = [f.action for f in rep.side_files]
        raise SurgeryError("a later output failed")

    with pytest.raises(SurgeryError, match="later output"):
        sio.atomic_write(outs, write)
    assert seen == {"side": ["tiny.map", "tiny.tree"], "actions": ["copied", "copied"]}  # placed for the read-back
    assert list((tmp_path / "out").iterdir()) == []  # and taken back with the rest
