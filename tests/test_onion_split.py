"""surgery.onion.split: a trained chain network split into an OnionNet cascade."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.net import Net
from cli_commands.onion import parse_s1
from surgery.core.probe import Probe
from surgery.onion.split import split
from zoo.onion import OnionCascade


class SmallChain(nn.Module):
    """conv-BN-ReLU-pool ×2, flatten, Linear-ReLU-Linear: every layer kind of the paper's chains."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # 8x4x4
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.Dropout(0.5),
        )
        self.classifier = nn.Sequential(nn.Linear(12 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 2, 8)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + self.b(h)).flatten(1)


def small_net(dtype=torch.float32) -> Net:
    torch.manual_seed(0)
    m = SmallChain()
    with torch.no_grad():  # non-trivial BN statistics
        for bn in (m.features[1], m.features[5]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
    return Net(m.eval().to(dtype), None, (3, 8, 8), source="small")


def _with_arch(net: Net) -> Net:
    from surgery.core.net import ArchSpec
    return Net(net.module, ArchSpec("zoo", "x"), net.input_shape, source=net.source)


@pytest.fixture(scope="module")
def pm_split():
    net = sio.load("zoo:onion_pm")
    return net, *split(net, (32, 32, 32, 32, 64, 64, 64), s1_classes=2)


def test_dropped_blocks_zero_filled_equal_the_cascade_exactly():
    """The only change a split makes is the dropped block: the monolithic chain with
    W[S1_out_l, S2_in_{l-1}] zeroed equals the cascade's S2 output (float64: to rounding)."""
    net = _with_arch(small_net(torch.float64))
    out, rep = split(net, 0.5)
    cascade = out.module
    assert rep.verify["max_rel"] < 1e-6  # the split's own check (float32 probes)
    # independently: rebuild the zero-filled monolithic net from the cascade's weights
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    m = net.module
    c0, c1 = cascade.s1[0][0], cascade.s2["0"][0]
    # S1 filters of conv 0 are rows of the original weight: recover which
    w0 = m.features[0].weight
    s1_rows = [int((w0 - r).abs().sum((1, 2, 3)).argmin()) for r in c0.weight]
    s2_rows = [int((w0 - r).abs().sum((1, 2, 3)).argmin()) for r in c1.weight]
    assert sorted(s1_rows + s2_rows) == list(range(8))
    z = SmallChain().double().eval()
    z.load_state_dict(m.state_dict())
    with torch.no_grad():
        w1 = z.features[4].weight
        # conv 1's S1 outputs are those whose weights appear in S1's conv (over S1 inputs only)
        s1_out1 = [int((w1[:, s1_rows] - r).abs().sum((1, 2, 3)).argmin()) for r in cascade.s1[1][0].weight]
        for o in s1_out1:
            w1[o, s2_rows] = 0
        w2 = z.classifier[0].weight.view(10, 12, 4, 4)
        s2_out1 = [c for c in range(12) if c not in s1_out1]
        s1_out2 = [int((w2[:, s1_out1] - r).abs().sum((1, 2, 3)).argmin()) for r in cascade.s1[2][0].weight]
        for o in s1_out2:
            w2[o, s2_out1] = 0
    ref = z(x)
    got = cascade(x)[1]
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)


def test_dropped_weights_follow_the_papers_formula(pm_split):
    _, _, rep = pm_split
    # s² · n2_{l-1} · n1_l for P_M at Table 1's widths
    n1, n2, s = [32, 32, 32, 32, 64, 64, 64], [64, 64, 64, 64, 128, 128, 128], [4, 3, 3, 3, 3, 3, 3]
    expected = [0] + [s[l] ** 2 * n2[l - 1] * n1[l] for l in range(1, 7)]
    assert [l.dropped_weights for l in rep.layers] == expected
    assert rep.params_before - rep.params_after == sum(expected) + 2 * 128 * 4 - (2 * 192 * 4 + 2)


def test_search_drops_no_more_than_the_naive_split(pm_split):
    _, _, rep = pm_split
    for l in rep.layers[1:]:
        assert l.dropped_fraction <= l.naive_dropped_fraction + 1e-12
    assert sum(l.dropped_fraction for l in rep.layers) < sum(l.naive_dropped_fraction for l in rep.layers)


