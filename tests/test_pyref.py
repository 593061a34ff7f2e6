"""A user's own network class through every command: ``py:`` references, trusted pickles of
the user's class, and checkpoints that reload by import + recipe replay (no pickle).

The model is ``examples/mynet`` (conv/BN/ReLU, a residual block, a two-branch concat block,
a linear head). Expected counts are closed-form sums over its layers (see ``_mynet_params``).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import ROOT

REF = "py:examples.mynet:MyNet:width=8"
ENV = {"PYTHONPATH": str(ROOT)}


def _mynet_params(w: int, classes: int) -> int:
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # bias-free conv + BN affine
    return (conv_bn(3, w, 3) + 2 * conv_bn(w, w, 3) + conv_bn(w, 2 * w, 3)
            + conv_bn(2 * w, w, 1) + conv_bn(2 * w, w, 3) + 2 * conv_bn(2 * w, 2 * w, 3) + 2 * w * classes + classes)


def _mynet_macs(w: int, classes: int, hw: int = 32) -> int:
    full, half = hw * hw, (hw // 2) ** 2
    return (3 * w * 9 * full + 2 * w * w * 9 * full + w * 2 * w * 9 * half
            + 2 * w * w * half + 2 * w * w * 9 * half + 2 * (2 * w) ** 2 * 9 * half + 2 * w * classes)


def _one_line_error(res, *needles):
    assert res.code == 2, res.err
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def mynet(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from examples.mynet import MyNet, make

    return MyNet, make


def test_counts_from_the_current_directory(cli):
    # run from the repo root with no PYTHONPATH: the package is imported from the cwd
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = cli("flops", REF, "--json", cwd=ROOT, env={**env, "PYTHONPATH": ""})
    assert res.code == 0, res.err
    d = res.json()
    assert d["totals"]["macs"] == _mynet_macs(8, 10) == 3_203_232
    assert d["totals"]["params"] == _mynet_params(8, 10) == 8_754
    assert d["input_shape"] == [3, 32, 32]


def test_factory_function_and_kwargs(mynet, monkeypatch):
    from surgery.core import io as sio

    monkeypatch.chdir(ROOT)
    net = sio.load("py:examples.mynet:make:width=4,classes=3")
    assert net.params == _mynet_params(4, 3)
    assert net.arch.kind == "py" and net.arch.kwargs == {"width": 4, "classes": 3}
    assert net.arch.describe() == "py:examples.mynet:make:width=4,classes=3"


def test_weights_state_dict_loaded_strictly(mynet, tmp_path, monkeypatch, cli):
    from surgery.core import io as sio

    MyNet, _ = mynet
    torch.manual_seed(5)
    m = MyNet(width=8)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(ROOT)
    net = sio.load(REF, weights=str(tmp_path / "w.pt"))
    for k, v in m.state_dict().items():
        assert torch.equal(net.module.state_dict()[k], v), k
    res = cli("info", "py:examples.mynet:MyNet:width=4", "--weights", tmp_path / "w.pt", env=ENV, cwd=tmp_path)
    _one_line_error(res, "w.pt", "stem.0.weight", "[8, 3, 3, 3]", "[4, 3, 3, 3]")


def test_safetensors_weights(mynet, tmp_path, monkeypatch):
    from surgery.core import io as sio
    from surgery.core.errors import SurgeryError

    MyNet, _ = mynet
    m = MyNet(width=8)
    monkeypatch.chdir(ROOT)
    try:
        from safetensors.torch import save_file
    except ImportError:  # not a dependency: the refusal must say how to get it
        (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
        with pytest.raises(SurgeryError, match="pip install safetensors"):
            sio.load(REF, weights=str(tmp_path / "w.safetensors"))
        return
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    net = sio.load(REF, weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(net.module.fc.weight, m.fc.weight)


@pytest.mark.slow  # several CLI runs (torch start-up each)
@pytest.mark.parametrize("argv, tag", [
    (["fold", REF], "MyNet-folded.pt"),
    (["regroup", REF, "--root", "2"], "MyNet-root2.pt"),
    (["retarget", REF, "--at", "res2", "--classes", "3"], "MyNet-3classes@res2.pt"),
    (["share", "--at", "res1", REF, "py:examples.mynet:MyNet:width=8,classes=3"], "MyNet-MyNet@res1.pt"),
])
def test_surgeries_write_checkpoints_that_reload_without_pickle(cli, tmp_path, argv, tag):
    res = cli(*argv, cwd=tmp_path, env=ENV)
    assert res.code == 0, res.err
    out = tmp_path / tag
    assert f"wrote {tag}" in res.out + res.err
    ckpt = torch.load(out, weights_only=True)  # no pickled code in it
    assert ckpt["arch"]["kind"] == "py" and ckpt["arch"]["name"] == "examples.mynet:MyNet"
    # the checkpoint names code: it imports it only when the user names that module too
    refused = cli("info", out.name, "--json", cwd=tmp_path, env=ENV)
    _one_line_error(refused, f"{tag} names code `py:examples.mynet:MyNet`", "--arch py:examples.mynet:MyNet")
    info = cli("info", out.name, "--arch", "py:examples.mynet:MyNet", "--json", cwd=tmp_path, env=ENV).json()
    assert info["arch"] == REF and info["format"] == "checkpoint"


@pytest.mark.slow  # several CLI runs (torch start-up each)
def test_analysis_commands(cli, tmp_path):
    lay = cli("layers", REF, "--json", cwd=tmp_path, env=ENV).json()
    assert lay["totals"]["params"] == 8_754
    convs = [l for l in lay["layers"] if l["type"] == "Conv2d"]
    assert [l["name"] for l in convs][:3] == ["stem.0", "res1.a.0", "res1.b.0"] and len(convs) == 8
    by = cli("flops", REF, "--by", "module", "--json", cwd=tmp_path, env=ENV)
    assert by.code == 0, by.err
    d = cli("diff", REF, "py:examples.mynet:make:width=8", "--json", cwd=tmp_path, env=ENV)
    assert d.code == 0, d.err  # same seed, same class: nothing differs
    assert all(r["max"] == 0 for r in d.json()["layers"])
    p = cli("profile", REF, "--min-runs", "1", "--max-runs", "1", "--warmup", "0", "--warmup-time", "0",
            "--min-time", "0", "--json", cwd=tmp_path, env=ENV)
    assert p.code == 0, p.err
    e = cli("export", REF, "--onnx", "m.onnx", cwd=tmp_path, env=ENV)
    assert e.code == 0 and (tmp_path / "m.onnx").stat().st_size > 0, e.err


@pytest.mark.slow  # several CLI runs (torch start-up each)
def test_trusted_pickle_becomes_editable(mynet, cli, tmp_path):
    MyNet, _ = mynet
    torch.save(MyNet(), tmp_path / "whole.pt")  # default arguments: the class rebuilds it alone
    res = cli("fold", "whole.pt", "--trust-code", cwd=tmp_path, env=ENV)
    assert res.code == 0, res.err
    ckpt = torch.load(tmp_path / "whole-folded.pt", weights_only=True)
    assert ckpt["arch"] == {"kind": "py", "name": "examples.mynet:MyNet", "kwargs": {}}
    # a checkpoint: no pickle any more, but it names code, so the user names the module (or trusts it)
    info = cli("info", "whole-folded.pt", "--arch", "py:examples.mynet:MyNet", "--json", cwd=tmp_path, env=ENV).json()
    assert [s["op"] for s in info["recipe"]] == ["fold"]
    assert cli("info", "whole-folded.pt", "--trust-code", "--json", cwd=tmp_path, env=ENV).code == 0
    # built with other arguments: the class alone does not rebuild it; --arch says how
    torch.save(MyNet(width=4, classes=3), tmp_path / "small.pt")
    _one_line_error(cli("fold", "small.pt", "--trust-code", cwd=tmp_path, env=ENV), "--arch py:")
    ok = cli("fold", "small.pt", "--trust-code", "--arch", "py:examples.mynet:MyNet:width=4,classes=3",
             cwd=tmp_path, env=ENV)
    assert ok.code == 0, ok.err


def test_unimportable_pickled_class_is_one_line(cli, tmp_path, monkeypatch):
    (tmp_path / "gone_pkg.py").write_text("from torch import nn\nclass Gone(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_pkg

    torch.save(gone_pkg.Gone(2, 2), tmp_path / "gone.pt")
    (tmp_path / "gone_pkg.py").unlink()
    sys.modules.pop("gone_pkg", None)
    _one_line_error(cli("info", tmp_path / "gone.pt", "--trust-code", "--input", "2", cwd=tmp_path.parent),
                    "gone.pt", "gone_pkg")


BAD = """
from torch import nn
def boom(**kw):
    raise ValueError("width must be even")
