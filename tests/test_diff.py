"""Weight differences (analyzers/diff.py, analyzers/diff_plot.py, `surgery diff`)."""

from __future__ import annotations

import copy
import csv
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from analyzers import diff as D
from analyzers import diff_report as R
from analyzers import diff_split as SP
from analyzers import diff_stats as ST
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.net import ArchSpec, Net

# A small Darknet net: convs with BN (biases = BN beta), shortcuts, a last conv without BN.
#   0 conv  1 conv/2  2 conv1x1  3 conv  4 shortcut  5 conv/2  6 conv1x1  7 conv  8 shortcut  9 conv (no BN)
TINY_CFG = """
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
filters={classes}
size=1
stride=1
pad=1
activation=linear
"""
CONV_LAYERS = (0, 1, 2, 3, 5, 6, 7, 9)


def tiny_net(classes: int = 6, seed: int = 0, extra: str = "") -> Net:
    """Every tensor random and away from zero, so all relative differences are defined."""
    from zoo.darknet import build_darknet

    text = TINY_CFG.format(classes=classes) + extra
    module = build_darknet(text, source="tiny.cfg")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else torch.randn(t.shape, generator=g))
    module.eval()
    return Net(module, ArchSpec("darknet", "tiny.cfg", {}, cfg=text), module.input_shape, source="tiny.cfg",
               format="darknet")


