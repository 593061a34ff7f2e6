"""surgery.fold: Dirac, BatchNorm and branch folds; verification; replay; the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.fold import FoldReport, check_kinds, fold, fold_module, module_counts
from surgery.core.graph import layer_graph
from surgery.core.net import ArchSpec, Net
from surgery.core.recipe import rebuild
from surgery.core.verify import VerifyReport, compare
from zoo.diracnet import DiracConv2d

PURE_CHAIN = {"Conv2d", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "Flatten"}


def _net(module: nn.Module, shape) -> Net:
    """A Net around a hand-built module (the arch is never rebuilt by fold)."""
    return Net(module.eval(), ArchSpec("zoo", "test-only"), tuple(shape), source="test")


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and Dirac scalings, so the folds have something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            if isinstance(m, DiracConv2d):
                m.alpha.copy_(torch.rand(m.out_channels, generator=g) * 0.5 + 0.75)
                m.beta.copy_(torch.rand(m.out_channels, generator=g) * 0.3 + 0.05)
    return module.eval()


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _dirac_reference_weight(m: DiracConv2d) -> torch.Tensor:
    """diag(a) I + diag(b) W / ||W|| in float64, written out independently of zoo.diracnet."""
    w = m.weight.detach().double()
    out, cin, kh, kw = w.shape
    norms = w.reshape(out, -1).pow(2).sum(1).sqrt()
    delta = torch.zeros_like(w)
    for d in range(min(out, cin)):
        delta[d, d, kh // 2, kw // 2] = 1.0
    a = m.alpha.detach().double().view(-1, 1, 1, 1)
    b = m.beta.detach().double().view(-1, 1, 1, 1)
    return a * delta + b * w / norms.view(-1, 1, 1, 1)


# ------------------------------------------------------------------ Dirac


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 6),
    cout=st.integers(1, 6),
    k=st.sampled_from([1, 3, 5]),
    batch=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_dirac_conv_folds_exactly(cin, cout, k, batch, hw, bias, dtype, seed):
    torch.manual_seed(seed)
    m = DiracConv2d(cin, cout, k, stride=1, padding=k // 2, bias=bias).to(dtype)
    with torch.no_grad():
        m.alpha.copy_(torch.randn(cout))
        m.beta.copy_(torch.randn(cout))
        if bias:
            m.bias.copy_(torch.randn(cout))
    folded, folds, skips = fold_module(nn.Sequential(m), only=["dirac"])
    assert module_counts(folded) == {"Conv2d": 1} and [f.kind for f in folds] == ["dirac"] and not skips
    x = torch.randn(batch, cin, *hw, dtype=dtype)
    with torch.no_grad():
        got = folded(x)
        assert torch.equal(got, m(x))  # the same convolution with the same weight tensor
        w_ref = _dirac_reference_weight(m)
        b_ref = m.bias.detach().double() if bias else None
        ref = F.conv2d(x.double(), w_ref, b_ref, padding=k // 2)  # independent reference, float64
    conv = folded.get_submodule("0")
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert torch.allclose(conv.weight.double(), w_ref, rtol=tol, atol=tol)
    assert torch.allclose(got.double(), ref, rtol=tol * 10, atol=tol * 10 * max(1.0, ref.abs().max().item()))


class _Body(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential()
        self.body.add_module("relu", nn.ReLU())
        self.body.add_module("conv", conv)

    def forward(self, x):
        return self.body(self.stem(x))


@pytest.mark.parametrize("conv, why", [
    (DiracConv2d(4, 4, 3, stride=2, padding=1), "stride"),
    (DiracConv2d(4, 4, 2, stride=1, padding=1), "even kernel"),
    (DiracConv2d(4, 4, 3, stride=1, padding=0), "padding"),
])
def test_dirac_fold_refused_with_layer_named(conv, why):
    net = _net(_Body(conv), (3, 8, 8))
    with pytest.raises(SurgeryError, match=rf"'body\.conv'.*{why}"):
        fold(net)
    assert isinstance(net.module.body.conv, DiracConv2d)  # input untouched
    folded, rep = fold(net, only=["bn", "branches"])  # leaving the Dirac fold out works
    assert rep.modules_after.get("DiracConv2d") == 1


# ------------------------------------------------------------------ BatchNorm


class _ConvBN(nn.Module):
    def __init__(self, layer: nn.Module, bn: nn.Module):
        super().__init__()
        self.layer, self.bn = layer, bn

    def forward(self, x):
        return torch.relu(self.bn(self.layer(x)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["conv", "conv-nobias", "grouped", "tconv", "linear", "conv1d"])
def test_bn_folds_exactly(case, dtype):
    torch.manual_seed(1)
    layer, bn, shape = {
        "conv": (nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, eps=1e-3), (3, 7, 7)),
        "conv-nobias": (nn.Conv2d(3, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), (3, 9, 9)),
        "grouped": (nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8, eps=0.1), (4, 5, 5)),
        "tconv": (nn.ConvTranspose2d(3, 5, 3, stride=2), nn.BatchNorm2d(5), (3, 4, 4)),
        "linear": (nn.Linear(10, 7), nn.BatchNorm1d(7, eps=1e-2), (10,)),
        "conv1d": (nn.Conv1d(3, 6, 5, padding=2), nn.BatchNorm1d(6), (3, 11)),
    }[case]
    module = _randomise(_ConvBN(layer, bn), seed=3).to(dtype)
    folded, rep = fold(_net(module, shape), dtype=dtype)
    assert [(f.kind, f.target, f.merged) for f in rep.folds] == [("bn", "layer", ("bn",))]
    assert "BatchNorm1d" not in rep.modules_after and "BatchNorm2d" not in rep.modules_after
    x = torch.randn(3, *shape, dtype=dtype)
    with torch.no_grad():
        rel = _max_rel(folded.module(x), module(x))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert rel < tol
    # fold's own check (other probe inputs) sees the same rounding-level error as this one
    assert rep.verify.max_rel == pytest.approx(rel, abs=tol)


class _Crossed(nn.Module):
    """BNs registered in the opposite order to the convs that feed them."""

    def __init__(self):
        super().__init__()
        self.bn_a = nn.BatchNorm2d(5)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.bn_a(self.conv_b(self.bn_b(self.conv_a(x))))


def test_bn_fold_follows_data_flow_not_registration():
    module = _randomise(_Crossed(), seed=4)
    folded, rep = fold(_net(module, (3, 6, 6)))
    assert {(f.target, f.merged) for f in rep.folds} == {("conv_a", ("bn_b",)), ("conv_b", ("bn_a",))}
    assert module_counts(folded.module) == {"Conv2d": 2}
    assert rep.verify.max_rel < 1e-6


class _TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 4, 1)
        self.head_bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y  # the conv's output is read twice: the BN cannot fold into it
        return self.head_bn(self.head(z))


def test_conv_feeding_two_consumers_is_skipped():
    module = _randomise(_TwoUsers(), seed=5)
    folded, rep = fold(_net(module, (3, 6, 6)))
    assert [(s.kind, s.target) for s in rep.skips] == [("bn", "conv")]
    assert "also feeds" in rep.skips[0].reason and "bn" in rep.skips[0].reason
    assert [(f.target, f.merged) for f in rep.folds] == [("head", ("head_bn",))]
    assert module_counts(folded.module) == {"Conv2d": 2, "BatchNorm2d": 1}
    assert rep.verify.max_rel < 1e-6


def test_bn_without_running_stats_is_skipped():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    folded, rep = fold(_net(module, (3, 6, 6)))
    assert not rep.folds and rep.skips[0].target == "1" and "running statistics" in rep.skips[0].reason


# ------------------------------------------------------------------ branches


class _RepBlock(nn.Module):
    """RepVGG-style: 3x3+BN, 1x1+BN and an identity BN, summed before a ReLU."""

    def __init__(self, c: int, groups: int = 1):
        super().__init__()
        self.conv3 = nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.bn_id = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn3(self.conv3(x)) + self.bn1(self.conv1(x)) + self.bn_id(x))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.conv5 = nn.Conv2d(c, c, 5, padding=2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(torch.add(x, self.conv(x)) + self.conv5(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [lambda: _RepBlock(6), lambda: _RepBlock(6, groups=2), lambda: _Residual(5)])
def test_parallel_branches_fold_into_one_conv(make, dtype):
    module = _randomise(make(), seed=6).to(dtype)
    shape = (module.conv.in_channels if hasattr(module, "conv") else 6, 7, 7)
    folded, rep = fold(_net(module, shape), dtype=dtype)
    assert module_counts(folded.module) == {"Conv2d": 1, "ReLU": 1}
    assert "branches" in rep.fold_counts
    x = torch.randn(2, *shape, dtype=dtype)
    with torch.no_grad():
        rel = _max_rel(folded.module(x), module(x))
    assert rel < (1e-12 if dtype == torch.float64 else 2e-6)


class _Partial(nn.Module):
    """Two branches of x, one of another tensor: only the two fold, the third term stays."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1, bias=False)
        self.other = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = torch.sigmoid(x)
        return self.a(x) + self.other(y) + self.b(x)


