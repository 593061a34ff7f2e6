"""surgery.regroup and `surgery regroup`: dense spatial convs -> root (filter-group) convs.

Expected values: a network that is block-diagonal under a hidden permutation is reproduced
exactly; the zoo's own root-N ResNet-50 (key/shape set) and Deep Roots Table 1 (params,
MACs) for ResNet-50 v1; 1/groups for unstructured weights; the source's own tensors for
everything a residual add reads."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from surgery.core import io as sio
from zoo.plugin import build_zoo
from surgery.core.errors import SurgeryError
from surgery.core.net import ArchSpec, Net
from surgery.core.verify import compare
from surgery.partition import contiguous
from surgery.regroup import regroup
from zoo.resnet import DEEP_ROOTS_TABLE1


class Chain(nn.Module):
    """conv–BN–ReLU–conv3x3–BN–ReLU–conv: the 3x3's dense weight is block-diagonal under a
    hidden permutation of its inputs and outputs."""

    def __init__(self, c=16, groups=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv0 = nn.Conv2d(3, c, 1, bias=True)
        self.bn0 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 5, 1)
        hidden_out = torch.tensor(contiguous([c // groups] * groups))[torch.randperm(c, generator=g)]
        hidden_in = torch.tensor(contiguous([c // groups] * groups))[torch.randperm(c, generator=g)]
        mask = (hidden_out[:, None] == hidden_in[None, :]).float()[:, :, None, None]
        with torch.no_grad():
            self.conv1.weight.mul_(mask)
            for bn in (self.bn0, self.bn1):
                bn.running_mean.normal_(generator=g)
                bn.running_var.uniform_(0.5, 2.0, generator=g)
                bn.weight.normal_(generator=g)
                bn.bias.normal_(generator=g)

    def forward(self, x):
        x = self.relu(self.bn0(self.conv0(x)))
        x = self.relu(self.bn1(self.conv1(x)))
        return self.conv2(x)


def as_net(module, shape=(3, 8, 8)):
    return Net(module.eval(), ArchSpec("zoo", "custom"), shape, source="custom")


def test_hidden_block_structure_is_recovered_exactly():
    src = as_net(Chain())
    new, rep = regroup(src, 4, schedule="constant", cost=False)
    (layer,) = rep.layers
    assert layer.name == "conv1" and layer.groups == 4 and layer.permuted == ("in", "out")
    assert layer.retained == pytest.approx(1.0, abs=1e-12)
    assert layer.contiguous < 0.6
    assert new.module.conv1.groups == 4 and new.module.conv1.weight.shape == (16, 4, 3, 3)
    v = compare(src.module, new.module, src.input_shape, probes=2, batch=3)
    assert v.max_abs < 1e-5
    assert rep.moved.max_abs < 1e-5 and rep.moved.top1_agreement is None  # 4-D output: not a classifier
    assert src.module.conv1.groups == 1  # the input is never mutated


class Scale(nn.Module):
    """A per-channel scale the core does not know until it is registered (a leaf of the trace)."""

    surgery_leaf = True

    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, c))

    def forward(self, x):
        return x * self.scale[:, None, None]


class ScaledChain(Chain):
    def __init__(self):
        super().__init__()
        self.s = Scale(16)

    def forward(self, x):
        x = self.s(self.relu(self.bn0(self.conv0(x))))
        x = self.relu(self.bn1(self.conv1(x)))
        return self.conv2(x)


def test_a_registered_channel_op_passes_the_permutation():
    from surgery.core.channel_ops import PASS, ChannelOp, register_channel_op

    src = as_net(ScaledChain())
    _, rep = regroup(src, 4, schedule="constant", cost=False, probes=0)
    assert "Scale" in rep.layers[0].fixed["in"]  # unknown: it may mix channels
    register_channel_op(ChannelOp(PASS, ("scale",)), Scale)
    new, rep = regroup(src, 4, schedule="constant", cost=False, probes=0)
    (layer,) = rep.layers
    assert layer.permuted == ("in", "out") and layer.retained == pytest.approx(1.0, abs=1e-12)
    assert not torch.equal(new.module.s.scale, src.module.s.scale)  # its tensor followed the permutation
    assert compare(src.module, new.module, src.input_shape).max_abs < 1e-5


def test_permute_none_keeps_contiguous_blocks():
    src = as_net(Chain())
    new, rep = regroup(src, 4, schedule="constant", permute="none", cost=False, probes=0)
    (layer,) = rep.layers
    assert layer.retained == layer.contiguous and layer.permuted == ()
    w = src.module.conv1.weight
    assert torch.equal(new.module.conv1.weight[4:8], w[4:8, 4:8])  # group 1 = the second diagonal block
    assert torch.equal(new.module.bn0.running_mean, src.module.bn0.running_mean)


def test_random_weights_chain_keeps_at_least_contiguous_about_one_over_g():
    net = sio.load("zoo:digits_cnn")
    new, rep = regroup(net, 4, schedule="constant", cost=False)
    assert [l.name for l in rep.layers] == [f"features.conv{i}" for i in range(1, 5)]
    assert rep.skipped[0].name == "features.conv0" and "network input" in rep.skipped[0].reason
    for l in rep.layers:
        assert l.expected == 0.25
        assert l.retained >= l.contiguous
        assert 0.25 <= l.retained < 0.4
        assert l.fixed == {}  # conv4 -> BN -> ReLU -> global pool -> flatten -> Linear absorbs it
    assert rep.moved.probes == 2 and rep.moved.batch == 4 and 0 <= rep.moved.top1_agreement <= 1
    # permuting through the chain preserved everything but the dropped blocks: the dense
    # model with exactly those blocks zeroed computes the same function
    masked = _zeroed_like(net, new)
    assert compare(masked, new.module, net.input_shape).max_abs < 1e-5


class CrossTalk(nn.Module):
    """Four class scores read through a 3x3 conv at the centre pixel: the identity plus one
    off-diagonal-block weight, 0.6 from input channel 2 into score 0. Regrouped to 2 groups
    ({0, 1}, {2, 3}: the contiguous blocks keep the most energy, 4 of 4.36) the scores become
    the centre values themselves."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(4, 4, 1, bias=False)  # reads the input: stays dense
        self.conv1 = nn.Conv2d(4, 4, 3, bias=False)
        with torch.no_grad():
            self.conv0.weight.copy_(torch.eye(4)[:, :, None, None])
            self.conv1.weight.zero_()
            self.conv1.weight[:, :, 1, 1] = torch.eye(4)
            self.conv1.weight[0, 2, 1, 1] = 0.6

    def forward(self, x):
        return torch.flatten(self.conv1(self.conv0(x)), 1)