def perturbed(net: Net, after: int, scale: float = 0.1, seed: int = 1) -> Net:
    """A copy whose tensors in layers > after get noise of ``scale`` x mean|A| (same law everywhere)."""
    module = copy.deepcopy(net.module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and int(name.split(".")[1]) > after:
                t.add_(torch.randn(t.shape, generator=g) * scale * t.abs().mean())
    return net.evolve(module, source="perturbed")


# ----------------------------------------------------------------------------- statistics

DISTS = {
    "exp": lambda rng, n: rng.exponential(size=n),
    "lognormal": lambda rng, n: rng.lognormal(0, 3, size=n),
    "zeros": lambda rng, n: np.zeros(n),
    "ties": lambda rng, n: rng.integers(0, 4, size=n),
    "sparse": lambda rng, n: rng.exponential(size=n) * (rng.random(n) < 0.05),
}


@pytest.mark.parametrize("n", [1, 2, 7, 1000, ST._SMALL + 1, 300_001])
@pytest.mark.parametrize("dist", sorted(DISTS))
def test_box_stats_match_matplotlib(n, dist):
    """Both paths (sort for small samples, radix histogram for large ones) give matplotlib's boxes."""
    from matplotlib.cbook import boxplot_stats

    d = DISTS[dist](np.random.default_rng(n), n).astype(np.float32)
    s = ST.box_stats(d)
    ref = boxplot_stats(d)[0]
    for ours, theirs in (("mean", "mean"), ("q1", "q1"), ("median", "med"), ("q3", "q3"),
                         ("whisker_low", "whislo"), ("whisker_high", "whishi")):
        assert getattr(s, ours) == pytest.approx(float(ref[theirs]), rel=1e-6, abs=0), ours
    assert s.outliers == len(ref["fliers"])
    assert s.outliers_high == int((ref["fliers"] > ref["whishi"]).sum())
    assert (s.min, s.max) == (float(d.min()), float(d.max()))


def test_known_perturbation_gives_exact_relative_differences():
    a = torch.full((1000,), 2.0)
    a[::2] = -2.0  # sign does not matter: mean|A| = 2
    delta = torch.linspace(0, 1, 1000)  # |B - A| / 2 is uniform on [0, 0.5]
    s, scale, rel = ST.relative_diff_stats(a, a + delta)
    assert rel and scale == 2.0
    assert s.mean == pytest.approx(0.25, rel=1e-6)
    assert s.median == pytest.approx(0.25, rel=1e-6)
    assert s.q1 == pytest.approx(0.125, rel=1e-6) and s.q3 == pytest.approx(0.375, rel=1e-6)
    assert (s.whisker_low, s.outliers) == (0.0, 0) and s.whisker_high == pytest.approx(0.5, rel=1e-6)
    # one element moved by 10 x mean|A|: an outlier above the whisker
    b = a + delta
    b[500] += 20.0
    s, _, _ = ST.relative_diff_stats(a, b)
    assert (s.outliers, s.outliers_high) == (1, 1)
    assert s.max == pytest.approx(10.0 + 0.5 * 500 / 999, rel=1e-6)
    assert s.whisker_high == pytest.approx(0.5, rel=1e-6)


def test_scaling_a_tensor_gives_its_factor_as_mean():
    """B = 1.25 A: d_i = 0.25 |A_i| / mean|A|, so the mean is exactly 0.25."""
    a = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    s, scale, rel = ST.relative_diff_stats(a, a * 1.25)
    expected = (0.25 * a.abs() / a.abs().mean()).numpy().astype(np.float64)
    assert s.mean == pytest.approx(0.25, rel=1e-5)
    for q, v in ((0.25, s.q1), (0.5, s.median), (0.75, s.q3)):
        assert v == pytest.approx(np.percentile(expected, 100 * q), rel=1e-5)


def test_zero_base_reports_absolute_differences():
    s, scale, rel = ST.relative_diff_stats(torch.zeros(10), torch.full((10,), 0.5))
    assert not rel and scale == 0.0
    assert s.mean == pytest.approx(0.5) and s.median == pytest.approx(0.5)


def test_shape_mismatch_is_an_error_for_the_tensor_function():
    with pytest.raises(SurgeryError, match="shapes"):
        ST.relative_diff_stats(torch.zeros(3), torch.zeros(4))


# ----------------------------------------------------------------------------- the split rule


def test_split_on_a_step():
    pts = [(i, 0.0) for i in range(10)] + [(i, 1.0) for i in range(10, 15)]
    sp = SP.suggest_split(pts)
    assert (sp.first_changed, sp.share_at) == (10, 9) and sp.r2 == pytest.approx(1.0)


def test_split_uses_layer_indices_not_positions():
    sp = SP.suggest_split([(0, 0.01), (3, 0.012), (7, 0.011), (12, 0.5), (15, 0.6)])
    assert (sp.first_changed, sp.share_at) == (12, 11)


@pytest.mark.parametrize("medians", [
    [0.0] * 6,  # a model against itself
    [0.3] * 6,  # no change point
    [1.0, 1.0, 1.0, 0.1, 0.1, 0.1],  # differences fall: nothing to share
    [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 1.0, 1.1],  # noise around one level: no 2x rise
    [0.5],
])
def test_no_split_without_a_clear_rise(medians):
    assert SP.suggest_split(list(enumerate(medians))) is None


@pytest.mark.parametrize("text,expected", [("0-3", [0, 1, 2, 3]), ("5", [5]), ("0-1, 7,9-10", [0, 1, 7, 9, 10])])
def test_parse_layer_range(text, expected):
    assert D.parse_layer_range(text) == expected


@pytest.mark.parametrize("text", ["a-b", "5-3", "-1", ",", "1-2-3"])
def test_parse_layer_range_rejects(text):
    with pytest.raises(SurgeryError, match="layer range"):
        D.parse_layer_range(text)


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny():
    return tiny_net()


def test_model_against_itself_is_all_zero(tiny):
    rep = D.diff(tiny, tiny_net())
    assert rep.darknet and rep.index_source == "darknet" and not rep.skipped
    assert rep.layers and all(r.stats.max == 0.0 and r.stats.mean == 0.0 and r.relative for r in rep.layers)
    assert rep.split is None and rep.suggested_split is None


@pytest.mark.parametrize("k", [3, 5])
def test_equal_up_to_k_then_different(tiny, k):
    rep = D.diff(tiny, perturbed(tiny, after=k))
    for r in rep.layers:
        if r.index <= k:
            assert r.stats.max == 0.0, r.param
        else:
            assert r.stats.median > 0.0 and r.stats.mean > 0.0, r.param
    # the first layer after k with weights; k=3: layer 4 is a shortcut (no weights), so the
    # first changed layer is 5 and the backbone may include the shortcut: share at 4
    first = min(i for i in CONV_LAYERS if i > k)
    assert rep.suggested_split == first == {3: 5, 5: k + 1}[k]
    assert rep.split.share_at == first - 1
    assert rep.to_json()["split"]["first_changed"] == first


def test_darknet_kinds_and_indices(tiny):
    rep = D.diff(tiny, tiny)
    kinds = {(r.index, r.kind): r.param for r in rep.layers}
    # a conv with batch_normalize: Darknet's "biases" are the BN beta; gamma is bn_weight
    assert kinds[(0, "bias")] == "layers.0.bn.bias"
    assert kinds[(0, "bn_weight")] == "layers.0.bn.weight"
    assert kinds[(0, "weight")] == "layers.0.conv.weight"
    assert {"running_mean", "running_var"} <= {k for i, k in kinds if i == 0}
    # without batch_normalize the bias is the conv's own
    assert kinds[(9, "bias")] == "layers.9.conv.bias"
    assert not any(k == "bn_bias" for _, k in kinds)
    assert all(r.name == f"layers.{r.index}" for r in rep.layers)
    assert not any(k.endswith("num_batches_tracked") for k in kinds.values())


def test_known_perturbation_of_one_layer(tiny):
    other = copy.deepcopy(tiny.module)
    with torch.no_grad():
        other.layers[3].conv.weight.mul_(1.25)
        other.layers[3].bn.bias.add_(0.5 * other.layers[3].bn.bias.abs().mean())
    rep = D.diff(tiny, tiny.evolve(other))
    changed = {(r.index, r.kind): r.stats for r in rep.layers if r.stats.max > 0}
    assert set(changed) == {(3, "weight"), (3, "bias")}
    assert changed[(3, "weight")].mean == pytest.approx(0.25, rel=1e-5)
    bias = changed[(3, "bias")]  # every element moved by 0.5 x mean|A|
    assert bias.min == pytest.approx(0.5, rel=1e-6) and bias.max == pytest.approx(0.5, rel=1e-6)


def test_non_darknet_model_uses_the_layer_table():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():  # BN affine and stats away from their zero/one init
        for m in (a[1], a[4]):
            m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-1, 1), m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for i in (3, 4, 7):  # layers 3.. differ
            for t in b[i].state_dict().values():
                if t.is_floating_point():
                    t.add_(0.1 * t.abs().mean() * torch.randn(t.shape))
    rep = D.diff(a, b)
    assert rep.index_source == "layer_table" and not rep.darknet
    got = {(r.index, r.name, r.kind) for r in rep.layers}
    assert {(0, "0", "weight"), (0, "0", "bias"), (1, "1", "bn_weight"), (1, "1", "bn_bias"),
            (1, "1", "running_mean"), (1, "1", "running_var"), (7, "7", "weight")} <= got
    assert all((r.stats.max == 0) == (r.index < 3) for r in rep.layers)
    assert (rep.suggested_split, rep.split.share_at) == (3, 2)