def test_partial_sum_folds_the_shared_input_branches_only():
    module = _Partial().double().eval()
    folded, rep = fold(_net(module, (4, 6, 6)), dtype=torch.float64)
    assert [(f.kind, f.target, f.merged) for f in rep.folds] == [("branches", "a", ("b",))]
    assert module_counts(folded.module) == {"Conv2d": 2}
    assert folded.module.get_submodule("a").kernel_size == (3, 3)
    assert rep.verify.max_rel < 1e-12
    assert "sigmoid" in [l.type for l in layer_graph(folded.module).layers]


class _Misaligned(nn.Module):
    def __init__(self, which: str):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = {"groups": nn.Conv2d(4, 4, 1, groups=2),
                  "dilation": nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                  "reused": nn.Conv2d(4, 4, 1)}[which]
        self.which = which

    def forward(self, x):
        b = self.b(x)
        s = self.a(x) + b
        return s * b if self.which == "reused" else s


@pytest.mark.parametrize("which, why", [("groups", "groups"), ("dilation", "dilation"), ("reused", "also feeds")])
def test_unfoldable_branches_are_skipped(which, why):
    folded, rep = fold(_net(_Misaligned(which), (4, 6, 6)))
    assert not rep.folds and len(rep.skips) == 1
    assert rep.skips[0].kind == "branches" and why in rep.skips[0].reason
    assert module_counts(folded.module) == {"Conv2d": 2}


