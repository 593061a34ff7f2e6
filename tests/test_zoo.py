"""The model zoo: every registry entry, plus the published figures of the family papers.

Registry-wide tests are parametrised over ``zoo.registry.entries()``, so a new entry is tested
without touching this file. Costs are counted here with a tiny closed-form counter (conv and
linear only, on the meta device) so the zoo is checked independently of ``analyzers/``:
conv MACs = output elements x in_channels/groups x kh x kw; linear = in x out (per sample).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.errors import SurgeryError
from zoo import registry
from zoo.diracnet import DiracConv2d, dirac_effective_weight
from zoo.resnet import DEEP_ROOTS_TABLE1


def _entry_params():
    out = []
    for e in registry.entries():
        marks = [pytest.mark.slow] if e.slow else []
        out.append(pytest.param(e, id=e.name, marks=marks))
    return out


ALL = [pytest.param(e, id=e.name) for e in registry.entries()]
ALL_SLOW_MARKED = _entry_params()


def build_meta(name: str, **kwargs) -> nn.Module:
    """Build without allocating or initialising weights (counting only)."""
    entry = registry.get(name)
    try:
        with torch.device("meta"):
            return entry.build(**kwargs)
    except (NotImplementedError, RuntimeError):  # a builder that must touch real data
        return entry.build(**kwargs).to("meta")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_fc_params(model: nn.Module) -> int:
    """Weights + biases of conv and linear layers only (no BatchNorm)."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, DiracConv2d)):
            total += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    return total


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Closed-form conv + linear MACs for one sample of ``shape`` (meta-device forward)."""
    macs = 0

    def hook(m, inputs, out):
        nonlocal macs
        if isinstance(m, (nn.Conv2d, DiracConv2d)):
            kh, kw = m.kernel_size
            macs += out.numel() * (m.in_channels // m.groups) * kh * kw
        else:  # nn.Linear
            macs += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, DiracConv2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return macs


# ---------------------------------------------------------------- every registry entry


PUBLISHED = [pytest.param(e, id=e.name) for e in registry.entries() if e.published_params is not None]


@pytest.mark.parametrize("entry", PUBLISHED)
def test_entry_param_count(entry):
    got = n_params(build_meta(entry.name))
    assert got == pytest.approx(entry.published_params, rel=entry.params_rtol), (
        f"{entry.name}: {got:,} parameters vs published {entry.published_params:,} ({entry.source})")


@pytest.mark.parametrize("entry", ALL)
def test_entry_shape_and_meta_forward(entry):
    shape = entry.shape_for({})
    declared = entry.input_shape(entry.resolve_kwargs({})) if callable(entry.input_shape) else entry.input_shape
    assert shape == tuple(declared)
    assert all(isinstance(s, int) and s > 0 for s in shape)
    model = build_meta(entry.name).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *shape, device="meta"))
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape[0] == 1


@pytest.mark.parametrize("entry", ALL_SLOW_MARKED)
def test_entry_forward_finite(entry):
    torch.manual_seed(0)
    model = entry.build().eval()
    shape = entry.shape_for({})
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    outs = out if isinstance(out, (tuple, list)) else [out]
    for o in outs:
        assert o.shape[0] == 1
        assert torch.isfinite(o).all(), f"{entry.name}: non-finite output"


def test_entry_names_present():
    names = set(registry.names())
    expected = {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
        "diracnet18", "diracnet34", "diracnet28_10", "wrn28_10", "wrn40_4", "wrn50_2",
        "onion_pm", "onion_dm", "onion_rm", "patch_2ch", "patch_siamese", "patch_pseudo_siamese",
    }
    assert expected <= names, sorted(expected - names)


# ---------------------------------------------------------------- ResNet / torchvision layout

# torchvision resnet50().state_dict(): first and last keys, and their shapes
TV_RESNET50_FIRST = [
    ("conv1.weight", (64, 3, 7, 7)),
    ("bn1.weight", (64,)), ("bn1.bias", (64,)), ("bn1.running_mean", (64,)), ("bn1.running_var", (64,)),
    ("bn1.num_batches_tracked", ()),
    ("layer1.0.conv1.weight", (64, 64, 1, 1)),
    ("layer1.0.bn1.weight", (64,)), ("layer1.0.bn1.bias", (64,)), ("layer1.0.bn1.running_mean", (64,)),
    ("layer1.0.bn1.running_var", (64,)), ("layer1.0.bn1.num_batches_tracked", ()),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)),
]
TV_RESNET50_LAST = [
    ("layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("layer4.2.bn3.weight", (2048,)), ("layer4.2.bn3.bias", (2048,)), ("layer4.2.bn3.running_mean", (2048,)),
    ("layer4.2.bn3.running_var", (2048,)), ("layer4.2.bn3.num_batches_tracked", ()),
    ("fc.weight", (1000, 2048)), ("fc.bias", (1000,)),
]


def torchvision_bottleneck_spec(layers=(3, 4, 6, 3), width_per_group=64, num_classes=1000):
    """The (key, shape) list torchvision's ResNet layout implies, derived independently."""
    def bn(prefix, c):
        return [(f"{prefix}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
            (f"{prefix}.num_batches_tracked", ())]

    spec = [("conv1.weight", (64, 3, 7, 7))] + bn("bn1", 64)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        width = planes * width_per_group // 64
        for b in range(blocks):
            p = f"layer{i}.{b}"
            spec += [(f"{p}.conv1.weight", (width, inplanes, 1, 1))] + bn(f"{p}.bn1", width)
            spec += [(f"{p}.conv2.weight", (width, width, 3, 3))] + bn(f"{p}.bn2", width)
            spec += [(f"{p}.conv3.weight", (planes * 4, width, 1, 1))] + bn(f"{p}.bn3", planes * 4)
            if b == 0:
                spec += [(f"{p}.downsample.0.weight", (planes * 4, inplanes, 1, 1))] + bn(f"{p}.downsample.1",
                                                                                         planes * 4)
            inplanes = planes * 4
    return spec + [("fc.weight", (num_classes, 2048)), ("fc.bias", (num_classes,))]


def _sd_spec(model: nn.Module):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_resnet50_torchvision_keys():
    got = _sd_spec(build_meta("resnet50"))
    # 1 + 5 (stem) + 16 blocks x 18 + 4 downsamples x 6 + 2 (fc) = 320
    assert len(got) == 320
    assert got[: len(TV_RESNET50_FIRST)] == TV_RESNET50_FIRST
    assert got[-len(TV_RESNET50_LAST):] == TV_RESNET50_LAST
    assert got == torchvision_bottleneck_spec()
    assert ("layer1.0.downsample.0.weight", (256, 64, 1, 1)) in got


def test_resnet50_loads_torchvision_state_dict_strictly():
    # a stand-in for torchvision's resnet50().state_dict(): its keys and shapes, filled with data
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.tensor(0) if s == () else torch.randn(s, generator=g)) for k, s in torchvision_bottleneck_spec()}
    model = registry.get("resnet50").build()
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])


