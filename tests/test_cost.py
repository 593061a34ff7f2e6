"""The counting engine: closed-form formulas on hand-built modules, published reference numbers
on zoo models and Darknet cfgs, and agreement with fvcore. Expected counts are derived from
formulas or published tables, never copied from the counter's output."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyzers.cost import CONVENTIONS, CostCounter, analyze, get_convention, sweep
from surgery.core.errors import SurgeryError
from surgery.core.io import load
from surgery.core.net import count_params
from zoo.resnet import DEEP_ROOTS_TABLE1

F32 = 4  # bytes per float32 element


def _seq(*mods) -> nn.Module:
    return nn.Sequential(*mods).eval()


# ----------------------------------------------------------------------------- conv formulas


@pytest.mark.parametrize("c1,c2,h,w", [(16, 16, 8, 8), (3, 64, 17, 13), (128, 32, 7, 7)])
def test_conv1x1_memory_access_cost_closed_form(c1, c2, h, w):
    """ShuffleNet v2 eq. (1): MAC of a bare 1x1 conv = hw(c1+c2) + c1c2 elements; B = hw·c1·c2."""
    rep = analyze(_seq(nn.Conv2d(c1, c2, 1, bias=False)), (c1, h, w))
    (layer,) = rep.layers
    assert layer.macs == h * w * c1 * c2
    assert layer.flops == 2 * layer.macs
    assert layer.bytes_read + layer.bytes_written == F32 * (h * w * (c1 + c2) + c1 * c2)
    (op,) = [o for o in layer.ops if o.cls != "view"]
    assert op.bytes_read + op.bytes_written == F32 * (h * w * (c1 + c2) + c1 * c2)
    assert layer.params == c1 * c2 and op.params == c1 * c2


def test_conv1x1_mac_is_minimal_for_equal_channels():
    """Guideline G1: at fixed FLOPs (c1·c2 = 1024) the memory access cost is least at c1 = c2."""
    costs = {}
    for c1 in (4, 8, 16, 32, 64, 128, 256):
        c2 = 1024 // c1
        costs[c1] = analyze(_seq(nn.Conv2d(c1, c2, 1, bias=False)), (c1, 28, 28)).totals.bytes
    assert min(costs, key=costs.get) == 32


@pytest.mark.parametrize("cin,cout,k,stride,pad,groups,dil,hw", [
    (32, 64, 3, 1, 1, 1, 1, 20),  # dense
    (32, 64, 3, 2, 1, 4, 1, 21),  # grouped, strided, odd size
    (48, 48, 3, 1, 1, 48, 1, 16),  # depthwise
    (16, 32, 5, 1, 4, 2, 2, 15),  # grouped, dilated
    (24, 96, 1, 1, 0, 3, 1, 9),  # grouped 1x1
])
def test_conv_macs_by_formula(cin, cout, k, stride, pad, groups, dil, hw):
    conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dil, groups=groups, bias=True)
    rep = analyze(_seq(conv), (cin, hw, hw), batch=3)
    out = (hw + 2 * pad - dil * (k - 1) - 1) // stride + 1
    assert rep.layers[0].output_shape == (cout, out, out)
    assert rep.totals.macs == 3 * out * out * cout * (cin // groups) * k * k  # bias not counted
    assert rep.totals.params == cout * (cin // groups) * k * k + cout


@pytest.mark.parametrize("cin,cout,k,stride,groups", [(16, 8, 4, 2, 1), (32, 32, 3, 2, 4), (8, 8, 3, 1, 8)])
def test_transposed_conv_macs_by_formula(cin, cout, k, stride, groups):
    """A transposed conv multiplies every *input* pixel by a (cout/g)·k² filter slice."""
    h = 11
    rep = analyze(_seq(nn.ConvTranspose2d(cin, cout, k, stride, groups=groups, bias=False)), (cin, h, h))
    assert rep.totals.macs == h * h * cin * (cout // groups) * k * k
    assert rep.layers[0].output_shape == (cout, (h - 1) * stride + k, (h - 1) * stride + k)


def test_linear_macs_and_bias_excluded():
    rep = analyze(_seq(nn.Flatten(), nn.Linear(300, 70)), (3, 10, 10), batch=5)
    assert rep.totals.macs == 5 * 300 * 70
    assert rep.value("darknet") == 0  # Darknet's column: convolutions only
    assert rep.value("flops") == 2 * 5 * 300 * 70 == rep.totals.flops


# ----------------------------------------------------------------------------- other ops


class Residual(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


def test_residual_add_is_its_own_layer_counted_once():
    c, h = 8, 12
    rep = analyze(Residual(c).eval(), (c, h, h), batch=2)
    n = 2 * c * h * h
    adds = [l for l in rep.layers if l.type == "add"]
    assert len(adds) == 1
    (add,) = adds
    assert add.kind == "function" and add.macs == 0 and add.other_macs == n
    assert add.bytes_read == 2 * n * F32 and add.bytes_written == n * F32
    assert add.input_shapes == ((c, h, h), (c, h, h))
    assert sum(op.op == "aten.add" for l in rep.layers for op in l.ops) == 1
    assert rep.value("macs") == 2 * h * h * c * c * 9  # the add is not in "macs" (batch 2, one 3x3 conv)
    assert rep.value("all") == rep.totals.macs + rep.totals.other_macs


def test_other_class_formulas_and_fvcore_mirror():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)
            self.pool = nn.MaxPool2d(2)
            self.ap = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):  # x: (1, 4, 8, 8)
            y = torch.sigmoid(self.bn(x))
            up = F.interpolate(y, scale_factor=2, mode="nearest")  # (1, 4, 16, 16)
            bi = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            cat = torch.cat([up, bi], 1)  # (1, 8, 16, 16)
            p = self.pool(cat)  # (1, 8, 8, 8)
            return torch.softmax(self.ap(p).flatten(1), 1)

    rep = analyze(M().eval(), (4, 8, 8))
    by = {l.type: l for l in rep.layers}
    n = 4 * 8 * 8
    assert by["BatchNorm2d"].other_macs == n and by["BatchNorm2d"].fvcore_macs == 2 * n
    assert by["sigmoid"].other_macs == n and by["sigmoid"].fvcore_macs == 0
    interp = [l for l in rep.layers if l.type == "interpolate"]
    assert [l.other_macs for l in interp] == [0, 4 * 4 * 16 * 16]  # nearest is a gather; bilinear 4/element
    assert [l.fvcore_macs for l in interp] == [4 * 16 * 16, 4 * 4 * 16 * 16]
    assert by["cat"].other_macs == 0 and by["cat"].bytes_read == by["cat"].bytes_written == 8 * 16 * 16 * F32
    assert by["MaxPool2d"].other_macs == 4 * 8 * 8 * 8  # kernel area per output element
    assert by["AdaptiveAvgPool2d"].other_macs == by["AdaptiveAvgPool2d"].fvcore_macs == 8 * 8 * 8
    assert by["softmax"].other_macs == 3 * 8
    assert rep.totals.macs == 0 and not rep.uncounted


def test_scatter_reductions_count_one_per_source_element():
    """scatter_add / scatter_reduce (Darknet's hierarchical softmax uses both) and index_add:
    one combine per source element, whatever the size of the destination."""

    class M(nn.Module):
        def forward(self, x):  # x: (2, 9)
            b = x.shape[0]
            idx = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3], device=x.device).expand(b, 9)
            top = x.new_full((b, 4), float("-inf")).scatter_reduce(1, idx, x, "amax")
            total = x.new_zeros((b, 4)).scatter_add(1, idx, x)
            return top, total, x.new_zeros((b, 5)).index_add(1, torch.tensor([0, 4], device=x.device), x[:, :2])

    rep = analyze(M(), (9,), batch=2, strict=True)
    ops = {o.op: o for l in rep.layers for o in l.ops}
    assert ops["aten.scatter_reduce"].other_macs == ops["aten.scatter_add"].other_macs == 2 * 9
    assert ops["aten.index_add"].other_macs == 2 * 2
    assert rep.totals.macs == 0 and not rep.uncounted


def test_uncounted_ops_listed_with_elements_and_strict_fails():
    class M(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1) * 2

    rep = analyze(M(), (5, 7))
    (u,) = rep.uncounted
    assert u.op == "aten.cumsum" and u.calls == 1 and u.input_elements == 35 and u.output_elements == 35
    assert any("uncounted" in n for n in rep.notes)
    with pytest.raises(SurgeryError, match="cumsum"):
        analyze(M(), (5, 7), strict=True)


# ----------------------------------------------------------------------------- params, bytes, purity


def test_shared_module_params_counted_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.head(self.conv(self.conv(x)))

    m = Twice().eval()
    rep = analyze(m, (6, 9, 9))
    convs = [l for l in rep.layers if l.name == "conv"]
    assert len(convs) == 2 and convs[0].params == 6 * 6 * 9 + 6 and convs[1].params == 0
    assert convs[0].macs == convs[1].macs == 81 * 36 * 9
    assert rep.totals.params == count_params(m)


def test_analysis_never_changes_the_model():
    m = Residual(4).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    analyze(m, (4, 6, 6), dtype="float16")
    assert m.training and all(x.training for x in m.modules())
    after = m.state_dict()
    assert all(after[k].device.type == "cpu" and after[k].dtype == before[k].dtype for k in before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(x._forward_hooks or x._forward_pre_hooks for x in m.modules())


def test_batch_and_dtype_scaling():
    m = _seq(nn.Conv2d(8, 16, 3, padding=1, bias=False))
    one, four = sweep(m, [(8, 10, 10)], [1, 4])
    assert four.totals.macs == 4 * one.totals.macs
    w = 16 * 8 * 9 * F32  # weights are read once per batch
    assert four.totals.bytes_read - w == 4 * (one.totals.bytes_read - w)
    half = analyze(m, (8, 10, 10), dtype="float16")
    assert half.dtype == "float16" and 2 * half.totals.bytes == one.totals.bytes
    with pytest.raises(SurgeryError, match="dtype"):
        analyze(m, (8, 10, 10), dtype="int7")


def test_huge_input_is_counted_on_meta():
    """3x8192x8192 with batch 16 would need 25 GiB of activations for real; on meta it is free."""
    m = _seq(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1, bias=False))
    rep = analyze(m, (3, 8192, 8192), batch=16)
    hw = 8192 * 8192
    assert rep.totals.macs == 16 * (hw * 3 * 32 * 9 + hw // 4 * 32 * 32 * 9)
    assert rep.layers[-1].output_shape == (32, 4096, 4096)


def test_hook_fallback_when_fx_cannot_trace():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def forward(self, x):
            for _ in range(x.shape[0]):  # range(Proxy) defeats torch.fx
                x = x * 1.0
            return self.conv(x) + 1

    rep = analyze(Loop(), (3, 5, 5), batch=2)
    assert rep.method == "hooks" and "module hooks" in rep.notes[0]
    assert rep.totals.macs == 2 * 25 * 3 * 4 * 9
    assert [l.type for l in rep.layers] == ["mul", "mul", "Conv2d", "add"]
    assert rep.layers[2].params == 3 * 4 * 9


def test_totals_views_and_upto():
    rep = analyze(load("zoo:resnet18"))
    t = rep.totals
    assert t.flops == 2 * t.macs and t.bytes == t.bytes_read + t.bytes_written
    assert sum(g.macs for g in rep.by_module(1)) == t.macs
    assert sum(g.params for g in rep.by_module(2)) == t.params
    assert sum(g.bytes for g in rep.by_module(1)) == t.bytes
    ops = rep.by_operator()
    assert ops[0].key == "aten.convolution" and sum(g.macs for g in ops) == t.macs
    assert rep.upto(rep.layers[-1].index) == t
    k = 10
    assert rep.upto(k).macs == sum(l.macs for l in rep.layers[: k + 1])
    assert rep.value("flops") == t.flops and rep.value("fvcore") == t.fvcore_macs
    assert set(CONVENTIONS) >= {"macs", "flops", "darknet", "fvcore"}
    with pytest.raises(SurgeryError, match="convention"):
        get_convention("gflops")


def test_counter_reuse_matches_fresh_analysis():
    net = load("zoo:resnet18")
    c = CostCounter(net)
    a, b = c.run((3, 64, 64), 2), c.run((3, 64, 64), 2)
    assert a.totals == b.totals == analyze(net, (3, 64, 64), batch=2).totals


# ----------------------------------------------------------------------------- published numbers


# Deep Roots (Ioannou et al. 2016) Table 1 (zoo.resnet.DEEP_ROOTS_TABLE1): ResNet-50 (original v1),
# root-n; FLOPS are multiply-adds (3 significant figures), params are conv + fc weights and biases
# (Caffe's BN/Scale not counted).
@pytest.mark.parametrize("root", sorted(DEEP_ROOTS_TABLE1))
def test_resnet50_root_family_matches_deep_roots_table1(root):
    net = load(f"zoo:resnet50:variant=v1,root={root}")
    rep = analyze(net)
    macs, params = DEEP_ROOTS_TABLE1[root]
    assert round(rep.totals.macs / 1e9, 2) == round(macs / 1e9, 2)
    bn = sum(l.params for l in rep.layers if l.type == "BatchNorm2d")
    assert round((rep.totals.params - bn) / 1e7, 2) == round(params / 1e7, 2)
    assert rep.totals.params == net.params and not rep.uncounted


def test_resnet50_v1_vs_v15():
    """DESIGN.md: 3.86e9 MACs for the original ResNet-50, 4.09e9 for torchvision's v1.5."""
    assert round(analyze(load("zoo:resnet50")).totals.macs / 1e9, 2) == 4.09


def test_shufflenet_v2_x1_0_about_146m_macs():
    """Ma et al. 2018, Table 5: ShuffleNet v2 1x = 146M FLOPs (multiply-adds), 2.3M params."""
    rep = analyze(load("zoo:shufflenet_v2_x1_0"))
    assert rep.totals.macs == pytest.approx(146e6, rel=0.01)
    assert round(rep.totals.params / 1e6, 1) == 2.3


@pytest.mark.parametrize("ref,shape", [("zoo:resnet50:variant=v1,root=8", None), ("zoo:shufflenet_v2_x1_0", None),
                                       ("zoo:yolov3_tiny", (3, 160, 160))])
def test_native_macs_equal_fvcore(ref, shape):
    from analyzers.fvcore_backend import fvcore_count

    net = load(ref)
    rep = analyze(net, shape)
    fv = fvcore_count(net, shape)
    assert rep.totals.macs == fv.matmul_macs  # conv + linear multiply-accumulates
    assert rep.value("fvcore") == fv.total  # and the fvcore convention reproduces all of fvcore
    by_layer = {l.name: l.fvcore_macs for l in rep.layers if l.kind == "module"}
    assert all(fv.by_module[name] == v for name, v in by_layer.items() if name in fv.by_module)


# ----------------------------------------------------------------------------- Darknet


def _darknet_bflops(layer) -> float:
    """Darknet's convolutional_layer.c: bflops = 2 · (c/groups) · n · size² · out_h · out_w / 1e9."""
    c = layer.conv
    _, oh, ow = layer.out_shape
    return 2 * (c.in_channels // c.groups) * c.out_channels * c.kernel_size[0] * c.kernel_size[1] * oh * ow / 1e9


def test_every_darknet_cfg_lines_up_with_darknet(darknet_dir):
    cfgs = sorted(darknet_dir.glob("*.cfg"))
    assert cfgs
    for cfg in cfgs:
        net = load(str(cfg))
        rep = analyze(net)
        assert [l.index for l in rep.layers] == list(range(len(net.module.layers))), cfg.name
        for l in rep.layers:
            mod = net.module.layers[l.index]
            assert l.type == mod.section and l.output_shape == tuple(mod.out_shape), (cfg.name, l.index)
            if mod.section == "convolutional":
                assert l.flops / 1e9 == pytest.approx(_darknet_bflops(mod), rel=1e-12, abs=0), (cfg.name, l.index)
        assert rep.totals.params == net.params and not rep.uncounted, cfg.name


def test_yolov3_416_total_bflops(darknet_dir):
    """pjreddie.com/darknet/yolo: YOLOv3-416 = 65.86 Bn FLOPs (Darknet's BFLOPs total)."""
    for net in (load("zoo:yolov3"), load(str(darknet_dir / "yolov3.cfg"), input_shape=(3, 416, 416))):
        rep = analyze(net)
        assert round(rep.value("darknet") / 1e9, 2) == 65.86
        assert rep.value("darknet") == 2 * rep.totals.conv_macs
        assert [l.index for l in rep.layers] == list(range(107))


def test_darknet_fused_layer_bytes_at_layer_boundary(darknet_dir):
    """A conv+BN+leaky layer reads its input and its weights once and writes its output once."""
    rep = analyze(load(str(darknet_dir / "yolov3.cfg"), input_shape=(3, 416, 416)))
    l1 = rep.layer(1)  # conv 64 3x3/2: 32x416x416 -> 64x208x208, batch_normalize=1
    weights = 64 * 32 * 9 + 4 * 64  # conv weight + BN weight, bias, running mean, running var
    assert l1.bytes_read == F32 * (32 * 416 * 416 + weights)
    assert l1.bytes_written == F32 * 64 * 208 * 208
    unfused = sum(op.bytes_read + op.bytes_written for op in l1.ops)
    assert unfused > l1.bytes  # conv output → BN → leaky would travel three more times


# shared-backbone-yolov3 Table I: fraction of weights and FLOPs in layers 0..k of YOLOv3-416.
SHARE_TABLE = {73: (0.655, 0.744), 64: (0.401, 0.663), 48: (0.156, 0.505), 40: (0.092, 0.424)}


def test_shared_backbone_fractions(darknet_dir):
    """FLOPs: the conv-layer count (Darknet's column; equal to 'macs' here: YOLOv3 has only convs).
    Weights: every parameter. Both within 0.001 of the paper's rounded figures (at k=64 the
    FLOPs fraction is 0.6637, at k=48 the weights fraction 0.1555)."""
    net = load(str(darknet_dir / "yolov3.cfg"), input_shape=(3, 416, 416))
    rep = analyze(net)
    t = rep.totals
    for k, (weights, flops) in SHARE_TABLE.items():
        part = rep.upto(k)
        assert part.params / t.params == pytest.approx(weights, abs=1e-3), k
        assert part.conv_macs / t.conv_macs == pytest.approx(flops, abs=1e-3), k
    assert rep.upto(73).macs == rep.upto(74).macs  # layer 74 is a shortcut: DESIGN's "73 or 74"
    # the paper's weights are the .weights file's floats (BN running statistics included)
    bufs = [sum(b.numel() for n, b in m.named_buffers() if "running" in n) for m in net.module.layers]
    for k, (weights, _) in SHARE_TABLE.items():
        frac = (rep.upto(k).params + sum(bufs[: k + 1])) / (t.params + sum(bufs))
        assert round(frac, 3) == weights, k
    assert math.isclose(rep.upto(73).conv_macs / t.conv_macs, 0.744, abs_tol=5e-4)


# ----------------------------------------------------------------------------- engine internals


def test_output_shortcuts_match_the_real_meta_kernels():
    """counting.py makes the outputs of conv, cat, BN and pointwise ops itself (speed); they must be
    exactly what the meta kernels return."""
    from analyzers.shortcuts import shortcut as _shortcut

    aten = torch.ops.aten
    m = lambda *s: torch.empty(s, device="meta")  # noqa: E731
    cases = [
        (aten.convolution.default, (m(2, 8, 15, 17), m(16, 4, 3, 3), None, [2, 1], [1, 0], [1, 2], False, [0, 0], 2)),
        (aten.convolution.default, (m(1, 8, 9, 9), m(8, 3, 4, 4), m(6), [2, 2], [1, 1], [1, 1], True, [1, 1], 2)),
        (aten.convolution.default, (m(3, 4, 20), m(6, 4, 5), None, [3], [2], [1], False, [0], 1)),
        (aten.convolution.default, (m(1, 4, 6, 6, 6), m(4, 1, 3, 3, 3), None, [1, 1, 1], [1, 1, 1], [1, 1, 1],
                                    False, [0, 0, 0], 4)),
        (aten.cat.default, ([m(2, 3, 4), m(2, 5, 4)], 1)),
        (aten.cat.default, ([m(2, 3, 4), m(2, 3, 4)], -1)),
        (aten.relu.default, (m(2, 3, 4, 5).to(memory_format=torch.channels_last),)),
        (aten.leaky_relu.default, (m(2, 3), 0.1)),
        (aten.add.Tensor, (m(2, 3, 4), m(2, 3, 4))),
        (aten.mul.Tensor, (m(2, 3, 4), 2.0)),
        (aten.native_batch_norm.default, (m(2, 6, 5, 5), m(6), m(6), m(6), m(6), False, 0.1, 1e-5)),
        (aten._native_batch_norm_legit_no_training.default, (m(2, 6, 5, 5).half(), m(6), m(6), m(6), m(6), 0.1, 1e-5)),
        (aten.upsample_nearest2d.default, (m(2, 3, 5, 7), [10, 21])),
        (aten.upsample_nearest2d.vec, (m(2, 3, 5, 7), None, [2.0, 1.5])),
        (aten.max_pool2d_with_indices.default, (m(1, 4, 13, 13), [3, 3], [2, 2], [1, 1])),
        (aten.max_pool2d_with_indices.default, (m(1, 4, 13, 13), [2], [1], [0], [1], False)),
        (aten.max_pool2d_with_indices.default, (m(2, 4, 14, 15), [3, 2], [2, 2], [1, 0], [1, 1], True)),
        (aten.max_pool2d_with_indices.default, (m(1, 2, 11, 11), [3, 3], [], [0, 0], [2, 2], True)),
    ]
    for func, args in cases:
        fast, real = _shortcut(func, args, {}), func(*args)
        assert fast is not None, func
        fast = fast if isinstance(fast, tuple) else (fast,)
        real = real if isinstance(real, tuple) else (real,)
        for a, b in zip(fast, real):
            assert (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device), func
    # cases it must leave to the kernel
    assert _shortcut(aten.add.Tensor, (m(2, 3, 4), m(1, 3, 1)), {}) is None  # broadcasting
    assert _shortcut(aten.cat.default, ([m(2, 3), m(2, 3).t()], 0), {}) is None  # non-contiguous
    assert _shortcut(aten.convolution.default, (m(1, 3, 2, 2), m(4, 3, 5, 5), None, [1, 1], [0, 0], [1, 1], False,
                                                [0, 0], 1), {}) is None  # empty output: the kernel raises


def test_formula_registry_refuses_a_second_formula_for_an_op():
    from analyzers import formulas

    conv = torch.ops.aten.convolution
    assert formulas.FORMULAS[conv].__name__ == "_matmul"
    with pytest.raises(ValueError, match="already registered"):
        formulas.register_formula([conv])(lambda args, kwargs, out, c: None)
    assert formulas.FORMULAS[conv].__name__ == "_matmul"  # the refusal changed nothing


def test_recipe_registry_refuses_a_second_replay_for_an_op():
    from surgery.core import recipe

    def replay_a(module, args):
        return module

    def replay_b(module, args):
        return module

    recipe.replayable("test-only-op")(replay_a)
    try:
        with pytest.raises(RuntimeError, match="registered twice"):
            recipe.replayable("test-only-op")(replay_b)
    finally:
        recipe._REPLAY.pop("test-only-op", None)


def test_dtype_aliases_have_one_home():
    from surgery.core.dtypes import dtype_name, torch_dtype

    assert [dtype_name(n) for n in ("fp16", "half", "bf16", "torch.float32", "double")] == [
        "float16", "float16", "bfloat16", "float32", "float64"]
    assert torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(SurgeryError, match="float16"):
        dtype_name("int8")
    assert analyze(nn.Conv2d(3, 4, 1), (3, 8, 8), dtype="half").dtype == "float16"
