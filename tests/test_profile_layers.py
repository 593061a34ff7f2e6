"""``surgery profile --by layer|kind`` and :mod:`analyzers.layer_profile`.

Expected values come from closed forms (conv MACs = H·W·c_out·c_in/groups·k², 1×1 conv traffic
hw(c1+c2)+c1c2 elements), from the layer table of ``surgery layers`` and from the kinds of
hand-built ops; no test asserts how long anything takes. The one comparison of two measured
times is between twin layers whose work differs 4× and which run in the same forward passes.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from analyzers.cost import analyze
from analyzers.latency import TimingConfig
from analyzers.layer_kinds import KINDS, kind_of_aten, kind_of_category, kind_of_ort, shuffle_layers
from analyzers.layer_measure import ranged_module, scoped_module
from analyzers.layer_profile import LayerProfileReport, profile_layers
from conftest import run_cli
from surgery.core.errors import SurgeryError
from surgery.core.graph import layer_graph
from surgery.core.net import Net

FAST = TimingConfig(warmup=2, warmup_s=0.0, min_runs=5, max_runs=40, min_time_s=0.2, max_time_s=5.0)
HW = 16


class Block(nn.Module):
    """conv3x3 → BN → ReLU; cat with its input; channel shuffle (g=2); 1×1 conv; residual add;
    global mean; linear: one op of every kind."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        z = torch.cat((x, y), dim=1)  # (8, H, W)
        n, h, w = z.size(0), z.size(2), z.size(3)
        z = z.view(n, 2, 4, h, w)
        z = torch.transpose(z, 1, 2).contiguous()
        z = z.view(n, -1, h, w)  # channel shuffle
        z = self.pw(z) + z
        return self.fc(z.mean([2, 3]))


class Twins(nn.Module):
    """Two 3×3 convs on the same input, the second with 2× the channels in and out: 4× the MACs."""

    def __init__(self):
        super().__init__()
        self.small = nn.Conv2d(48, 48, 3, padding=1, bias=False)
        self.big = nn.Conv2d(96, 96, 3, padding=1, bias=False)

    def forward(self, x):  # x: (96, H, W)
        return self.small(x[:, :48]), self.big(x)


def block_net() -> Net:
    torch.manual_seed(0)
    return Net(Block().eval(), None, (4, HW, HW), source="block")


@pytest.fixture(scope="module")
def eager():
    return profile_layers(block_net(), runtime="torch", threads=1, timing=FAST)


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnxruntime")
    return profile_layers(block_net(), runtime="onnxruntime", threads=1, timing=FAST)


def _by_name(rep: LayerProfileReport) -> dict:
    return {l.name: l for l in rep.layers}


# ------------------------------------------------------------------ classification (no timing)


def test_kind_tables_name_the_seed_categories():
    assert [kind_of_category(c) for c in ("conv", "batch_norm", "activation", "elementwise", "concat", "view",
                                          "movement", "pool", "matmul", "reduction")] == [
        "convolution", "element-wise", "element-wise", "element-wise", "data movement", "data movement",
        "data movement", "other", "other", "other"]
    assert kind_of_aten("aten::relu_") == "element-wise" and kind_of_aten("aten::cat") == "data movement"
    assert kind_of_aten("aten::mkldnn_convolution") == "convolution" and kind_of_aten("aten::addmm") == "other"
    assert kind_of_aten("aten::conv2d") is None  # a composite: what it runs decides
    assert [kind_of_ort(o) for o in ("FusedConv", "Relu", "Transpose", "ReorderInput", "GlobalAveragePool")] == [
        "convolution", "element-wise", "data movement", "data movement", "other"]


def test_the_shuffle_is_found_from_shapes():
    net = block_net()
    lg = layer_graph(net.module)
    found = {l.name for l in lg.layers if l.index in shuffle_layers(lg, analyze(net))}
    assert found == {"view", "transpose", "contiguous", "view_1"}


