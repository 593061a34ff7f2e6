"""OnionNet cascade architecture (zoo/onion.py): Table 1 widths and closed-form parameter counts.

Expected counts come from the paper's weight formula (§3.1), written out here from Table 1:
a cascade split from N_M drops s_l² · n2_{l-1} · n1_l weights at every conv layer l (the
S2→S1 block) and adds S1's own output layer; N_NS is S1 plus the whole N_M.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo import registry
from zoo.onion import OnionCascade

# Table 1 (kernel s, monolithic n) per conv layer, the image channels and groups of N_M
MONO = {
    "p": dict(cin=2, layers=[(4, 96), (3, 96), (3, 96), (3, 96), (3, 192), (3, 192), (3, 192), (2, 1)],
              groups=[1] * 8),
    "d": dict(cin=3, layers=[(11, 96), (5, 256), (3, 384), (3, 384), (3, 256), (6, 4096), (1, 4096), (1, 21)],
              groups=[1, 2, 1, 2, 2, 1, 1, 1]),
    "r": dict(cin=3, layers=[(11, 64), (5, 256), (3, 256), (3, 256), (3, 256), (6, 4096), (1, 4096), (1, 1000)],
              groups=[1] * 8),
}
# Table 1 cascades: S1/S2 per conv layer (the last: S1-classes / outputs)
TABLE1 = {
    "p": [(32, 64)] * 4 + [(64, 128)] * 3 + [(2, 1)],
    "d": [(96, 0), (256, 0), (384, 0), (384, 0), (256, 0), (512, 3584), (512, 3584), (2, 21)],
    "r": [(8, 56), (32, 224), (32, 224), (32, 224), (32, 224), (256, 3840), (256, 3840), (7, 1000)],
}


def build_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return registry.get(name).build()


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def mono_params(key: str) -> int:
    cfg = MONO[key]
    total, cin = 0, cfg["cin"]
    for (s, n), g in zip(cfg["layers"], cfg["groups"]):
        total += s * s * (cin // g) * n + n
        cin = n
    return total


def s1_params(key: str) -> int:
    cfg, widths = MONO[key], TABLE1[key]
    total, cin = 0, cfg["cin"]
    for (s, _), (n1, _), g in zip(cfg["layers"], widths, cfg["groups"]):
        total += s * s * (cin // g) * n1 + n1
        cin = n1
    return total


def paper_formula(key: str, widths=None) -> int:
    """params(N) = params(N_M) + S1's output layer − Σ_l s_l² n2_{l-1} n1_l (§3.1)."""
    cfg, widths = MONO[key], widths or TABLE1[key]
    s_last, _ = cfg["layers"][-1]
    n_prev = cfg["layers"][-2][1]
    k = widths[-1][0]
    head = s_last * s_last * n_prev * k + k
    dropped = sum(s * s * widths[l - 1][1] * widths[l][0] for l, (s, _) in enumerate(cfg["layers"]) if l > 0)
    return mono_params(key) + head - dropped


@pytest.mark.parametrize("key", ["p", "d", "r"])
def test_table1_widths(key):
    m = build_meta(f"onion_{key}")
    assert list(zip(m.n1, m.n2)) == TABLE1[key]
    assert [b.conv.kernel[0] for b in m.blocks] == [s for s, _ in MONO[key]["layers"]]
    # effective filters per hidden layer equal the monolithic net's (§4)
    assert [a + b for a, b in TABLE1[key][:-1]] == [n for _, n in MONO[key]["layers"][:-1]]


@pytest.mark.parametrize("key", ["p", "d", "r"])
def test_cascade_params_follow_the_papers_weight_formula(key):
    assert n_params(build_meta(f"onion_{key}")) == paper_formula(key)


def test_onion_p_params_pinned():
    # P_M 1,083,073 + S1 head (2·192·2²+2 = 1,538) − dropped (239,616 + head's 2·128·4 = 1,024)
    assert mono_params("p") == 1_083_073
    assert n_params(build_meta("onion_p")) == 843_971


