"""Joint training of OnionNet cascades (§3.2): which stage each loss term reaches, the binary
hinge, S1-class maps, the option checks, short real runs on the stereo patch pairs, and joint
training of a split digits CNN improving its held-out loss and accuracy (measured here)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import folder_images
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.net import ArchSpec, Net
from surgery.datasets.stereo_patches import write_stereo_patches
from surgery.onion import s1classes
from surgery.onion.train import JointConfig, joint_train
from surgery.train.losses import hinge, joint_terms
from surgery.train.loop import TrainConfig
from zoo.onion import from_monolithic


class _Chain(nn.Module):
    def __init__(self, outputs: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 8, 5, stride=2), nn.ReLU(),  # 16 -> 6
                                      nn.Conv2d(8, 8, 3), nn.ReLU(),  # 4
                                      nn.Conv2d(8, outputs, 4))  # 1

    def forward(self, x):
        return self.features(x).flatten(1)


def tiny_cascade(outputs: int = 1, s1_classes: int = 2):
    torch.manual_seed(0)
    return from_monolithic(_Chain(outputs), (4, 4), s1_classes)


def tiny_net(module) -> Net:
    return Net(module, ArchSpec("zoo", "tiny"), (2, 16, 16), source="tiny")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stereo") / "pairs"
    write_stereo_patches(out, n_train=32, n_val=16, seed=0)
    return out


# ----------------------------------------------------------------------------- gradients


def _grads(loss, params):
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in gs]


@pytest.mark.parametrize("kind,outputs", [("hinge", 1), ("ce", 3), ("kd", 3)])
def test_gradients_reach_the_right_stages(kind, outputs):
    c = tiny_cascade(outputs)
    x = torch.randn(6, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1, 0, 1, 1]) if kind == "hinge" else torch.tensor([0, 1, 2, 0, 1, 2])
    teacher = torch.randn(6, outputs, generator=torch.Generator().manual_seed(2)) if kind == "kd" else None
    s1_of = torch.tensor([0, 1] if outputs == 1 else [0, 1, 1])
    s1_logits, s2_out = c(x)
    terms = joint_terms(s1_logits, s2_out, alpha=0.3, s2_kind=kind, s1_of_class=s1_of,
                        labels=None if kind == "kd" else labels, teacher_out=teacher)
    s1_hidden = [p for blk in list(c.s1)[:-1] for p in blk.parameters()]
    s1_last = list(c.s1[-1].parameters())
    s2 = list(c.s2.parameters())
    g1 = _grads(terms["s1"], s1_hidden + s1_last + s2)
    g2 = _grads(terms["s2"], s1_hidden + s1_last + s2)
    a, b = len(s1_hidden), len(s1_hidden) + len(s1_last)
    assert all(g1[:a]) and all(g2[:a])  # S1 hidden layers: both losses
    assert all(g1[a:b]) and not any(g2[a:b])  # S1's classifier: L_S1 only
    assert not any(g1[b:]) and all(g2[b:])  # S2: L_S2 only


def test_alpha_weights_the_terms():
    c = tiny_cascade()
    x = torch.randn(4, 2, 16, 16)
    y = torch.tensor([0, 1, 0, 1])
    s1, s2 = c(x)
    t = joint_terms(s1, s2, alpha=0.25, s2_kind="hinge", s1_of_class=torch.tensor([0, 1]), labels=y)
    assert torch.allclose(t["s1"], 0.25 * nn.functional.cross_entropy(s1, y))
    assert torch.allclose(t["s2"], 0.75 * hinge(s2, y))


def test_hinge_closed_form():
    s = torch.tensor([[2.0], [0.5], [-1.0], [0.25]])
    y = torch.tensor([1, 1, 0, 0])
    # max(0, 1 - y*s): 0, 0.5, 0, 1.25 -> mean 0.4375
    assert float(hinge(s, y)) == pytest.approx(0.4375)


# ----------------------------------------------------------------------------- S1-class maps


def test_binary_map_first_class_is_rejected():
    m = s1classes.binary(("background", "car", "person"), 2)
    assert m.of_class == (0, 1, 1) and m.default_interest() == (1,)
    with pytest.raises(SurgeryError, match="2 S1-classes"):
        s1classes.binary(("a", "b"), 3)


def test_json_map(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"a": 0, "b": 2, "c": 1}))
    m = s1classes.from_json(p, ("a", "b", "c"), 3)
    assert m.of_class == (0, 2, 1) and m.default_interest() == (0, 1, 2)
    for bad, msg in (({"a": 0, "b": 1}, "leaves class 'c' out"), ({"a": 0, "b": 1, "c": 3}, "0..2"),
                     ({"a": 0, "b": 1, "c": 1, "z": 0}, "'z'")):
        p.write_text(json.dumps(bad))
        with pytest.raises(SurgeryError, match=msg):
            s1classes.from_json(p, ("a", "b", "c"), 3)


def test_kmeans_groups_similar_class_means():
    # classes 0, 2, 4 respond alike, and 1, 3 alike: two S1-classes, numbered by first appearance
    means = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.9, 0.1, 0], [0, 0.95, 0.05], [0.95, 0, 0.05]])
    m = s1classes.kmeans(means, ("a", "b", "c", "d", "e"), 2)
    assert m.of_class == (0, 1, 0, 1, 0)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5])
def test_alpha_outside_open_interval_refused(alpha):
    with pytest.raises(SurgeryError, match="outside \\(0, 1\\)"):
        JointConfig(data="x", alpha=alpha).validate()


def test_cli_bad_alpha_writes_nothing(cli, pairs, tmp_path):
    r = cli("onion", "train", "zoo:onion_p", "--data", str(pairs), "--alpha", "1", cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "alpha" in r.err
    assert list(tmp_path.iterdir()) == []


def test_cli_epochs_and_steps_together_refused(cli, pairs, tmp_path):
    """onion train follows heal's rule (one training run module, cli_commands/training_run.py)."""
    r = cli("onion", "train", "zoo:onion_p", "--data", str(pairs), "--epochs", "1", "--steps", "2", cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "--epochs or --steps, not both" in r.err
    assert list(tmp_path.iterdir()) == []


def test_hinge_refused_for_many_outputs(pairs):
    net = tiny_net(tiny_cascade(outputs=3))
    cfg = JointConfig(data=str(pairs), s2_loss="hinge", train=TrainConfig(batch=8, epochs=None, steps=1, workers=0))
    with pytest.raises(SurgeryError, match="hinge"):
        joint_train(net, cfg)


# ----------------------------------------------------------------------------- real runs


def test_joint_training_records_the_map_and_leaves_its_input(pairs):
    c = tiny_cascade()
    before = {k: v.clone() for k, v in c.state_dict().items()}
    net = tiny_net(c)
    cfg = JointConfig(data=str(pairs), train=TrainConfig(batch=8, epochs=None, steps=3, workers=0, lr=1e-2))
    out, rep = joint_train(net, cfg)
    assert rep.s2_loss == "hinge" and rep.s1_map == "binary" and rep.s1_of_class == (0, 1) and rep.steps == 3
    assert rep.train_images == 32 and rep.val_images == 16 and rep.after["images"] == 16
    assert rep.history[-1]["eval"] == rep.after  # measured after every epoch, as heal is
    assert out.recipe[-1].op == "onion_train" and out.metadata["onion_s1_classes"]["of_class"] == [0, 1]
    assert all(torch.equal(v, before[k]) for k, v in c.state_dict().items())  # input untouched


def _held_out(path, digits):
    """(L = 0.5·CE(S1, S1-class) + 0.5·CE(S2, class), S2 accuracy) of a digits cascade on the
    held-out images, by a plain forward of independently decoded images; S1-classes binary: the
    first class ("0") is S1-class 0, every other class S1-class 1."""
    x, y = folder_images(digits / "val")
    with torch.no_grad():
        s1, s2 = sio.load(str(path)).module.eval()(x)
    loss = 0.5 * F.cross_entropy(s1, (y != 0).long()) + 0.5 * F.cross_entropy(s2, y)
    return float(loss), float((s2.argmax(1) == y).float().mean())


@pytest.mark.slow
def test_cli_joint_training_improves_held_out_loss_and_accuracy(cli, tmp_path):
    """`onion split` of a digits CNN, then `onion train` with labels (L_S2 cross entropy over the
    ten digits, L_S1 over binary S1-classes): the held-out joint loss falls, S2's held-out accuracy
    rises, and the report's before/after figures are those of the input and the output."""
    from pathlib import Path

    from surgery.datasets import write_digits

    digits = Path(write_digits(tmp_path / "digits", per_class=4).output)
    r = cli("onion", "split", "zoo:digits_cnn:width=4", "--s1", "2,4,4,8,8", "--s1-classes", "2", "-o", "c.pt",
            cwd=tmp_path)
    assert r.code == 0, r.err
    r = cli("onion", "train", "c.pt", "--data", digits, "--steps", "60", "--lr", "2e-2", "--no-flip", "--batch", "8",
            "--workers", "0", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["s2_loss"] == "ce" and rep["s1_of_class"] == [0] + [1] * 9
    loss0, acc0 = _held_out(tmp_path / "c.pt", digits)
    loss1, acc1 = _held_out(tmp_path / "c-trained.pt", digits)
    print(f"held-out joint loss {loss0:.4f} -> {loss1:.4f}, S2 accuracy {acc0:.3f} -> {acc1:.3f}")
    assert loss1 < 0.8 * loss0 and acc1 >= acc0 + 0.2
    assert rep["before"]["s2_accuracy"] == pytest.approx(acc0) and rep["after"]["s2_accuracy"] == pytest.approx(acc1)


def test_label_free_distils_the_teacher(pairs):
    torch.manual_seed(3)
    teacher = tiny_net(_Chain(1))
    net = tiny_net(tiny_cascade())
    cfg = JointConfig(data=str(pairs), train=TrainConfig(batch=8, epochs=None, steps=2, workers=0))
    out, rep = joint_train(net, cfg, teacher=teacher)
    assert rep.s2_loss == "kd" and rep.teacher == "tiny"
    assert set(rep.after) >= {"teacher_agreement", "s1_accuracy"}


def test_cli_train_cascade_and_monolithic(cli, pairs, tmp_path):
    r = cli("onion", "train", "zoo:onion_p", "--data", str(pairs), "--steps", "1", "--batch", "8", "--workers", "0",
            "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    j = r.json()
    assert j["output"] == "onion_p-trained.pt" and j["alpha"] == 0.5 and j["s2_loss"] == "hinge"
    net = sio.load(tmp_path / "onion_p-trained.pt")
    assert net.recipe[-1].op == "onion_train" and net.metadata["onion_s1_classes"]["kind"] == "binary"
    r = cli("onion", "train", "zoo:onion_pm", "--data", str(pairs), "--steps", "1", "--batch", "8", "--workers", "0",
            "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert r.json()["cascade"] is False and r.json()["alpha"] is None and "s2_fpr95" in r.json()["after"]
