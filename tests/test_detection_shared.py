"""One head of a shared multi-head detector (`surgery share`), in both representations (one
Darknet net; the fx graph of base + heads): its outputs and own layers are found, training it
(`train --head N`) leaves every other tensor bit-identical, and `eval --head N` gives exactly the
separate model's mAP and detections on the same images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.detect.evaluate import evaluate_detectors
from surgery.detect.shared import head_frozen, pick_head, shared_heads
from surgery.retarget import retarget
from surgery.share import share

CFG = Path(__file__).parent / "data" / "detect" / "text-yolo-64.cfg"
AT = 4  # text-yolo-64: 0 conv, 1 pool, 2 conv, 3 pool, 4 conv | 5 pool, 6 conv, 7 conv, 8 yolo
FAST = ["--batch", "4", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from surgery.datasets.synth_text import write_synth_text

    root = tmp_path_factory.mktemp("shared")
    write_synth_text(root / "text", n_train=8, n_val=4, size=64, seed=1, max_words=3)
    base = sio.load(str(CFG))
    task, _ = retarget(base, AT, 1, seed=7)
    sio.save(base, root / "base.pt")
    sio.save(task, root / "task.pt")
    for darknet in (True, False):
        combined, _ = share(base, [task], AT, darknet=darknet)
        sio.save(combined, root / f"shared-{'darknet' if darknet else 'fx'}.pt")
    return root


# the module names each head owns, by the layout of each representation (surgery/share): Darknet:
# base layers 0..8, then [route] at 9 and the task's layers 5..8 as 10..13; fx: base.layers.*, heads.0.*
OWN = {"darknet": {0: ("layers.5.", "layers.6.", "layers.7.", "layers.8."),
                   1: ("layers.9.", "layers.10.", "layers.11.", "layers.12.", "layers.13.")},
       "fx": {0: ("base.layers.5.", "base.layers.6.", "base.layers.7.", "base.layers.8."), 1: ("heads.0.",)}}


@pytest.mark.parametrize("rep", ["darknet", "fx"])
def test_heads_outputs_and_own_layers(work, rep):
    net = sio.load(str(work / f"shared-{rep}.pt"))
    heads = shared_heads(net)
    assert [(h.index, h.source, h.outputs, h.classes) for h in heads] == [
        (0, str(CFG), (0, 1), 1), (1, f"retarget({CFG}, at={AT}, classes=1)", (1, 2), 1)]
    names = {n for n, _ in net.module.named_parameters()}
    for h in heads:
        frozen, layers, params = head_frozen(net, h)
        trained = {n for n in names if not n.startswith(tuple(f"{f}." for f in frozen))}
        assert trained == {n for n in names if n.startswith(OWN[rep][h.index])} and trained
        assert set(range(AT + 1)) <= set(layers) and not set(layers) & set(h.layers)
        assert params == sum(p.numel() for n, p in net.module.named_parameters() if n not in trained)


@pytest.mark.parametrize("rep, head", [("darknet", 1), ("fx", 1), ("fx", 0)])
def test_training_one_head_leaves_everything_else_bit_identical(cli, work, tmp_path, rep, head):
    src = work / f"shared-{rep}.pt"
    res = cli("train", src, "--head", str(head), "--data", work / "text", "--steps", "3", "--lr", "1e-2", *FAST,
              "-o", tmp_path / "t.pt", "--json")
    assert res.code == 0, res.err
    j = res.json()
    assert j["steps"] == 3 and set(range(AT + 1)) <= set(j["frozen_layers"])
    before = sio.load(str(src)).module.state_dict()
    after = sio.load(str(tmp_path / "t.pt"))
    assert after.recipe[-1].op == "train" and after.recipe[-1].args["head"] == head
    after = after.module.state_dict()
    assert before.keys() == after.keys()
    own = OWN[rep][head]
    for k in before:  # weights, biases and BatchNorm statistics alike
        if not k.startswith(own):
            assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(own) and k.endswith("weight"))


@pytest.fixture(scope="module")
def trained(work):
    """The task head trained with the backbone frozen (as the story does), shared with the base:
    the fx representation (a trained model has a recipe)."""
    from conftest import run_cli

    res = run_cli("train", work / "task.pt", "--data", work / "text", "--freeze", f"0-{AT}", "--steps", "40",
                  "--lr", "3e-3", "--no-flip", *FAST, "-o", work / "task-trained.pt")
    assert res.code == 0, res.err
    res = run_cli("share", "--at", str(AT), work / "base.pt", work / "task-trained.pt", "-o", work / "story.pt")
    assert res.code == 0, res.err
    return work


def test_head_map_inside_shared_equals_separate_model(trained):
    w = trained
    shared = sio.load(str(w / "story.pt"))
    task = sio.load(str(w / "task-trained.pt"))
    base = sio.load(str(w / "base.pt"))
    rep = evaluate_detectors([task, shared], w / "text", head=1)
    sep, inside = rep.models
    assert (sep.head, inside.head) == (None, 1)
    assert (inside.map50, inside.map, inside.detections) == (sep.map50, sep.map, sep.detections)
    assert sep.map50 > 0 and sep.detections > 0  # the trained head finds words: a real comparison
    rep0 = evaluate_detectors([base, shared], w / "text", head=0)
    assert (rep0.models[1].map50, rep0.models[1].detections) == (rep0.models[0].map50, rep0.models[0].detections)


def test_eval_head_cli(cli, trained):
    w = trained
    res = cli("eval", w / "task-trained.pt", w / "story.pt", "--head", "1", "--data", w / "text")
    assert res.code == 0, res.err
    rows = [l for l in res.out.splitlines() if "task-trained.pt" in l or "story.pt (head 1)" in l]
    assert len(rows) == 2 and rows[0].split("│")[4:7] == rows[1].split("│")[4:7], rows


def test_refusals(cli, work):
    shared = sio.load(str(work / "shared-fx.pt"))
    with pytest.raises(SurgeryError, match=r"is a shared model with heads 0 \(.*, 1 class\), 1 .*choose one with --head"):
        pick_head(shared, None)
    with pytest.raises(SurgeryError, match="--head 2: .* has heads 0"):
        pick_head(shared, 2)
    with pytest.raises(SurgeryError, match="--head 1 picks a head of a shared model"):
        pick_head(sio.load(str(work / "task.pt")), 1)
    res = cli("eval", work / "shared-fx.pt", "--data", work / "text")
    assert res.code == 2 and "choose one with --head N" in res.err and len(res.err.strip().splitlines()) == 1
    res = cli("eval", work / "task.pt", "--head", "1", "--data", work / "text")
    assert res.code == 2 and "none of the models is one" in res.err
    res = cli("train", work / "shared-fx.pt", "--head", "3", "--data", work / "text", "--steps", "1", *FAST,
              "-o", work / "no.pt")
    assert res.code == 2 and "--head 3:" in res.err and not (work / "no.pt").exists()


def test_retarget_a_trained_darknet_detector_keeps_it_darknet(trained):
    """A trained base (a `train` step in its recipe: weights only) retargets as a Darknet cfg:
    every [yolo] head and the conv before it resized, --anchors taken, layers 0..K kept."""
    from surgery.detect.heads import yolo_heads

    src = sio.load(str(trained / "task-trained.pt"))
    assert [s.op for s in src.recipe] == ["train"]
    new, rep = retarget(src, AT, 3, anchors="8,8,16,16,32,32", seed=3)
    assert rep.how == "darknet-cfg" and new.arch.kind == "darknet" and [s.op for s in new.recipe] == ["train"]
    assert [(h.classes, h.anchors) for h in yolo_heads(new.module)] == [(3, ((8, 8), (16, 16), (32, 32)))]
    assert new.module.layers[7].conv.out_channels == 3 * (3 + 5)
    a, b = src.module.state_dict(), new.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if int(k.split(".")[1]) <= AT)