def test_ranged_and_scoped_graphs_compute_the_model():
    net = block_net()
    x = net.example_input(2)
    want = net.module(x)
    gm, lg = ranged_module(net.module)
    starts = [n for n in gm.graph.nodes if n.target is torch.ops.profiler._record_function_enter_new]
    assert [n.args[0] for n in starts] == [f"surgery_layer_{l.index}" for l in lg.layers]
    torch.testing.assert_close(gm(x), want)
    sm, _ = scoped_module(net.module)
    assert {n.target for n in sm.graph.nodes if n.op == "call_module"} == {f"surgery_layer_{l.index}" for l in lg.layers}
    torch.testing.assert_close(sm(x), want)


# ------------------------------------------------------------------ the report


@pytest.mark.parametrize("which", ["eager", "ort"])
def test_layers_are_the_layer_table_with_closed_form_costs(which, request):
    rep = request.getfixturevalue(which)
    table = analyze(block_net()).layers
    assert [(l.index, l.name) for l in rep.layers if l.index is not None] == [(l.index, l.name) for l in table]
    by = _by_name(rep)
    assert by["conv"].macs == HW * HW * 4 * 4 * 9
    assert by["pw"].macs == HW * HW * 8 * 8
    assert by["fc"].macs == 8 * 3
    # a bare 1x1 conv moves hw(c1 + c2) + c1·c2 elements (ShuffleNet v2's memory access cost), float32
    assert by["pw"].bytes == 4 * (HW * HW * (8 + 8) + 8 * 8)
    assert sum(l.share for l in rep.layers) == pytest.approx(1.0)
    assert sum(l.macs_share for l in rep.layers) == pytest.approx(1.0)
    assert sum(k.share for k in rep.kinds) == pytest.approx(1.0)
    assert [k.kind for k in rep.kinds] == list(KINDS)
    kinds = {k.kind: k for k in rep.kinds}
    assert kinds["convolution"].macs == by["conv"].macs + by["pw"].macs
    assert kinds["other"].macs == by["fc"].macs
    assert kinds["element-wise"].macs == kinds["data movement"].macs == kinds["channel shuffle"].macs == 0
    assert kinds["channel shuffle"].bytes > 0 and kinds["data movement"].bytes > 0  # the cat and the copy move data
    for l in rep.layers:
        assert l.p10_ms <= l.median_ms <= l.p90_ms
        if l.median_ms > 0 and l.macs:
            assert l.gmacs_per_s == pytest.approx(l.macs / l.median_ms / 1e6)
        if l.roofline_ms is not None and l.median_ms > 0:
            assert l.roofline_pct == pytest.approx(100 * l.roofline_ms / l.median_ms)
        if l.excess is not None:
            assert l.excess == pytest.approx(l.share / max(l.macs_share, l.bytes_share))
        if l.flag:
            assert l.share >= 0.005 and (l.excess is None or l.excess >= 2.0)
    assert rep.runs >= FAST.min_runs and rep.batch == 1 and rep.threads == 1


def test_eager_kinds_of_known_layers(eager):
    by = _by_name(eager)
    assert by["conv"].kind == by["pw"].kind == "convolution"
    assert by["bn"].kind == by["relu"].kind == by["add"].kind == "element-wise"
    assert by["cat"].kind == "data movement"
    assert {by[n].kind for n in ("view", "transpose", "contiguous", "view_1")} == {"channel shuffle"}
    assert by["mean"].kind == by["fc"].kind == "other"
    assert all(l.median_ms > 0 for l in eager.layers)  # every layer has its own range in every run


def test_eager_layer_ranges_nest_in_the_forward(eager):
    # layer ranges lie inside the forward's range: their sum is at most the profiled forward (medians of
    # different runs may differ by a little), and the report states the gaps as differences
    assert eager.layers_sum_ms <= 1.10 * eager.profiled_ms
    j = eager.to_json()
    assert j["overhead_ms"] == pytest.approx(j["profiled_ms"] - j["model_ms"])
    assert j["unattributed_ms"] == pytest.approx(j["profiled_ms"] - j["layers_sum_ms"])