def test_split_equals_the_zoo_cascade_structure_and_reloads(pm_split, tmp_path):
    net, out, rep = pm_split
    assert isinstance(out.module, OnionCascade)
    assert out.module.n1 == (32, 32, 32, 32, 64, 64, 64, 2) and out.module.n2 == (64, 64, 64, 64, 128, 128, 128, 1)
    with torch.device("meta"):
        from zoo import registry
        zp = registry.get("onion_p").build()
    assert {k: v.shape for k, v in out.module.state_dict().items()} == {k: v.shape for k, v in zp.state_dict().items()}
    assert out.recipe[-1].op == "onion_split" and net.recipe == ()
    path = sio.save(out, tmp_path / "c.pt")
    back = sio.load(str(path))
    x = torch.randn(3, 2, 64, 64)
    for a, b in zip(back.module(x), out.module(x)):
        assert torch.equal(a, b)
    assert rep.head_init == "binary"


def test_binary_head_is_the_sigmoid_of_the_score_through_s1(pm_split):
    _, out, _ = pm_split
    head, last = out.module.s1[-1][0], out.module.s2["7"][0]
    n1 = out.module.n1[-2]
    assert torch.allclose(head.weight[1], last.weight[0, :n1] / 2) and torch.allclose(head.weight[0], -head.weight[1])




def test_bad_inputs_are_one_line_errors():
    net = _with_arch(small_net())
    for s1, frag in [("0", "strictly between"), ("1", "strictly between"), ("-0.5", "strictly between"),
                     ("1.5", "strictly between"), ("9,12,20", "more than the layer"), ("4,4", "hidden conv layers"),
                     ("x", "bad --s1")]:
        with pytest.raises(SurgeryError, match=frag) as e:
            split(net, parse_s1(s1))
        assert "\n" not in str(e.value)


def test_non_chain_is_refused_naming_the_join():
    net = Net(Residual().eval(), None, (3, 8, 8), source="res")
    net = _with_arch(net)
    with pytest.raises(SurgeryError, match=r"layer \d+ 'add' \(add\) joins 2 branches"):
        split(net, 0.5)


def test_a_cascade_cannot_be_split_again():
    with pytest.raises(SurgeryError, match="already an OnionNet cascade"):
        split(sio.load("zoo:onion_p"), 0.5)


def test_linear_layers_become_convs():
    net = _with_arch(small_net())
    out, rep = split(net, (4, 7, 6))  # convs 8 and 12 filters, Linear(192->10) as a 4x4 conv; output Linear(10->5)
    c = out.module
    assert c.n1 == (4, 7, 6, 5) and c.n2 == (4, 5, 4, 5)
    assert c.s1[2][0].kernel_size == (4, 4) and c.s2["3"][0].kernel_size == (1, 1)
    assert rep.head_init == "copied"
    assert rep.moved["max_rel"] > 1e-3  # a lossy split moves the function


class LinearChain(nn.Module):
    """Three 1x1 convs without biases or activations, y = 1.6·x0 + 1.5·x1: split at widths 1,1
    the search drops W1[0, 1] = 0.5 (the least energy), so S2's output is 1.6·x0 + x1."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*[nn.Conv2d(2, c, 1, bias=False) for c in (2, 2, 1)])
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.features[1].weight.copy_(torch.tensor([[1.0, 0.5], [0.6, 1.0]]).view(2, 2, 1, 1))
            self.features[2].weight.fill_(1.0)

    def forward(self, x):
        return self.features(x).flatten(1)


def test_moved_has_the_known_values_of_a_linear_chain():
    net = _with_arch(Net(LinearChain().eval(), None, (2, 1, 1), source="lin"))
    # y = 4.6 -> 3.6 (moved by 1.0) and y = 0.2 -> -0.4 (moved by 0.6, the sign flips)
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.2]]).view(2, 2, 1, 1)
    _, rep = split(net, (1, 1), probe=Probe((x,), "images", "2 hand-made inputs"))
    assert rep.layers[1].dropped_fraction == pytest.approx(0.25 / (1 + 0.25 + 0.36 + 1))
    assert rep.moved["max_abs"] == pytest.approx(1.0)
    assert rep.moved["max_rel"] == pytest.approx(1.0 / 4.6)
    assert rep.moved["top1_agreement"] == 0.5
