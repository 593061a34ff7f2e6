"""Darknet as Darknet users have it: partial ``.weights`` files (``darknet53.conv.74``), the
cutoff given or inferred from the file size, and a ``.cfg`` without weights (seeded random).

Expected values come from Darknet's file layout written out by hand (a convolutional layer
with batch_normalize=1 stores 4 x filters values + filters x in x size^2 weights, parser.c
``load_convolutional_weights``), the published size of ``darknet53.conv.74`` (162,482,580
bytes), and fresh builds seeded with ``torch.manual_seed(0)``.
"""

from __future__ import annotations

import io
import shutil

import pytest
import torch

from conftest import shared_dir
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from zoo.darknet import build_darknet, parse_cfg, write_weights
from zoo.darknet.weights import load_weights

DATA = shared_dir() / "data" / "darknet"
HEADER = 20  # int32 major, minor, revision + uint64 seen (version 0.2)

# yolov3-tiny: layer 0 conv 3->16 3x3 BN, 1 maxpool, 2 conv 16->32 3x3 BN, 3 maxpool, 4 conv 32->64 ...
TINY_CUT = 4
TINY_CUT_BYTES = HEADER + 4 * ((4 * 16 + 16 * 3 * 9) + (4 * 32 + 32 * 16 * 9))  # = 20948
DARKNET53_CONV74_BYTES = 162_482_580  # pjreddie's darknet53.conv.74 download