def test_ort_maps_nodes_back_to_layers(ort):
    by = _by_name(ort)
    assert ort.runtime == "onnxruntime:cpu"
    assert by["conv"].median_ms > 0 and by["pw"].median_ms > 0  # each conv kernel found its layer
    assert by["conv"].kind == "convolution"
    for name in ("bn", "relu"):  # folded / fused into the conv before them, or kernels of their own
        assert by[name].median_ms > 0 or "fused" in by[name].note
    assert not any(l.index is None for l in ort.layers), [l for l in ort.layers if l.index is None]


def test_the_4x_twin_takes_the_larger_share():
    torch.manual_seed(0)
    net = Net(Twins().eval(), None, (96, 28, 28), source="twins")
    rep = profile_layers(net, runtime="torch", threads=1, timing=FAST)
    by = _by_name(rep)
    assert by["big"].macs == 4 * by["small"].macs
    assert by["big"].share > by["small"].share


def test_top_and_json(eager):
    top = eager.top(3)
    assert len(top) == 3 and [l.median_ms for l in top] == sorted((l.median_ms for l in top), reverse=True)
    j = json.loads(json.dumps(eager.to_json(top=3)))
    assert [l["index"] for l in j["layers"]] == [l.index for l in top]
    assert {k["kind"] for k in j["kinds"]} == set(KINDS)
    assert j["totals"]["macs"] == HW * HW * (4 * 4 * 9 + 8 * 8) + 24


def test_bad_arguments():
    with pytest.raises(SurgeryError, match="one runtime"):
        profile_layers(block_net(), runtime="compile", timing=FAST)
    with pytest.raises(SurgeryError, match="CUDA"):
        profile_layers(block_net(), device="cuda", timing=FAST)
    with pytest.raises(SurgeryError, match="batch"):
        profile_layers(block_net(), batch=0, timing=FAST)


# ------------------------------------------------------------------ the console script


def test_cli_by_layer_json_and_top(tmp_path):
    res = run_cli("profile", "zoo:digits_cnn", "--by", "layer", "--top", "3", "--min-time", "0.05", "--min-runs", "3",
                  "--json", "--plot", tmp_path / "layers.png", cwd=tmp_path)
    assert res.code == 0, res.err
    j = res.json()
    assert len(j["layers"]) == 3 and j["runtime"] == "torch"
    assert [l["median_ms"] for l in j["layers"]] == sorted((l["median_ms"] for l in j["layers"]), reverse=True)
    assert (tmp_path / "layers.png").stat().st_size > 0


def test_cli_by_kind_table_and_csv():
    res = run_cli("profile", "zoo:digits_cnn", "--by", "kind", "--min-time", "0.05", "--min-runs", "3",
                  "--runtime", "onnxruntime")
    assert res.code == 0, res.err
    for k in KINDS:
        assert k in res.out
    assert "profiler overhead" in res.out and "the layers add up to" in res.out
    res = run_cli("profile", "zoo:digits_cnn", "--by", "kind", "--min-time", "0.05", "--min-runs", "3", "--csv")
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    assert lines[0].startswith("kind,time_ms,share") and len(lines) == 1 + len(KINDS)


@pytest.mark.parametrize("args,msg", [
    (["--top", "3"], "needs --by layer"),
    (["--by", "module"], "choose layer or kind"),
    (["--by", "kind", "--top", "2"], "use it with --by layer"),
    (["--by", "layer", "--runtime", "torch,onnxruntime"], "one runtime at a time"),
    (["--by", "layer", "--batch", "1,2"], "one batch size"),
    (["--by", "layer", "--device", "cuda"], "CUDA"),
])
def test_cli_refusals_are_one_line(args, msg):
    res = run_cli("profile", "zoo:digits_cnn", *args)
    assert res.code == 2 and msg in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_cli_one_model_only():
    res = run_cli("profile", "zoo:digits_cnn", "zoo:digits_cnn", "--by", "layer")
    assert res.code == 2 and "one model at a time" in res.err