def test_mismatched_architectures_are_skipped_not_a_crash(tiny):
    extra = "\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=1\nstride=1\npad=1\nactivation=leaky\n"
    other = tiny_net(classes=3, extra=extra)
    rep = D.diff(tiny, other)
    skipped = {s.param: s for s in rep.skipped}
    w9 = skipped["layers.9.conv.weight"]
    assert w9.reason.startswith("shapes differ") and w9.shape_a == (6, 32, 1, 1) and w9.shape_b == (3, 32, 1, 1)
    assert skipped["layers.9.conv.bias"].shape_b == (3,)
    extra_w = skipped["layers.10.conv.weight"]
    assert extra_w.reason == "only in B" and extra_w.shape_a is None and extra_w.shape_b == (4, 3, 1, 1)
    assert not any(r.index == 9 for r in rep.layers)
    assert {r.index for r in rep.layers} == {0, 1, 2, 3, 5, 6, 7}
    # a wholly different model is not a version of this one: one clear error with the counts
    with pytest.raises(SurgeryError, match=r"no tensor in common with equal shapes \(35 only in A, 0 only in B, "
                                            r"2 with other shapes\)"):
        D.diff(tiny, nn.Sequential(nn.Linear(4, 2)))


def test_resnets_of_different_depth_compare_their_common_layers():
    rep = D.diff(sio.load("zoo:resnet18:num_classes=10"), sio.load("zoo:resnet34:num_classes=10"))
    assert any(s.reason == "only in B" and s.param.startswith("layer1.2.") for s in rep.skipped)
    by_param = {r.param: r for r in rep.layers}
    assert by_param["conv1.weight"].index == 0 and by_param["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert by_param["bn1.weight"].kind == "bn_weight" and by_param["bn1.bias"].kind == "bn_bias"


def test_layer_and_kind_filters(tiny):
    rep = D.diff(tiny, perturbed(tiny, after=3), layers=range(0, 4), kinds=["weight", "bias"])
    assert {r.index for r in rep.layers} == {0, 1, 2, 3}
    assert {r.kind for r in rep.layers} == {"weight", "bias"}
    assert rep.split is None  # nothing changes within 0..3


def test_filters_that_select_nothing_are_errors(tiny):
    with pytest.raises(SurgeryError, match=r"layers 0\.\.9"):
        D.diff(tiny, tiny, layers=[200, 201])
    with pytest.raises(SurgeryError, match="bn_weight"):
        D.diff(tiny, tiny, kinds=["bn_weigth"])


def test_json_is_strict_with_zero_base_and_nan():
    a = nn.Sequential(nn.Linear(4, 3))
    b = copy.deepcopy(a)
    with torch.no_grad():
        a[0].bias.zero_()
        b[0].bias.fill_(0.5)
        b[0].weight[0, 0] = float("nan")
    rep = D.diff(a, b)
    rows = {r.kind: r.to_json() for r in rep.layers}
    assert rows["bias"]["relative"] is False and rows["bias"]["median"] == pytest.approx(0.5)
    assert rows["weight"]["median"] is None and rows["weight"]["mean"] is None
    text = json.dumps(rep.to_json(), allow_nan=False)
    assert set(json.loads(text)) == {"models", "index_source", "split", "rule", "layers", "tensors", "skipped"}


def test_json_schema(tiny):
    j = D.diff(tiny, perturbed(tiny, after=5)).to_json()
    assert len(j["models"]) == 2 and all(isinstance(m, str) for m in j["models"])
    for row in j["tensors"]:
        assert {"index", "name", "kind", "shape", "mean", "q1", "median", "q3", "whisker_low", "whisker_high",
                "outliers"} <= set(row)
        assert isinstance(row["index"], int) and isinstance(row["outliers"], int)
        assert isinstance(row["shape"], list)
    assert j["split"]["first_changed"] == 6 and j["split"]["share_at"] == 5 and "change point" in j["rule"]


def test_savings_from_the_cost_analyzer_when_available():
    pytest.importorskip("analyzers.cost")
    a = sio.load("zoo:resnet18:num_classes=10")
    b = perturbed_module(a, start="layer3")
    rep = D.diff(a, b)
    assert rep.split is not None
    sav = rep.split.savings
    from analyzers.cost import analyze

    assert sav == analyze(a).shared_fraction(rep.split.share_at)  # the cost model's fractions, not a re-count
    assert rep.split.first_changed == next(r.index for r in rep.layers if r.name.startswith("layer3"))


def perturbed_module(net: Net, start: str) -> Net:
    module = copy.deepcopy(net.module)
    on = False
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            on = on or name.startswith(start)
            if on:
                p.add_(0.1 * (p.abs().mean() + 1e-3) * torch.randn(p.shape, generator=g))
    return net.evolve(module)


# ----------------------------------------------------------------------------- plot


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return w, h


def _synthetic_report(n_layers: int) -> R.DiffReport:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_layers):
        level = 0.001 if i < 75 else 0.2
        for kind in ("weight", "bias"):
            s = ST.box_stats((rng.lognormal(0, 1, 2000) * level).astype(np.float32))
            rows.append(R.LayerDiff(i, f"layers.{i}", f"layers.{i}.{kind}", kind, (2000,), True, 1.0, s))
    split = SP.suggest_split([(r.index, r.stats.median) for r in rows if r.kind == "weight"])
    skipped = (R.Skipped(81, "layers.81", "layers.81.conv.weight", "weight", "shapes differ", (255,), (18,)),)
    return R.DiffReport("a.pt", "b.pt", True, tuple(rows), skipped, split)