@pytest.mark.parametrize("fraction, n1", [(0.125, (12, 24)), (0.25, (24, 48)), (0.5, (48, 96))])
def test_s1_width_gives_that_share_of_every_hidden_layer(fraction, n1):
    """Table 5 in small: zoo:onion_p:s1_width=F puts F of P_M's 96 / 192 filters in S1."""
    with torch.device("meta"):
        m = registry.get("onion_p").build(s1_width=fraction)
    a, b = n1
    widths = [(a, 96 - a)] * 4 + [(b, 192 - b)] * 3 + [(2, 1)]
    assert list(zip(m.n1, m.n2)) == widths
    assert n_params(m) == paper_formula("p", widths)


@pytest.mark.parametrize("fraction", [1, -0.5, 1.5])
def test_s1_width_outside_0_1_is_refused(fraction):
    from surgery.core.errors import SurgeryError

    with pytest.raises(SurgeryError, match="between 0 and 1"):
        registry.get("onion_p").build(s1_width=fraction)


@pytest.mark.parametrize("key", ["p", "d", "r"])
def test_non_sharing_is_s1_plus_the_monolithic_net(key):
    ns = build_meta(f"onion_{key}_ns")
    assert not ns.share
    assert n_params(ns) == s1_params(key) + mono_params(key)
    assert ns.n2 == tuple(n for _, n in MONO[key]["layers"])


def test_one_way_dependence_s1_never_reads_s2():
    torch.manual_seed(0)
    m = registry.get("onion_p").build().eval()
    x = torch.randn(2, 2, 64, 64)
    logits, _ = m(x)
    with torch.no_grad():
        for p in m.s2.parameters():
            p.add_(torch.randn_like(p))  # S2 changes: S1's scores must not
    assert torch.equal(m(x)[0], logits)
    # S2's conv at layer l reads n1_{l-1} + n2_{l-1} maps; S1's reads n1_{l-1}
    for l in range(1, m.depth):
        assert m.s2[str(l)][0].in_channels == m.n1[l - 1] + m.n2[l - 1]
        assert m.s1[l][0].in_channels == m.n1[l - 1]


def test_s2_of_d_starts_at_the_classifier():
    m = build_meta("onion_d")
    assert sorted(int(k) for k in m.s2.keys()) == [5, 6, 7]
    assert m.shared_layers() == (4, 5, 6)
    assert isinstance(m, OnionCascade) and m.s1[1][0].groups == 2  # CaffeNet's filter groups kept in S1


def test_thresholds_are_a_state_dict_buffer():
    m = build_meta("onion_r")
    assert "thresholds" in m.state_dict() and tuple(m.thresholds.shape) == (7,)


def test_bad_s1_classes():
    from surgery.core.errors import SurgeryError

    with pytest.raises(SurgeryError, match="s1_classes"):
        registry.get("onion_p").build(s1_classes=0)


@pytest.mark.parametrize("ref", ["zoo:onion_pm", "zoo:onion_p", "zoo:onion_p_ns"])
def test_zoo_onion_nets_start_he_normal_so_the_signal_survives_the_chain(ref):
    """He-normal conv weights keep the second moment through conv + ReLU (He et al. 2015): the
    score of P_M's nine convs on unit-normal patches has a standard deviation of order 1. With
    PyTorch's default conv init (variance 1/(3 fan_in)) the same nets output ~1e-3 — the init
    under which SGD on the hinge loss did not move (zoo/patchnets.py)."""
    import torch
    from torch import nn

    from surgery.core import io as sio

    torch.manual_seed(0)
    net = sio.load(ref).module.eval()
    x = torch.randn(64, 2, 64, 64, generator=torch.Generator().manual_seed(1))

    def score_std(m):
        with torch.no_grad():
            out = m(x)
        return float((out[1] if isinstance(out, tuple) else out).std())

    assert 0.2 < score_std(net) < 5.0
    for m in net.modules():  # every conv of the zoo net: zero biases
        if isinstance(m, nn.Conv2d):
            assert m.bias is None or not m.bias.any()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()  # PyTorch's default init
    assert score_std(net) < 0.02