def _one_line_error(res, *needles):
    assert res.code == 2, (res.code, res.out, res.err)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _seeded(text: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_darknet(text)


def _layer_state(net, i: int) -> dict:
    return {k: v for k, v in net.layers[i].state_dict().items() if v.is_floating_point()}


def _assert_layer_equal(a, i: int, b, j: int | None = None) -> None:
    sa, sb = _layer_state(a, i), _layer_state(b, i if j is None else j)
    assert sa.keys() == sb.keys(), i
    for k in sa:
        assert torch.equal(sa[k], sb[k]), (i, k)


def _conv_indices(text: str) -> list[int]:
    return [i for i, b in enumerate(parse_cfg(text)[1:]) if b["type"] == "convolutional"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """yolov3-tiny.cfg alone (no weights), full.cfg (the same) with a full .weights written by
    the tool from seed 1 (not the loader's init), and that file cut after layer 3, as Darknet's
    ``partial ... 4`` writes it."""
    d = tmp_path_factory.mktemp("tiny")
    shutil.copy(DATA / "yolov3-tiny.cfg", d / "tiny.cfg")
    shutil.copy(DATA / "yolov3-tiny.cfg", d / "full.cfg")
    write_weights(_seeded((d / "tiny.cfg").read_text(), seed=1), d / "full.weights")
    (d / "part.weights").write_bytes((d / "full.weights").read_bytes()[:TINY_CUT_BYTES])
    return d


def test_cfg_without_weights_is_seeded_random_and_said(tiny, cli):
    d = tiny
    net = sio.load(str(d / "tiny.cfg"))
    assert net.metadata["random_weights"] is True and net.metadata["seed"] == 0 and net.metadata["weights"] is None
    ref = _seeded((d / "tiny.cfg").read_text())
    for i in range(len(ref.layers)):
        _assert_layer_equal(net.module, i, ref)
    info = cli("info", d / "tiny.cfg")
    assert info.code == 0 and "none (random init, seed 0)" in info.out and info.err == ""


def test_commands_writing_a_random_cfg_say_so(tiny, cli, tmp_path):
    d = tiny
    note = f"note: {d / 'tiny.cfg'} has no .weights; its weights are random (seed 0)"
    res = cli("fold", d / "tiny.cfg", "-o", tmp_path / "f.pt")
    assert res.code == 0, res.err
    assert [l for l in res.err.splitlines() if l.startswith("note:")] == [note]
    # two models, one with weights: one note, for the one without
    res = cli("share", "--at", "8", "--allow-diverged", d / "tiny.cfg", d / "full.cfg", "-o", tmp_path / "s.pt")
    assert res.code == 0, res.err
    assert [l for l in res.err.splitlines() if l.startswith("note:")] == [note]


def test_partial_tiny_inferred_from_size(tiny):
    d = tiny
    text = (d / "tiny.cfg").read_text()
    full = sio.load(str(d / "full.cfg")).module
    net = sio.load(str(d / "full.cfg"), weights=str(d / "part.weights"))
    load = net.metadata["weights_load"]
    convs = _conv_indices(text)
    assert load["cutoff"] == TINY_CUT and load["cutoff_inferred"] is True
    assert load["layers_from_file"] == [0, 2]
    assert load["layers_initialised"] == [i for i in convs if i >= TINY_CUT]
    assert net.metadata["random_weights"] is False and net.metadata["seed"] == 0
    ref = _seeded(text)
    for i in range(len(ref.layers)):
        _assert_layer_equal(net.module, i, full if i < TINY_CUT else ref)
    assert not torch.equal(full.layers[4].conv.weight, ref.layers[4].conv.weight)  # the two sides differ


def test_partial_cli_note_json_and_explicit_cutoff(tiny, cli):
    d = tiny
    res = cli("info", d / "full.cfg", "--weights", d / "part.weights", "--json")
    assert res.code == 0, res.err
    load = res.json()["metadata"]["weights_load"]
    assert load["cutoff"] == TINY_CUT and load["cutoff_inferred"] is True and load["layers_from_file"] == [0, 2]
    notes = [l for l in res.err.splitlines() if l.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "cutoff 4, inferred from its size" in notes[0]
    # a command that fails after loading prints its error alone: the note is held until success
    failed = cli("onion", "run", d / "full.cfg", "--weights", d / "part.weights")
    assert failed.code == 2 and len(failed.err.strip().splitlines()) == 1 and "not an OnionNet cascade" in failed.err
    given = cli("info", d / "full.cfg", "--weights", d / "part.weights", "--weights-cutoff", "4", "--json")
    assert given.code == 0 and given.err == "", given.err
    load = given.json()["metadata"]["weights_load"]
    assert load["cutoff"] == TINY_CUT and load["cutoff_inferred"] is False
    # layer 3 is a maxpool (no weights): cutoff 3 reads the same bytes
    three = sio.load(str(d / "full.cfg"), weights=str(d / "part.weights"), weights_cutoff=3).metadata["weights_load"]
    assert three["cutoff"] == 3 and three["layers_from_file"] == [0, 2] and not three["cutoff_inferred"]
    _one_line_error(cli("info", d / "full.cfg", "--weights", d / "part.weights", "--weights-cutoff", "5"),
                    "part.weights", "layer 4 [convolutional]", "first 5 layers")
    _one_line_error(cli("info", "zoo:resnet18", "--weights-cutoff", "5"), "Darknet .weights")


def test_size_matching_no_prefix_is_refused(tiny, cli, tmp_path):
    d = tiny
    bad = tmp_path / "bad.weights"
    bad.write_bytes((d / "full.weights").read_bytes()[:TINY_CUT_BYTES + 8])
    _one_line_error(cli("info", d / "full.cfg", "--weights", bad), "bad.weights", str(TINY_CUT_BYTES + 8),
                    f"the first 4 layers take {TINY_CUT_BYTES} bytes", "not the weights of any first layers")
    with pytest.raises(SurgeryError, match="not the weights of any first layers"):
        sio.load(str(d / "full.cfg"), weights=str(bad))
    with pytest.raises(SurgeryError, match="cutoff 99 must be a layer count from 0 to 24"):
        load_weights(build_darknet((d / "tiny.cfg").read_text()), d / "part.weights", cutoff=99)


def test_darknet53_conv74_into_yolov3(tmp_path):
    """The usual start of YOLOv3 training: darknet53.conv.74 (darknet53.cfg's layers 0..73) into
    yolov3.cfg. yolov3's layer 74 is a shortcut (no weights), so the largest prefix the file
    fills is 75 layers; layers 0..73 are darknet53's, the rest the seeded init."""
    torch.set_num_threads(1)
    d53 = _seeded((DATA / "darknet53.cfg").read_text(), seed=1)
    part = tmp_path / "darknet53.conv.74"
    assert write_weights(d53, part, cutoff=74) == DARKNET53_CONV74_BYTES
    shutil.copy(DATA / "yolov3.cfg", tmp_path / "yolov3.cfg")
    net = sio.load(str(tmp_path / "yolov3.cfg"), weights=str(part))
    load = net.metadata["weights_load"]
    convs = _conv_indices((DATA / "yolov3.cfg").read_text())
    assert load["cutoff"] == 75 and load["cutoff_inferred"] is True
    assert load["layers_from_file"] == [i for i in convs if i < 74] and len(load["layers_from_file"]) == 52
    ref = _seeded((DATA / "yolov3.cfg").read_text())
    for i in range(len(ref.layers)):
        _assert_layer_equal(net.module, i, d53 if i < 75 else ref)


def test_dontload_layer_takes_no_bytes_of_a_partial_file(tiny):
    """A dontload=1 layer is skipped by load_weights_upto: a partial file for a cfg whose layer 0
    says dontload=1 holds layer 2 alone, and the cutoff is still inferred from its size."""
    d = tiny
    text = (d / "tiny.cfg").read_text().replace("[convolutional]\n", "[convolutional]\ndontload=1\n", 1)
    assert parse_cfg(text)[1]["dontload"] == "1"
    data = (d / "full.weights").read_bytes()
    part = data[:HEADER] + data[HEADER + 4 * (4 * 16 + 16 * 3 * 9):TINY_CUT_BYTES]  # header, layer 2's values
    assert len(part) == HEADER + 4 * (4 * 32 + 32 * 16 * 9)
    net = _seeded(text, seed=3)
    before = _layer_state(net, 0)
    rep = load_weights(net, io.BytesIO(part), cutoff="infer")
    assert rep.cutoff == TINY_CUT and rep.inferred and rep.from_file == (2,)
    assert 0 in rep.initialised  # the dontload layer keeps its values: reported with the layers past the cutoff
    full = build_darknet((d / "tiny.cfg").read_text())
    load_weights(full, d / "full.weights")
    _assert_layer_equal(net, 2, full)
    assert all(torch.equal(before[k], v) for k, v in _layer_state(net, 0).items())  # layer 0 as built