def test_plot_is_a_png_of_sensible_size(tmp_path):
    from analyzers.diff_plot import plot_diff

    rep = _synthetic_report(107)
    assert rep.suggested_split == 75
    out = tmp_path / "d.png"
    plot_diff(rep, out)
    w, h = _png_size(out)
    assert 1200 <= w <= 3000 and 500 <= h <= 1200  # wide enough for 107 layers
    assert 10_000 < out.stat().st_size < 5_000_000
    small = tmp_path / "s.png"
    plot_diff(D.diff(tiny_net(), perturbed(tiny_net(), 5)), small)
    assert _png_size(small)[0] < w  # width grows with the layer count


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from zoo.darknet import save_darknet

    d = tmp_path_factory.mktemp("diff")
    a = tiny_net()
    sio.save(a, d / "a.pt")
    sio.save(perturbed(a, after=5), d / "b.pt")
    save_darknet(a.module, d / "a.cfg", d / "a.weights")
    save_darknet(perturbed(a, after=3).module, d / "c.cfg", d / "c.weights")
    return d


def test_cli_json_and_plot(cli, files, tmp_path):
    png = tmp_path / "fig.png"
    r = cli("diff", files / "a.pt", files / "b.pt", "--json", "--plot", png)
    assert r.code == 0, r.err
    j = json.loads(r.out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert j["models"][0].endswith("a.pt") and j["split"]["first_changed"] == 6 and j["split"]["share_at"] == 5
    assert all(row["median"] == 0 for row in j["tensors"] if row["index"] <= 5)
    assert _png_size(png)[0] >= 800
    # an existing output is not overwritten without --force: exit 2, one line, nothing changed
    before = png.read_bytes()
    r = cli("diff", files / "a.pt", files / "b.pt", "--plot", png)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "--force" in r.err
    assert png.read_bytes() == before
    assert cli("diff", files / "a.pt", files / "b.pt", "--csv", "--plot", png, "--force").code == 0


def test_cli_table_and_csv(cli, files):
    r = cli("diff", files / "a.pt", files / "b.pt", "--layers", "0-7")
    assert r.code == 0, r.err
    assert "first changed layer 6" in r.out and "share at 5" in r.out and "rule:" in r.out
    r = cli("diff", files / "a.pt", files / "b.pt", "--csv", "--kind", "weight")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert [int(x["index"]) for x in rows] == list(CONV_LAYERS)
    assert all(float(x["median"]) == 0 for x in rows[:5]) and all(float(x["median"]) > 0 for x in rows[5:])


def test_cli_across_formats(cli, files):
    """A Darknet .cfg/.weights against the .pt checkpoint of the same weights: all zero."""
    r = cli("diff", files / "a.cfg", files / "a.pt", "--json")
    assert r.code == 0, r.err
    j = r.json()
    assert j["tensors"] and all(row["max"] == 0 for row in j["tensors"]) and not j["skipped"]
    assert j["split"] is None
    # a bare .weights file takes the other model's cfg
    r = cli("diff", files / "a.cfg", files / "c.weights", "--json", "--kind", "weight")
    assert r.code == 0, r.err
    assert r.json()["split"]["first_changed"] == 5


@pytest.mark.parametrize("args,needle", [
    (("missing.pt", "{a}"), "does not exist"),
    (("{a}", "{a}", "--layers", "9-2"), "layer range"),
    (("{a}", "{a}", "--plot", "out.txt"), ".png"),
])
def test_cli_bad_input(cli, files, args, needle):
    r = cli("diff", *[a.format(a=files / "a.pt") for a in args], cwd=files)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and needle in r.err
    assert "Traceback" not in r.err