def test_moved_is_measured_on_crafted_inputs():
    """Centre values v; scores before: (v0 + 0.6 v2, v1, v2, v3), after: v. Sample 0 changes its
    arg-max (0.86 > 0.8, then 0.5 < 0.8), the other three keep theirs: agreement 3/4; the largest
    change is 0.6 * 0.6 = 0.36 against a largest score of 1."""
    from surgery.core.probe import IMAGES, Probe

    centres = torch.tensor([[0.5, 0.8, 0.6, 0.1], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.2, 0.9, 0.5, 0.0]])
    x = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(0))  # the border taps weigh 0
    x[:, :, 1, 1] = centres
    net = as_net(CrossTalk(), (4, 3, 3))
    new, rep = regroup(net, 2, schedule="constant", cost=False, probe=Probe((x,), IMAGES, "4 crafted inputs"))
    (layer,) = rep.layers
    assert layer.retained == pytest.approx(4 / 4.36) and layer.permuted == ()
    assert rep.moved.top1_agreement == 0.75
    assert rep.moved.max_abs == pytest.approx(0.36, rel=1e-6) and rep.moved.max_rel == pytest.approx(0.36, rel=1e-6)
    assert rep.moved.probes == 1 and rep.moved.batch == 4 and rep.moved.probe["source"] == "4 crafted inputs"
    with torch.no_grad():
        assert torch.allclose(new.module(x), centres)