# ------------------------------------------------------------------ zoo models


def _zoo(ref: str, shape) -> Net:
    net = sio.load(ref, input_shape=shape)
    return net.evolve(_randomise(net.module, seed=7))


def test_resnet50_v1_bn_fold():
    net = _zoo("zoo:resnet50:variant=v1", (3, 64, 64))
    folded, rep = fold(net)
    assert rep.fold_counts == {"bn": 53} and not rep.skips
    assert set(rep.modules_after) == {"Conv2d", "ReLU", "MaxPool2d", "AdaptiveAvgPool2d", "Linear"}
    assert rep.verify.max_rel < 1e-5
    _, rep64 = fold(net, dtype=torch.float64)
    assert rep64.verify.max_rel < 1e-6  # only the float32 rounding of the folded weights is left
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _max_rel(folded.module(x), net.module(x)) < 1e-5


@pytest.mark.parametrize("name, shape, dirac_convs", [
    ("diracnet18", (3, 64, 64), 16),
    ("diracnet34", (3, 64, 64), 32),
    ("diracnet28_10", (3, 16, 16), 24),
])
def test_diracnet_folds_to_a_conv_relu_chain(name, shape, dirac_convs):
    net = _zoo(f"zoo:{name}", shape)
    folded, rep = fold(net)
    assert set(rep.modules_after) <= PURE_CHAIN
    assert rep.modules_after["Conv2d"] == dirac_convs + 1
    assert rep.fold_counts["dirac"] == dirac_convs and rep.fold_counts["bn"] == dirac_convs + 1
    assert rep.verify.max_rel < 1e-5
    # the layer table is conv, then (ReLU, conv) pairs, then ReLU and the classifier
    types = [l.type for l in layer_graph(folded.module).layers if "Pool" not in l.type and l.type != "flatten"]
    assert types == ["Conv2d"] + ["ReLU", "Conv2d"] * dirac_convs + ["ReLU", "Linear"]


