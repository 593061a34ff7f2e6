"""TorchScript and .pt2 files count like the eager model they came from.

TorchScript cannot be cloned onto the meta device, so it is counted by running it on CPU
(it is code: loading it needs --trust-code); a .pt2's layer table reads like the eager one
(module names from torch.export's nn_module_stack, no guard rows)."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import sys

    sys.path.insert(0, str(ROOT))
    from examples.mynet import MyNet

    torch.manual_seed(0)
    m = MyNet(width=8).eval()
    d = tmp_path_factory.mktemp("scripted")
    x = torch.randn(1, 3, 32, 32)
    torch.jit.script(m).save(str(d / "scripted.pt"))
    torch.jit.trace(m, x).save(str(d / "traced.pt"))
    torch.export.save(torch.export.export(m, (x,)), str(d / "m.pt2"))
    return m, d


def _eager(m):
    from analyzers.cost import analyze

    return analyze(m, (3, 32, 32))


@pytest.mark.parametrize("name, trust", [("scripted.pt", True), ("traced.pt", True), ("m.pt2", False)])
def test_counts_equal_the_eager_model(files, name, trust):
    from analyzers.cost import analyze
    from surgery.core import io as sio

    m, d = files
    eager = _eager(m)
    net = sio.load(str(d / name), trust_code=trust, input_shape=(3, 32, 32))
    rep = analyze(net)
    for k in ("params", "macs", "flops", "bytes_read", "bytes_written"):
        assert getattr(rep.totals, k) == getattr(eager.totals, k), k
    assert rep.totals.macs == 3_203_232  # closed form: tests/test_pyref.py::_mynet_macs(8, 10)
    assert rep.counted_on == ("meta" if name.endswith(".pt2") else "cpu")


def test_pt2_table_reads_like_the_eager_one(files):
    from analyzers.cost import analyze
    from surgery.core import io as sio

    m, d = files
    rep = analyze(sio.load(str(d / "m.pt2")))
    eager = _eager(m)
    assert not [l for l in rep.layers if l.type in ("eq", "_assert") or l.name.startswith(("eq", "_assert"))]
    convs = [(l.name, l.type) for l in rep.layers if l.macs]
    assert convs == [(l.name, l.type) for l in eager.layers if l.macs]
    assert convs[0] == ("stem.0", "Conv2d")
    by = dict((g.key, g) for g, _ in rep.group_ops("module", depth=1))
    assert by["stem"].macs == 3 * 8 * 9 * 32 * 32


def test_cli_torchscript_needs_trust_and_says_where_it_counted(files, cli):
    _, d = files
    res = cli("layers", d / "scripted.pt", "--input", "3x32x32", "--trust-code", "--json")
    assert res.code == 0, res.err
    j = res.json()
    assert j["counted_on"] == "cpu" and j["totals"]["macs"] == 3_203_232
    assert any("TorchScript" in n for n in j["notes"])
    refused = cli("layers", d / "scripted.pt", "--input", "3x32x32")
    assert refused.code == 2 and "--trust-code" in refused.err and "Traceback" not in refused.err