def _zeroed_like(src: Net, new: Net) -> nn.Module:
    """The regrouped net written back as a dense net (zeros off the diagonal blocks)."""
    import copy

    m = copy.deepcopy(new.module)
    for name, conv in list(m.named_modules()):
        if isinstance(conv, nn.Conv2d) and conv.groups > 1:
            G, o, i = conv.groups, conv.out_channels // conv.groups, conv.in_channels // conv.groups
            dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=conv.bias is not None)
            with torch.no_grad():
                dense.weight.zero_()
                for g in range(G):
                    dense.weight[g * o:(g + 1) * o, g * i:(g + 1) * i] = conv.weight[g * o:(g + 1) * o]
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, attr, dense)
    return m.eval()


def _table1_params(state) -> float:
    """Deep Roots Table 1's parameter column: conv + fc weights and biases (no BatchNorm)."""
    return sum(v.numel() for k, v in state.items() if ("conv" in k or "fc" in k or "downsample.0" in k))


@pytest.mark.parametrize("root", [1, 2, 4, 8, 16, 32, 64])
def test_resnet50_v1_becomes_the_zoo_root_topology(root):
    net = sio.load("zoo:resnet50:variant=v1")
    new, rep = regroup(net, root, permute="none", cost=False, probes=0)
    mine = new.module.state_dict()
    zoo = build_zoo("resnet50", {"variant": "v1", "root": root}).module.state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in zoo.items()}
    assert float(f"{_table1_params(mine):.3g}") == DEEP_ROOTS_TABLE1[root][1]
    # the schedule: root, root/2, root/4, root/8 groups in res2..res5, never below 1
    groups = {l.name: l.groups for l in rep.layers}
    for stage, layer in enumerate(("layer1", "layer2", "layer3", "layer4")):
        g = max(1, root // 2 ** stage)
        names = [n for n in mine if n.startswith(layer) and n.endswith("conv2.weight")]
        assert all(groups.get(n[: -len(".weight")], 1) == g for n in names)


@pytest.mark.slow
def test_resnet50_root8_costs_are_table1_and_reload(tmp_path):
    net = sio.load("zoo:resnet50:variant=v1")
    new, rep = regroup(net, 8, probes=1, batch=2)
    assert float(f"{rep.before.macs:.3g}") == DEEP_ROOTS_TABLE1[1][0]
    assert float(f"{rep.after.macs:.3g}") == DEEP_ROOTS_TABLE1[8][0]
    assert all(l.retained >= l.contiguous for l in rep.layers)
    assert all(l.permuted == ("in", "out") for l in rep.layers)  # both sides of a bottleneck 3x3 are free
    path = sio.save(new, tmp_path / "r8.pt")
    back = sio.load(str(path))
    assert back.recipe[-1].op == "regroup"
    for k, v in new.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k])
    torch.save(new.module.state_dict(), tmp_path / "bare.pt")
    bare = sio.load(str(tmp_path / "bare.pt"), arch="zoo:resnet50:variant=v1,root=8")
    assert bare.module.layer1[0].conv2.groups == 8


def test_residual_add_producers_are_never_permuted():
    net = sio.load("zoo:resnet18")
    new, rep = regroup(net, 4, schedule="constant", cost=False, probes=0)
    by = {l.name: l for l in rep.layers}
    blk = by["layer2.1.conv1"]  # reads the residual stream, writes into conv2 (a chain)
    assert "residual add" in blk.fixed["in"] and blk.permuted == ("out",)
    assert "residual add" in by["layer2.1.conv2"].fixed["out"] and by["layer2.1.conv2"].permuted == ("in",)
    src, dst = net.module.state_dict(), new.module.state_dict()
    chained = (".conv1.", ".bn1.", ".conv2.")  # only the chain interior and the regrouped convs change
    for k, v in src.items():
        if not any(c in k for c in chained) or k.startswith("bn1") or k.startswith("conv1"):
            assert torch.equal(v, dst[k]), k