def test_only_bn_keeps_the_dirac_parameterisation():
    net = _zoo("zoo:diracnet18", (3, 32, 32))
    folded, rep = fold(net, only="bn")
    assert rep.modules_after["DiracConv2d"] == 16 and "BatchNorm2d" not in rep.modules_after
    assert all(m.bias is not None for m in folded.module.modules() if isinstance(m, DiracConv2d))
    assert rep.verify.max_rel < 1e-5
    folded2, rep2 = fold(folded, only="dirac")  # and the rest folds later
    assert set(rep2.modules_after) <= PURE_CHAIN
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert _max_rel(folded2.module(x), net.module(x)) < 1e-5


def test_fold_never_mutates_its_input():
    net = _zoo("zoo:diracnet18", (3, 32, 32))
    before = {k: v.clone() for k, v in net.module.state_dict().items()}
    fold(net)
    after = net.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert module_counts(net.module)["DiracConv2d"] == 16


def test_checkpoint_round_trip_replays_the_fold(tmp_path):
    net = _zoo("zoo:diracnet18", (3, 32, 32))
    folded, _ = fold(net)
    path = sio.save(folded, tmp_path / "folded.pt")
    back = sio.load(str(path))
    assert [s.op for s in back.recipe] == ["fold"] and back.recipe[0].args == {"only": ["dirac", "bn", "branches"]}
    assert list(back.module.state_dict()) == list(folded.module.state_dict())
    assert compare(folded.module, back.module, (3, 32, 32)).max_abs == 0.0
    replayed = rebuild(net.arch, back.recipe)  # fresh arch + structural replay, no values
    assert module_counts(replayed) == module_counts(folded.module)


def test_verification_failure_raises(monkeypatch):
    bad = VerifyReport(probes=1, batch=1, dtype="float32", max_abs=1.0, max_rel=0.5, outputs=())
    monkeypatch.setattr("surgery.fold.compare", lambda *a, **k: bad)
    with pytest.raises(SurgeryError, match="max relative difference 0.5"):
        fold(_net(_ConvBN(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), (3, 4, 4)))


def test_check_kinds():
    assert check_kinds(["bn", "dirac"]) == ("dirac", "bn") and check_kinds("bn") == ("bn",)
    with pytest.raises(SurgeryError, match="did you mean: bn"):
        check_kinds("bnn")
    with pytest.raises(SurgeryError, match="empty"):
        check_kinds([])


# ------------------------------------------------------------------ CLI


def _surgery() -> list[str]:
    exe = Path(sys.executable).with_name("surgery")
    return [str(exe)] if exe.exists() else [shutil.which("surgery") or "surgery"]