def test_wrn50_2_torchvision_keys():
    got = _sd_spec(build_meta("wrn50_2"))
    assert got == torchvision_bottleneck_spec(width_per_group=128)
    assert n_params(build_meta("wrn50_2")) == 68_883_240


def test_resnet_v1_vs_v15_stride_placement():
    v1 = build_meta("resnet50", variant="v1")
    v15 = build_meta("resnet50", variant="v1.5")
    for layer in ("layer2", "layer3", "layer4"):
        b1, b15 = getattr(v1, layer)[0], getattr(v15, layer)[0]
        assert b1.conv1.stride == (2, 2) and b1.conv2.stride == (1, 1)
        assert b15.conv1.stride == (1, 1) and b15.conv2.stride == (2, 2)
        assert b1.downsample[0].stride == b15.downsample[0].stride == (2, 2)
        for blk in list(getattr(v1, layer))[1:] + list(getattr(v15, layer))[1:]:
            assert blk.conv1.stride == blk.conv2.stride == (1, 1)
    # layer1 never downsamples; both variants keep identical keys and shapes
    assert v1.layer1[0].conv1.stride == v1.layer1[0].conv2.stride == (1, 1)
    assert _sd_spec(v1) == _sd_spec(v15)
    # basic blocks have no 1x1 conv: the variants coincide
    assert _sd_spec(build_meta("resnet18", variant="v1")) == _sd_spec(build_meta("resnet18"))
    assert build_meta("resnet18", variant="v1").layer2[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("root", [1, 2, 4, 8, 16, 32, 64])
def test_resnet50_root_groups_per_stage(root):
    m = build_meta("resnet50", root=root, variant="v1")
    for stage in range(4):
        want = max(1, root // 2 ** stage)
        for blk in getattr(m, f"layer{stage + 1}"):
            assert blk.conv2.groups == want, (root, stage)
            assert blk.conv1.groups == blk.conv3.groups == 1
            assert blk.conv2.out_channels == blk.conv2.in_channels == 64 * 2 ** stage  # filters unchanged
            if blk.downsample is not None:
                assert blk.downsample[0].groups == 1
    assert m.conv1.groups == 1


def test_resnet18_root_groups_both_3x3():
    m = build_meta("resnet18", root=4)
    for stage, want in enumerate((4, 2, 1, 1)):
        for blk in getattr(m, f"layer{stage + 1}"):
            assert blk.conv1.groups == blk.conv2.groups == want
            assert blk.conv1.out_channels == 64 * 2 ** stage


def test_resnet50_macs_v1_and_v15():
    assert round(count_macs(build_meta("resnet50", variant="v1"), (3, 224, 224)) / 1e9, 2) == 3.86
    assert round(count_macs(build_meta("resnet50"), (3, 224, 224)) / 1e9, 2) == 4.09


@pytest.mark.parametrize("root", sorted(DEEP_ROOTS_TABLE1))
def test_deep_roots_table1(root):
    """MACs and params of root-n ResNet-50 (v1) as in Deep Roots Table 1 (to its rounding).

    The table's parameter column is conv + fc weights and biases (no BatchNorm), to three
    significant figures: e.g. root-1 25,503,912 -> 2.55e7, root-2 25,448,616 -> 2.54e7,
    root-64 15,312,744 -> 1.53e7.
    """
    macs_pub, params_pub = DEEP_ROOTS_TABLE1[root]
    m = build_meta("resnet50", variant="v1", root=root)
    assert abs(count_macs(m, (3, 224, 224)) / 1e9 - macs_pub / 1e9) <= 0.005 + 1e-9
    assert abs(conv_fc_params(m) / 1e7 - params_pub / 1e7) <= 0.005 + 1e-9
    # closed form of the grouped 3x3 weights removed: sum over stages of (1 - 1/g) * blocks * w^2 * 9
    removed = sum((1 - 1 / max(1, root >> s)) * b * (64 << s) ** 2 * 9 for s, b in enumerate((3, 4, 6, 3)))
    assert n_params(m) == 25_557_032 - round(removed)


MACS_ENTRIES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wrn50_2",
                "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "mobilenet_v2"]


@pytest.mark.parametrize("name", MACS_ENTRIES)
def test_published_macs(name):
    entry = registry.get(name)
    got = count_macs(build_meta(name), entry.shape_for({}))
    assert got == pytest.approx(entry.extra["macs"], rel=0.02), f"{name}: {got:,} MACs"


def test_shufflenet_x1_0_macs_146m():
    got = count_macs(build_meta("shufflenet_v2_x1_0"), (3, 224, 224))
    assert got == pytest.approx(146e6, rel=0.02)


def test_shufflenet_torchvision_keys():
    got = dict(_sd_spec(build_meta("shufflenet_v2_x1_0")))
    # 6 (conv1) + 3 stride-2 units x 30 + 13 stride-1 units x 18 + 6 (conv5) + 2 (fc) = 338
    assert len(got) == 338
    for k, s in [("conv1.0.weight", (24, 3, 3, 3)), ("conv1.1.running_var", (24,)),
                 ("stage2.0.branch1.0.weight", (24, 1, 3, 3)), ("stage2.0.branch1.2.weight", (58, 24, 1, 1)),
                 ("stage2.0.branch2.0.weight", (58, 24, 1, 1)), ("stage2.1.branch2.3.weight", (58, 1, 3, 3)),
                 ("stage3.7.branch2.5.weight", (116, 116, 1, 1)), ("stage4.3.branch2.6.num_batches_tracked", ()),
                 ("conv5.0.weight", (1024, 464, 1, 1)), ("fc.weight", (1000, 1024))]:
        assert got[k] == s, k
    assert not any(k.startswith("stage2.1.branch1") for k in got)


def test_channel_shuffle():
    from zoo.shufflenet import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


# ---------------------------------------------------------------- WRN / DiracNet


@pytest.mark.parametrize("name,exact", [("wrn28_10", 36_479_194), ("wrn40_4", 8_949_210)])
def test_wrn_closed_form(name, exact):
    depth, k = {"wrn28_10": (28, 10), "wrn40_4": (40, 4)}[name]
    n, w = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    convs = 3 * 16 * 9
    bns = 0
    for g in range(3):
        cin, cout = w[g], w[g + 1]
        convs += cin * cout * 9 + cout * cout * 9 + cin * cout  # first block (+ 1x1 convdim)
        convs += (n - 1) * 2 * cout * cout * 9
        bns += cin + cout + (n - 1) * 2 * cout
    bns += w[3]
    closed = convs + 2 * bns + w[3] * 10 + 10
    assert closed == exact
    assert n_params(build_meta(name)) == exact


def _diracnet_closed_form(widths, convs_per_group, stem, num_classes):
    """Stem conv + BN, Dirac 3x3 convs (weight + a + b) + BN per layer, classifier."""
    total = stem * widths[0] + 2 * widths[0]
    prev = widths[0]
    for w, n in zip(widths, convs_per_group):
        for i in range(n):
            cin = prev if i == 0 else w
            total += cin * w * 9 + 2 * w + 2 * w  # W, (a, b), BN (gamma, beta)
        prev = w
    return total + prev * num_classes + num_classes


@pytest.mark.parametrize("name,widths,convs,stem,classes,published", [
    ("diracnet18", [64, 128, 256, 512], [4, 4, 4, 4], 3 * 49, 1000, 11.7e6),
    ("diracnet34", [64, 128, 256, 512], [6, 8, 12, 6], 3 * 49, 1000, 21.8e6),
    ("diracnet28_10", [160, 320, 640], [8, 8, 8], 3 * 9, 10, 36.5e6),
])
def test_diracnet_closed_form(name, widths, convs, stem, classes, published):
    closed = _diracnet_closed_form(widths, convs, stem, classes)
    model = build_meta(name)
    assert n_params(model) == closed
    assert closed == pytest.approx(published, rel=0.02)
    dirac = [m for m in model.modules() if isinstance(m, DiracConv2d)]
    assert len(dirac) == sum(convs)
    assert all(m.stride == (1, 1) and m.padding == (1, 1) and m.kernel_size == (3, 3) for m in dirac)


@pytest.mark.parametrize("cin,cout,groups", [(8, 8, 1), (4, 8, 1), (8, 4, 1), (8, 8, 2), (6, 4, 2)])
def test_dirac_effective_weight_matches_formula(cin, cout, groups):
    g = torch.Generator().manual_seed(cin * 100 + cout)
    weight = torch.randn(cout, cin // groups, 3, 3, generator=g)
    alpha = torch.randn(cout, generator=g)
    beta = torch.randn(cout, generator=g)
    # independent: torch's own Dirac init for I, an explicit per-filter L2 norm for W_norm
    eye = torch.empty_like(weight)
    torch.nn.init.dirac_(eye, groups=groups)
    norms = torch.sqrt((weight ** 2).sum(dim=(1, 2, 3)))
    expected = alpha[:, None, None, None] * eye + beta[:, None, None, None] * weight / norms[:, None, None, None]
    got = dirac_effective_weight(weight, alpha, beta, groups=groups)
    torch.testing.assert_close(got, expected)

    conv = DiracConv2d(cin, cout, 3, padding=1, groups=groups)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.alpha.copy_(alpha)
        conv.beta.copy_(beta)
    x = torch.randn(2, cin, 5, 5, generator=g)
    torch.testing.assert_close(conv(x), F.conv2d(x, expected, None, 1, 1, 1, groups))
    for attr, val in [("in_channels", cin), ("out_channels", cout), ("kernel_size", (3, 3)), ("stride", (1, 1)),
                      ("padding", (1, 1)), ("dilation", (1, 1)), ("groups", groups)]:
        assert getattr(conv, attr) == val


def test_dirac_identity_when_b_is_zero():
    conv = DiracConv2d(5, 5, 3, padding=1)
    with torch.no_grad():
        conv.beta.zero_()
        conv.alpha.fill_(2.0)
    x = torch.randn(1, 5, 7, 7)
    torch.testing.assert_close(conv(x), 2 * x)
    assert [n for n, _ in conv.named_parameters()] == ["weight", "alpha", "beta"]
    assert conv.alpha.shape == conv.beta.shape == (5,)
    # thesis init: a = 1, b = 0.1
    fresh = DiracConv2d(3, 4)
    assert torch.all(fresh.alpha == 1.0) and torch.allclose(fresh.beta, torch.full((4,), 0.1))


def test_diracnet_block_layout():
    m = build_meta("diracnet18")
    blk = m.group1.block0
    assert [type(c) for c in blk] == [nn.ReLU, DiracConv2d, nn.BatchNorm2d]
    assert (blk.conv.in_channels, blk.conv.out_channels) == (64, 128)
    assert isinstance(m.pool1, nn.MaxPool2d) and isinstance(m.conv, nn.Conv2d)


# ---------------------------------------------------------------- patch nets / OnionNet baselines


def _conv(cin, cout, k, groups=1):
    return cin // groups * cout * k * k + cout


def _fc(cin, cout):
    return cin * cout + cout


# Closed forms from the layer lists (thesis Tables 3.1/3.2; OnionNet Table 1):
#   2ch:   C(2->96,7) + C(96->192,5) + C(192->256,3) + C(256->256,1) + F(256->1)
#   siam:  branch C(1->96,7) + C(96->192,5) + C(192->256,3), shared; F(512->512) + F(512->1)
#   pseudo-siam: two unshared branches, same top
#   P_M:   C4(2->96) + 3 x C3(96) + C3(96->192) + 2 x C3(192) + C2(192->1)
#   D_M:   C11(3->96) + C5(96->256, 2 groups) + C3(256->384) + C3(384->384, 2 groups)
#          + C3(384->256, 2 groups) + C6(256->4096) + C1(4096->4096) + C1(4096->21)
#   R_M:   C11(3->64) + C5(64->256) + 3 x C3(256) + C6(256->4096) + C1(4096->4096) + C1(4096->1000)
_BRANCH = _conv(1, 96, 7) + _conv(96, 192, 5) + _conv(192, 256, 3)
PATCH_CLOSED_FORM = {
    "patch_2ch": _conv(2, 96, 7) + _conv(96, 192, 5) + _conv(192, 256, 3) + _conv(256, 256, 1) + _fc(256, 1),
    "patch_siamese": _BRANCH + _fc(512, 512) + _fc(512, 1),
    "patch_pseudo_siamese": 2 * _BRANCH + _fc(512, 512) + _fc(512, 1),
    "onion_pm": _conv(2, 96, 4) + 3 * _conv(96, 96, 3) + _conv(96, 192, 3) + 2 * _conv(192, 192, 3)
    + _conv(192, 1, 2),
    "onion_dm": _conv(3, 96, 11) + _conv(96, 256, 5, 2) + _conv(256, 384, 3) + _conv(384, 384, 3, 2)
    + _conv(384, 256, 3, 2) + _conv(256, 4096, 6) + _conv(4096, 4096, 1) + _conv(4096, 21, 1),
    "onion_rm": _conv(3, 64, 11) + _conv(64, 256, 5) + 3 * _conv(256, 256, 3) + _conv(256, 4096, 6)
    + _conv(4096, 4096, 1) + _conv(4096, 1000, 1),
}


def test_every_entry_without_a_published_count_has_a_closed_form():
    """No entry goes unpinned: those without a published parameter count are counted by a
    closed form from their layer lists, here (PATCH_CLOSED_FORM) or in tests/test_onion.py (the
    cascades from the paper's §3.1 weight formula, the non-sharing baselines as S1 + N_M)."""
    from test_onion import MONO

    closed = set(PATCH_CLOSED_FORM) | {f"onion_{k}{tail}" for k in MONO for tail in ("", "_ns")}
    unpinned = sorted(e.name for e in registry.entries() if e.published_params is None and e.name not in closed)
    assert not unpinned


@pytest.mark.parametrize("name", sorted(PATCH_CLOSED_FORM))
def test_patch_and_onion_closed_form(name):
    expected = PATCH_CLOSED_FORM[name]
    assert n_params(build_meta(name)) == expected


def test_onion_pm_layers():
    m = build_meta("onion_pm")
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    # Table 1: C4(96), 3xC3(96), 3xC3(192), C2(1)
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == [
        (4, 96), (3, 96), (3, 96), (3, 96), (3, 192), (3, 192), (3, 192), (2, 1)]
    assert convs[0].stride == (3, 3)
    assert tuple(m(torch.zeros(1, 2, 64, 64, device="meta")).shape) == (1, 1)


def test_onion_dm_rm_feature_sizes():
    for name, table in [("onion_dm", [(11, 96), (5, 256), (3, 384), (3, 384), (3, 256), (6, 4096), (1, 4096), (1, 21)]),
                        ("onion_rm", [(11, 64), (5, 256), (3, 256), (3, 256), (3, 256), (6, 4096), (1, 4096),
                                      (1, 1000)])]:
        m = build_meta(name)
        convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
        assert [(c.kernel_size[0], c.out_channels) for c in convs] == table
    assert n_params(build_meta("onion_dm", groups=1)) > n_params(build_meta("onion_dm"))


def test_siamese_shares_and_pseudo_does_not():
    torch.manual_seed(0)
    siam = registry.get("patch_siamese").build().eval()
    pair = torch.randn(1, 1, 64, 64)
    x = torch.cat([pair, pair], dim=1)
    with torch.no_grad():
        d = siam.features(pair).flatten(1)
        # equal patches -> equal descriptors: the top layer sees [d, d]
        torch.testing.assert_close(siam(x), siam.classifier(torch.cat([d, d], dim=1)))
    pseudo = registry.get("patch_pseudo_siamese").build()
    assert pseudo.features1[0].weight.data_ptr() != pseudo.features2[0].weight.data_ptr()


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("name,kwargs,fragment", [
    ("resnet50", {"root": "3"}, "power of two"),
    ("resnet50", {"root": 0}, "power of two"),
    ("resnet50", {"root": 128}, "do not divide"),
    ("resnet50", {"variant": "v2"}, "variant"),
    ("resnet50", {"root": "many"}, "not a valid int"),
    ("resnet50", {"depth": 7}, "no argument"),
    ("resnet18", {"width_per_group": 128}, "width_per_group"),
    ("wrn50_2", {"root": 6}, "power of two"),
    ("wrn28_10", {"num_classes": 0}, "num_classes"),
    ("shufflenet_v2_x1_0", {"num_classes": -1}, "num_classes"),
    ("diracnet18", {"num_classes": 0}, "num_classes"),
    ("onion_dm", {"groups": 3}, "groups"),
])
def test_bad_kwargs_raise_surgery_error(name, kwargs, fragment):
    with pytest.raises(SurgeryError, match=fragment) as info:
        registry.get(name).build(**kwargs)
    assert "\n" not in str(info.value)


def test_string_kwargs_are_coerced():
    m = build_meta("resnet50", root="8", variant="v1")
    assert m.layer1[0].conv2.groups == 8 and m.layer1[0].conv1.stride == (1, 1)
    assert math.isclose(count_macs(m, (3, 224, 224)) / 1e9, 2.86, abs_tol=0.005)