def test_darknet_residual_unit_keeps_the_stream_and_round_trips(darknet_dir, tmp_path):
    cfg = tmp_path / "darknet53.cfg"
    shutil.copy(darknet_dir / "darknet53.cfg", cfg)
    net = sio.load(str(cfg), input_shape=(3, 64, 64))
    new, rep = regroup(net, 4, cost=False, probes=1, batch=1)
    assert rep.how == "darknet-cfg" and new.recipe == ()
    assert len(new.module.layers) == len(net.module.layers)
    assert [l.index for l in rep.layers][:2] == [1, 3]
    unit = {l.index: l for l in rep.layers}[3]  # 1x1 (layer 2) -> 3x3 (layer 3) -> shortcut (layer 4)
    assert unit.permuted == ("in",) and "shortcut" in unit.fixed["out"]
    assert torch.equal(new.module.layers[3].bn.running_mean, net.module.layers[3].bn.running_mean)
    assert new.module.layers[3].conv.groups == 4 and "groups=4" in new.module.cfg_text()
    from surgery.export import write_darknet
    from zoo.darknet import build_darknet, read_weights

    write_darknet(new, tmp_path / "r.cfg", tmp_path / "r.weights")
    back = build_darknet((tmp_path / "r.cfg").read_text())
    read_weights(back, tmp_path / "r.weights")
    for k, v in new.module.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_bad_input_and_skips():
    net = sio.load("zoo:digits_cnn")
    with pytest.raises(SurgeryError, match="positive"):
        regroup(net, 0)
    with pytest.raises(SurgeryError, match="schedule"):
        regroup(net, 2, schedule="halving")
    with pytest.raises(SurgeryError, match="no layer named"):
        regroup(net, 2, layers="features.conv9")
    with pytest.raises(SurgeryError, match="no dense spatial conv"):
        regroup(net, 2, layers="fc,features.bn1")
    # 16 input channels of conv1 do not divide into 3 groups: listed, not regrouped
    new, rep = regroup(net, 3, schedule="constant", cost=False, probes=0)
    assert rep.layers == () and any("not divisible by 3" in s.reason for s in rep.skipped)
    shuffle = sio.load("zoo:shufflenet_v2_x0_5")
    with pytest.raises(SurgeryError, match="depthwise"):
        regroup(shuffle, 2, layers="stage2.0.branch1.0")


def test_cli_regroup_default_output_json_and_refusal(cli, tmp_path):
    res = cli("regroup", "zoo:digits_cnn", "--root", "4", "--schedule", "constant", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    d = res.json()
    assert d["output"] == "digits_cnn-root4.pt" and (tmp_path / "digits_cnn-root4.pt").exists()
    assert d["root"] == 4 and d["lossy"] is True and "surgery heal" in d["note"]
    assert len(d["layers"]) == 4 and all(l["retained"] >= l["contiguous"] for l in d["layers"])
    # every regrouped 3x3 keeps 1/4 of its dense weights; nothing else changes
    dense = sio.load("zoo:digits_cnn").module
    convs = [dense.get_submodule(f"features.conv{i}") for i in range(1, 5)]
    before = sum(p.numel() for p in dense.parameters())
    assert d["totals"]["before"]["params"] == before
    assert d["totals"]["after"]["params"] == before - sum(c.weight.numel() * 3 // 4 for c in convs)
    assert set(d["moved"]) >= {"max_abs", "max_rel", "top1_agreement"}
    info = cli("info", "digits_cnn-root4.pt", "--json", cwd=tmp_path)
    assert info.code == 0 and info.json()["params"] == d["totals"]["after"]["params"]
    again = cli("regroup", "zoo:digits_cnn", "--root", "4", "--schedule", "constant", cwd=tmp_path)
    assert again.code == 2 and "exists" in again.err and len(again.err.strip().splitlines()) == 1
    bad = cli("regroup", "zoo:digits_cnn", "--root", "4", "--layers", "nope", "-o", "x.pt", cwd=tmp_path)
    assert bad.code == 2 and "nope" in bad.err and not (tmp_path / "x.pt").exists()