def _run(*args, cwd=None):
    env = {**os.environ, "SURGERY_DEBUG": ""}
    return subprocess.run(_surgery() + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_fold_end_to_end(tmp_path):
    out = tmp_path / "d18.pt"
    r = _run("fold", "zoo:diracnet18", "--input", "3x32x32", "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["output"] == str(out) and rep["fold_counts"] == {"dirac": 16, "bn": 17}
    assert rep["verify"]["max_rel"] < 1e-5 and set(rep["modules_after"]) <= PURE_CHAIN
    assert sio.load(str(out)).recipe[0].op == "fold"
    stamp = out.stat().st_mtime_ns
    r = _run("fold", "zoo:diracnet18", "--input", "3x32x32", "-o", str(out))  # no --force
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--force" in r.stderr
    assert out.stat().st_mtime_ns == stamp


def _main(argv: list[str]) -> int:
    """cli.main in-process (typer ends a successful command with SystemExit(0))."""
    import cli

    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def test_cli_in_process(tmp_path, capsys):
    src = tmp_path / "d18.pt"
    assert _main(["fold", "zoo:diracnet18", "--input", "3x32x32", "-o", str(src), "--only", "bn"]) == 0
    cap = capsys.readouterr()
    out = " ".join(cap.out.split())  # rich wraps at the terminal width
    assert "BatchNorm2d" in out and "wrote" not in out and f"wrote {src}" in " ".join(cap.err.split()) and src.exists()
    assert _main(["fold", str(src), "-o", str(tmp_path / "x.pt"), "--only", "bn,wat"]) == 2
    assert "wat" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert _main(["fold", str(src), "-o", str(src), "--force"]) == 2  # never overwrite the input
    assert "also an input" in capsys.readouterr().err
    assert _main(["fold", str(src), "-o", str(tmp_path / "again.pt"), "--dtype", "float64"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "float64, eval)" in out and "max rel" in out and "DiracConv2d" in out
    again = sio.load(str(tmp_path / "again.pt"))
    assert [s.args["only"] for s in again.recipe] == [["bn"], ["dirac", "bn", "branches"]]
    assert set(module_counts(again.module)) <= PURE_CHAIN
    # folding the folded model again finds nothing: it says why, writes nothing and exits 0
    assert _main(["fold", str(tmp_path / "again.pt"), "-o", str(tmp_path / "twice.pt")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "nothing to fold" in err and "no BatchNorm" in err and "nothing written" in err
    assert not (tmp_path / "twice.pt").exists()


def test_cli_refusals_write_nothing(tmp_path, monkeypatch, capsys):
    import cli_commands.fold as cmd

    out = tmp_path / "out.pt"
    monkeypatch.setattr(cmd, "load_model", lambda *a, **k: _net(_Body(DiracConv2d(4, 4, 3, stride=2)), (3, 8, 8)))
    assert _main(["fold", "whatever.pt", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'body.conv'" in err and "stride" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())

    bad = VerifyReport(probes=1, batch=1, dtype="float32", max_abs=1.0, max_rel=0.5, outputs=())
    monkeypatch.setattr(cmd, "load_model", lambda *a, **k: _net(_ConvBN(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)),
                                                                (3, 4, 4)))
    monkeypatch.setattr("surgery.fold.compare", lambda *a, **k: bad)
    assert _main(["fold", "whatever.pt", "-o", str(out), "--dtype", "float32"]) == 2
    assert "nothing written" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert _main(["fold", "whatever.pt", "-o", str(out), "--dtype", "float16"]) == 2
    assert not list(tmp_path.iterdir())


def test_default_output_name_in_the_current_directory(tmp_path):
    r = _run("fold", "zoo:diracnet18", "--input", "3x32x32", "--only", "bn", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "diracnet18-folded.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diracnet18-folded.pt"]
    again = _run("fold", "zoo:diracnet18", "--input", "3x32x32", "--only", "bn", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr


def test_nothing_to_fold_returns_the_input_and_says_why():
    net = _net(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (3, 6, 6))
    same, rep = fold(net)
    assert same is net and rep.folds == () and rep.verify is None and rep.output is None
    assert "no BatchNorm after a conv or linear" in rep.nothing_to_fold
    _, rep = fold(_net(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), (3, 6, 6)))
    assert rep.nothing_to_fold.startswith("every candidate was skipped: 1: ")


def test_fold_kinds_register_once_and_fold_imports_no_model_family():
    from surgery.fold.registry import register

    with pytest.raises(RuntimeError, match="registered twice"):
        register("bn", order=9, summary="again")(lambda ctx, kinds: None)
    code = "import sys, surgery.fold; print(sorted(m for m in sys.modules if m.split('.')[0] == 'zoo'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


# ------------------------------------------------------------------ Darknet (batch_normalize=1)


def _bn_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _darknet_bn_reference(layer, x):
    """Darknet's batch-normalised conv layer written out by hand (float64): conv, then
    (y - mean) / sqrt(var + eps) * scale + bias, then leaky 0.1 / linear."""
    conv, bn = layer.conv, layer.bn
    y = F.conv2d(x.double(), conv.weight.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    c = lambda t: t.double().view(1, -1, 1, 1)  # noqa: E731
    y = (y - c(bn.running_mean)) / torch.sqrt(c(bn.running_var) + 1e-5) * c(bn.weight) + c(bn.bias)
    return F.leaky_relu(y, 0.1) if layer.options.get("activation") == "leaky" else y


def test_darknet_fold_writes_batch_normalize_0_with_biases(tmp_path):
    from zoo.darknet import load_darknet, parse_cfg

    net = sio.load("zoo:yolov3_tiny:width=64,height=64")
    net = net.evolve(_randomise(net.module, seed=8))
    folded, rep = fold(net)
    assert rep.representation == "darknet" and rep.fold_counts == {"bn": 11} and not rep.skips
    assert (rep.folds[0].target, rep.folds[0].merged) == ("layers.0", ("layers.0.bn",))
    assert folded.recipe == () and folded.arch.kind == "darknet" and folded.arch.name == "yolov3_tiny-folded.cfg"
    assert _bn_count(net.module) == 11 and _bn_count(folded.module) == 0  # the input is untouched
    before = [b.get("batch_normalize") for b in net.module.blocks if b["type"] == "convolutional"]
    after = [b.get("batch_normalize") for b in parse_cfg(folded.arch.cfg) if b["type"] == "convolutional"]
    assert before.count("1") == 11 and after == [None if v is None else "0" for v in before]
    # layer 0 against Darknet's formula, independently of torch.nn.utils.fusion
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = folded.module.layers[0](x).double()
        ref = _darknet_bn_reference(net.module.layers[0], x)
        assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-6
        assert max(_max_rel(a, b) for a, b in zip(folded.module(x), net.module(x))) < 1e-5
    assert rep.verify.max_rel < 1e-5
    # the checkpoint carries the new cfg (no replay), and Darknet files read back identically
    back = sio.load(str(sio.save(folded, tmp_path / "f.pt")))
    assert back.recipe == () and compare(folded.module, back.module, (3, 64, 64)).max_abs == 0.0
    from surgery.export import write_darknet

    dk = write_darknet(folded, tmp_path / "f.cfg", tmp_path / "f.weights")
    assert dk.identical and dk.batchnorms == 0
    # 11 convs x (bias + weight) instead of (bias, scale, mean, var, weight): 3 x filters floats fewer each
    filters = sum(l.conv.out_channels for l in net.module.layers if getattr(l, "bn", None) is not None)
    from zoo.darknet import weights_nbytes

    assert dk.weights_bytes == weights_nbytes(net.module) - 4 * 3 * filters
    loaded = load_darknet(tmp_path / "f.cfg", tmp_path / "f.weights").eval()
    with torch.no_grad():
        for a, b in zip(loaded(x), folded.module(x)):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_cli_fold_yolov3_every_batchnorm_to_darknet(tmp_path):
    """YOLOv3: 75 convolutional layers, 72 of them batch-normalised (the three before the yolo
    layers are linear with biases), as pjreddie's yolov3.cfg says; all 72 fold."""
    from conftest import shared_dir
    from zoo.darknet import load_darknet, parse_cfg

    cfg_text = (shared_dir() / "data" / "darknet" / "yolov3.cfg").read_text()
    n_bn = cfg_text.count("batch_normalize=1")
    assert (n_bn, cfg_text.count("[convolutional]")) == (72, 75)
    r = _run("fold", "zoo:yolov3:width=96,height=96", "--darknet", "y.cfg", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["fold_counts"] == {"bn": n_bn} and rep["output"] == "yolov3-folded.pt"
    assert rep["modules_before"]["BatchNorm2d"] == n_bn and "BatchNorm2d" not in rep["modules_after"]
    assert rep["verify"]["max_rel"] < 1e-5
    convs = [b for b in parse_cfg((tmp_path / "y.cfg").read_text()) if b["type"] == "convolutional"]
    assert [b.get("batch_normalize") for b in convs].count("0") == n_bn and len(convs) == 75
    loaded = load_darknet(tmp_path / "y.cfg", tmp_path / "y.weights").eval()
    assert _bn_count(loaded) == 0
    src = sio.load("zoo:yolov3:width=96,height=96")
    assert compare(src.module, loaded, (3, 96, 96), probes=1, batch=1).max_rel < 1e-5


def test_report_is_a_frozen_dataclass():
    _, rep = fold(_net(_ConvBN(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), (3, 4, 4)))
    assert isinstance(rep, FoldReport)
    with pytest.raises(Exception):
        rep.params_after = 0  # type: ignore[misc]
    assert rep.params_before - rep.params_after == 8  # BN gamma/beta gone (running stats are buffers)