def not_a_module():
    return 42
CONST = 3
"""


@pytest.mark.parametrize("ref, needles", [
    ("py:no_such_pkg.sub:Net", ["cannot import", "no_such_pkg", "PYTHONPATH"]),
    ("py:badfactories:Missing", ["has no attribute 'Missing'"]),
    ("py:badfactories:boom:width=3", ["raised ValueError: width must be even"]),
    ("py:badfactories:not_a_module", ["returned a int, not an nn.Module"]),
    ("py:badfactories:CONST", ["not a class or function"]),
    ("py:badfactories", ["py:package.module:factory"]),
])
def test_bad_references(tmp_path, monkeypatch, ref, needles):
    from surgery.core import io as sio
    from surgery.core.errors import SurgeryError

    (tmp_path / "badfactories.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("badfactories", None)
    with pytest.raises(SurgeryError) as e:
        sio.load(ref)
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_bad_reference_exits_2_in_one_line(cli, tmp_path):
    (tmp_path / "badfactories.py").write_text(BAD)
    _one_line_error(cli("fold", "py:badfactories:boom", cwd=tmp_path), "raised ValueError: width must be even")
    assert list(tmp_path.iterdir()) == [tmp_path / "badfactories.py"]  # nothing written


@pytest.mark.parametrize("name, kwargs, trust, needle", [
    ("os:system", {"command": "touch pwned"}, True, "standard library"),
    ("subprocess:run", {"args": "touch pwned"}, True, "standard library"),
    ("torch.hub:load", {"repo_or_dir": "x/y", "model": "m"}, False, "names code `py:torch.hub:load`"),
    # reaching through the named package into another one's code: refused even when trusted
    ("examples.mynet:torch.hub.load", {"repo_or_dir": "x/y", "model": "m"}, True, "not in the package 'examples'"),
    ("examples.mynet:torch.nn.Conv2d", {"in_channels": 3, "out_channels": 4, "kernel_size": 1}, True,
     "not in the package 'examples'"),
])
def test_checkpoint_naming_code_is_refused(tmp_path, monkeypatch, name, kwargs, trust, needle):
    from surgery.core import io as sio
    from surgery.core.errors import SurgeryError

    ckpt = {"format": sio.CHECKPOINT_FORMAT, "format_version": sio.CHECKPOINT_VERSION,
            "arch": {"kind": "py", "name": name, "kwargs": kwargs}, "recipe": [], "input_shape": [3, 8, 8],
            "state_dict": {}}
    torch.save(ckpt, tmp_path / "evil.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(SurgeryError, match=needle):
        sio.load("evil.pt", trust_code=trust)
    assert not (tmp_path / "pwned").exists()
