"""Hostile and broken input (issue 11): nothing from a file executes without --trust-code,
inputs are never outputs, control characters are escaped, torn/racing writes leave nothing,
and every failure is one line + exit 2 (a fuzz test holds the contract)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import cli
from surgery.core import io as sio, safety
from surgery.core.errors import SurgeryError
from surgery.core.verify import compare
from zoo.darknet.net import free_after

ROOT = Path(__file__).resolve().parents[1]

TINY_CFG = """[net]
channels=3
height=8
width=8

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=2
size=1
stride=1
activation=linear
"""


def run_main(args, capsys) -> tuple[int, list[str]]:
    """``cli.main`` in-process (fast enough for a fuzz test): exit code and stderr lines."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # typer ends a successful command with sys.exit(0)
        code = e.code or 0
    err = capsys.readouterr().err
    return code, [l for l in err.splitlines() if l.strip()]


def listing(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# ------------------------------------------------------------------ code in files


class FromFile(nn.Module):
    """A forward that writes to an unrelated file through a shared mapping (the probe's attack)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        t = torch.from_file(self.target, shared=True, size=4, dtype=torch.uint8)
        t.fill_(88)
        return x * 2


def test_torchscript_is_refused_without_trust_and_runs_nothing(tmp_path, capsys):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"good")
    path = tmp_path / "ts.pt"
    torch.jit.script(FromFile(str(victim))).save(str(path))
    for cmd in (["info", path, "--input", "3x8x8"], ["profile", path, "--input", "3x8x8"]):
        code, err = run_main(cmd, capsys)
        assert code == 2 and len(err) == 1 and "--trust-code" in err[0] and "TorchScript" in err[0]
    assert victim.read_bytes() == b"good"
    # with the flag (or its old name) the user takes responsibility: the code runs
    net = sio.load(str(path), trust_pickle=True, input_shape=(3, 8, 8))
    assert net.format == "torchscript"


def test_zip_that_looks_like_torchscript_is_one_line(tmp_path):
    path = tmp_path / "fake.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fake/constants.pkl", b"junk")
        z.writestr("fake/code/__torch__.py", b"junk")
    with pytest.raises(SurgeryError, match="not a readable TorchScript archive"):
        sio.load(str(path), trust_code=True, input_shape=(3, 8, 8))


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    path = tmp_path_factory.mktemp("pt2") / "m.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(1, 3, 8, 8),)), str(path))
    return path


def test_pt2_counts_on_meta_but_runs_real_tensors_only_with_trust(pt2):
    net = sio.load(str(pt2))
    out = net.module(torch.empty(1, 3, 8, 8, device="meta"))  # analysis: allowed
    assert tuple(out.shape) == (1, 4, 6, 6)
    with pytest.raises(SurgeryError, match="--trust-code"):
        net.module(torch.randn(1, 3, 8, 8))
    trusted = sio.load(str(pt2), trust_code=True)
    assert tuple(trusted.module(torch.randn(1, 3, 8, 8)).shape) == (1, 4, 6, 6)


def test_profile_refuses_untrusted_pt2_before_timing(pt2, capsys):
    """Timing runs the graph on real tensors: one line and exit 2, not a 'failed' row and exit 0."""
    code, err = run_main(["profile", pt2, "--min-runs", "1", "--max-runs", "1"], capsys)
    assert code == 2 and len(err) == 1 and "without trust" in err[0] and "--trust-code" in err[0]
    code, _ = run_main(["profile", pt2, "--trust-code", "--min-runs", "1", "--max-runs", "1", "--warmup", "0"], capsys)
    assert code == 0


def test_bad_pt2_prints_one_line_without_torch_log(tmp_path, capsys):
    path = tmp_path / "bad.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bad/models/model.json", b"{junk")
    code, err = run_main(["info", path], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("surgery: error: ")


def test_pickled_module_vs_random_bytes(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), whole)
    with pytest.raises(SurgeryError, match="pickled Python objects.*--trust-code"):
        sio.load(str(whole))
    rnd = tmp_path / "rnd.pt"
    rnd.write_bytes(bytes(range(256)) * 4)
    for trust in (False, True):  # random bytes are no pickled module, trusted or not
        with pytest.raises(SurgeryError) as e:
            sio.load(str(rnd), trust_code=trust)
        assert "not a PyTorch file" in str(e.value) and "--trust" not in str(e.value)


def test_trusted_pickle_that_fails_to_unpickle_is_one_error(tmp_path):
    path = tmp_path / "p.pt"
    # a pickle naming a class that does not exist: weights_only stops at the global, trust then fails
    path.write_bytes(b"\x80\x02cnosuchmodule\nNoSuchClass\nq\x00)\x81q\x01.")
    with pytest.raises(SurgeryError, match="trusted pickle cannot be loaded"):
        sio.load(str(path), trust_code=True)


def test_empty_file_is_one_line(tmp_path, capsys):
    (tmp_path / "e.pt").write_bytes(b"")
    code, err = run_main(["info", tmp_path / "e.pt"], capsys)
    assert code == 2 and err == [f"surgery: error: {tmp_path / 'e.pt'} is empty (0 bytes); it holds no model"]


def test_error_with_empty_message_is_still_one_line(monkeypatch, capsys):
    import cli_commands.info as info_cmd

    def boom(*a, **k):
        raise SurgeryError("")

    monkeypatch.setattr(info_cmd, "load_model", boom)
    code, err = run_main(["info", "zoo:resnet18"], capsys)
    assert code == 2 and err == ["surgery: error: SurgeryError (no message)"]


# ------------------------------------------------------------------ inputs are never outputs


def test_implicit_inputs_are_never_outputs_even_with_force(tmp_path, capsys):
    cfg = tmp_path / "a.cfg"
    cfg.write_text(TINY_CFG)
    net = sio.load(str(cfg))
    from zoo.darknet import write_weights

    write_weights(net.module, tmp_path / "a.weights")
    other = tmp_path / "other.weights"
    other.write_bytes((tmp_path / "a.weights").read_bytes())
    before = {p: p.read_bytes() for p in (cfg, tmp_path / "a.weights", other)}
    cases = [
        ["retarget", cfg, "--at", "0", "--classes", "1", "-o", tmp_path / "a.weights", "--force"],  # same stem
        ["retarget", cfg, "--weights", other, "--at", "0", "--classes", "1", "-o", other, "--force"],  # --weights
        ["fold", cfg, "--weights", other, "-o", other, "--force"],
    ]
    for args in cases:
        code, err = run_main(args, capsys)
        assert code == 2 and len(err) == 1 and "is also an input" in err[0], (args, err)
    # a hard link to an input is the input (inodes are compared, not names)
    os.link(cfg, tmp_path / "link.pt")
    code, err = run_main(["fold", cfg, "-o", tmp_path / "link.pt", "--force"], capsys)
    assert code == 2 and "is also an input" in err[0]
    assert {p: p.read_bytes() for p in before} == before


def test_arch_cfg_of_a_state_dict_is_an_input(tmp_path):
    cfg = tmp_path / "arch.cfg"
    cfg.write_text(TINY_CFG)
    sd = tmp_path / "sd.pt"
    torch.save(sio.load(str(cfg)).module.state_dict(), sd)
    net = sio.load(str(sd), arch=str(cfg))
    with pytest.raises(SurgeryError, match="is also an input"):
        sio.save(net, cfg, force=True)  # the library knows the files a Net was read from


def test_outputs_that_cannot_be_written_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    net = sio.load("zoo:yolov3_tiny")
    for out, msg in [(tmp_path / "afile" / "x.pt", "is a file, not a directory"),
                     ("/proc/self/x.pt", "cannot be written|not writable|cannot write"),
                     ("/proc/x.pt", "cannot be written|not writable|cannot write"),
                     (tmp_path / "nodir" / "x.pt", "does not exist")]:
        with pytest.raises(SurgeryError, match=msg):
            sio.save(net, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_read_only_place_is_one_error(tmp_path, monkeypatch):
    """EROFS/EACCES at create time (root ignores chmod, so the OS error is injected)."""
    import tempfile

    def refuse(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(SurgeryError, match="Read-only file system.*nothing was written"):
        sio.atomic_write([tmp_path / "x.pt"], lambda tmps: None)


# ------------------------------------------------------------------ escaping


def test_escape_makes_control_characters_visible():
    assert safety.escape("a\x1b[2Jb\nc\x7f\u202e\udc9b") == "a\\x1b[2Jb\\x0ac\\x7f\\u202e\\x9b"
    assert safety.escape("plain, ünïcode ok") == "plain, ünïcode ok"


def test_cfg_section_with_escape_sequence_is_escaped_on_stderr(tmp_path, capsys):
    cfg = tmp_path / "esc.cfg"
    cfg.write_bytes(b"[net]\nwidth=8\nheight=8\nchannels=3\n[\x1b[2Jevil]\n")
    code, err = run_main(["info", cfg], capsys)
    assert code == 2 and len(err) == 1
    assert "\x1b" not in err[0] and "\\x1b[2Jevil" in err[0]


def test_table_cells_are_escaped():
    from cli_commands.base import table

    t = table(None, ["name"], [["x\x1b[31my"]])
    assert list(t.columns[0].cells) == ["x\\x1b[31my"]


# ------------------------------------------------------------------ checkpoints


def test_flipped_tensor_bytes_are_caught_by_the_content_hash(tmp_path):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(TINY_CFG)
    path = sio.save(sio.load(str(cfg)), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["state_dict_sha256"] == sio.state_hash(raw["state_dict"])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:  # flip a byte inside the first tensor's storage record
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size >= 4)
    head = data[info.header_offset:info.header_offset + 30]  # the local header's own lengths
    off = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
    data[off] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SurgeryError, match=r"m\.pt: its weights do not match the content hash"):
        sio.load(str(path))


@pytest.mark.parametrize("edit, msg", [
    (lambda c: c.update(input_shape=[-3, 0]), "input_shape"),
    (lambda c: c.update(input_shape="3x8x8"), "input_shape"),
    (lambda c: c.update(arch={"kind": 7}), "malformed arch|cannot be rebuilt"),
    (lambda c: c.update(recipe=[{"op": "nosuchop"}]), "nosuchop|cannot be rebuilt"),
    (lambda c: c["state_dict"].update({k: v.to(torch.int32) for k, v in c["state_dict"].items()
                                       if v.is_floating_point()}), "int32"),
])
def test_tampered_checkpoints_are_one_error(tmp_path, edit, msg):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(TINY_CFG)
    ckpt = sio.checkpoint_dict(sio.load(str(cfg)))
    edit(ckpt)
    ckpt.pop("state_dict_sha256")  # an attacker recomputes or drops them; the checks stand alone
    ckpt.pop("content_sha256")
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(SurgeryError, match=msg):
        sio.load(str(tmp_path / "bad.pt"))


def test_an_edited_arch_or_recipe_is_a_tampered_file(tmp_path):
    """The content hash covers the arch spec (which may name code) and the recipe, not just the
    weights: a checkpoint whose arch was edited and weights left alone is refused as tampered."""
    cfg = tmp_path / "t.cfg"
    cfg.write_text(TINY_CFG)
    good = sio.checkpoint_dict(sio.load(str(cfg)))
    for edit in (lambda c: c["arch"].update(cfg=c["arch"]["cfg"].replace("filters=", "filters=1")),
                 lambda c: c.update(arch={"kind": "py", "name": "examples.mynet:MyNet", "kwargs": {}}),
                 lambda c: c.update(recipe=[{"op": "fold", "args": {}}])):
        ckpt = {**good, "arch": dict(good["arch"])}
        edit(ckpt)
        assert ckpt["state_dict_sha256"] == good["state_dict_sha256"]  # weights untouched
        torch.save(ckpt, tmp_path / "edited.pt")
        with pytest.raises(SurgeryError, match="architecture, recipe or weights do not match the content hash"):
            sio.load(str(tmp_path / "edited.pt"))


# ------------------------------------------------------------------ torn and racing writes


def test_racing_writer_gets_exists_not_a_silent_replace(tmp_path):
    out = tmp_path / "o.pt"

    def writer(tmps):  # another process creates the name while we write
        tmps[0].write_text("ours")
        out.write_text("theirs")

    with pytest.raises(SurgeryError, match="exists.*--force"):
        sio.atomic_write([out], writer)
    assert out.read_text() == "theirs"
    assert listing(tmp_path) == {"o.pt"}  # no temp file left
    sio.atomic_write([out], lambda t: t[0].write_text("forced"), force=True)
    assert out.read_text() == "forced"


def test_two_outputs_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.cfg", tmp_path / "b.weights"

    def writer(tmps):
        tmps[0].write_text("a")
        tmps[1].write_text("b")
        b.write_text("someone else")

    with pytest.raises(SurgeryError, match="exists"):
        sio.atomic_write([a, b], writer)
    assert listing(tmp_path) == {"b.weights"} and b.read_text() == "someone else"


SIGNAL_SCRIPT = r"""
import os, signal, sys
import torch
import cli
real_save = torch.save
def slow_save(obj, f, *a, **k):
    open(f, "wb").write(b"x" * 4096)       # half-written temp file
    os.kill(os.getpid(), signal.SIG{sig})  # arrives in the middle of the write
    raise AssertionError("the signal did not interrupt the save")
torch.save = slow_save
sys.exit(cli.main(["zoo", "build", "yolov3_tiny", "-o", "out.pt"]))
"""


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_signal_during_save_removes_temp_and_exits_128_plus_signal(tmp_path, sig):
    proc = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT.replace("{sig}", sig)], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    signum = getattr(signal, f"SIG{sig}")
    assert proc.returncode == 128 + signum, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"surgery: interrupted (SIG{sig}); partial outputs removed"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_start_up_is_one_line_exit_130(tmp_path):
    script = ("import builtins, os, signal\n"
              "real = builtins.__import__\n"
              "def imp(name, *a, **k):\n"
              "    if name == 'typer':\n"
              "        os.kill(os.getpid(), signal.SIGINT)\n"
              "    return real(name, *a, **k)\n"
              "builtins.__import__ = imp\n"
              "import cli\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines() == ["surgery: interrupted (SIGINT)"]


# ------------------------------------------------------------------ sizes


@pytest.mark.parametrize("ref", ["zoo:yolov3_tiny:classes=100000000", "zoo:resnet18:num_classes=100000000000"])
def test_absurd_zoo_sizes_say_how_much_memory(ref):
    with pytest.raises(SurgeryError, match=r"would need [\d.]+ (GiB|TiB) of memory but"):
        sio.load(ref)


@pytest.mark.parametrize("edit, msg", [
    (("filters=4", "filters=1000000000"), r"would need [\d.]+ (GiB|TiB) of memory"),
    (("width=8", "width=2147483648"), "larger than 2147483647"),
])
def test_absurd_cfg_sizes_are_refused_before_allocation(tmp_path, edit, msg):
    cfg = tmp_path / "big.cfg"
    cfg.write_text(TINY_CFG.replace(*edit))
    with pytest.raises(SurgeryError, match=msg):
        sio.load(str(cfg))


def test_absurd_input_shape_is_refused():
    with pytest.raises(SurgeryError, match="larger than"):
        sio.load("zoo:yolov3_tiny", input_shape=(99999999999999999999, 1, 1))


def test_probe_forward_too_large_is_refused_with_an_estimate():
    net = sio.load("zoo:resnet18")
    need = safety.forward_nbytes(net.module, (3, 100000, 100000), batch=2)
    # the first conv alone writes 2 x 64 x 50000 x 50000 float32 values
    assert need >= 2 * 64 * 50000 * 50000 * 4
    with pytest.raises(SurgeryError, match=r"verifying on probe inputs at input 3x100000x100000 .* would need"):
        compare(net.module, net.module, (3, 100000, 100000))


# ------------------------------------------------------------------ wrong answers


def test_nan_weights_are_named_not_reported_as_max_abs_0():
    net = sio.load("zoo:resnet18:num_classes=10")
    with torch.no_grad():
        net.module.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(SurgeryError, match=r"NaN.*layer2\.0\.conv1\.weight"):
        compare(net.module, net.module, net.input_shape)


@pytest.mark.parametrize("rtol", [-1.0, float("nan"), float("inf")])
def test_bad_tolerances_are_refused(rtol):
    from surgery.fold import fold

    with pytest.raises(SurgeryError, match="rtol"):
        fold(sio.load("zoo:yolov3_tiny"), rtol=rtol)


@pytest.mark.parametrize("opset", [1, 99999])
def test_unsupported_opset_is_refused(opset):
    from surgery.core.onnx_io import export_model

    with pytest.raises(SurgeryError, match=f"opset {opset} is not supported"):
        export_model(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), opset=opset)


# ------------------------------------------------------------------ Darknet cfg bytes


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbf" + TINY_CFG.encode(),  # UTF-8 BOM
    b"# caf\xe9: a Latin-1 comment\n" + TINY_CFG.encode(),
    TINY_CFG.replace("\n", "\r\n").encode(),
    TINY_CFG.encode().replace(b"activation=leaky", b"activation=leaky\x00garbage"),  # C strings end at NUL
])
def test_cfg_bytes_read_as_darknet_does(tmp_path, data):
    cfg = tmp_path / "c.cfg"
    cfg.write_bytes(data)
    assert sio.load(str(cfg)).input_shape == (3, 8, 8)


def test_utf16_cfg_is_one_clear_error(tmp_path):
    cfg = tmp_path / "c.cfg"
    cfg.write_bytes(TINY_CFG.encode("utf-16"))
    with pytest.raises(SurgeryError, match="UTF-16"):
        sio.load(str(cfg))


def test_memory_plan_is_linear():
    """``free_after`` on 100k layers: the old per-layer scan of every activation would do
    10^10 steps; this one reads each input once (counted)."""
    reads = 0

    class Counting(tuple):
        def __iter__(self):
            nonlocal reads
            reads += len(self)
            return super().__iter__()

    n = 100_000
    inputs = [Counting((i - 1,) if i % 3 else (i - 1, max(-1, i - 3))) for i in range(n)]
    plan = free_after(inputs)
    assert reads == sum(len(t) for t in inputs)
    # layer i reads i-1 (and i-3 when 3 | i): activation j dies at j+3 if 3 | j, else at j+1
    assert plan[0] == (-1,) and plan[1] == () and plan[3] == (0, 2) and plan[n - 1] == (n - 4, n - 2)
    assert sum(len(p) for p in plan) == n  # every activation but the output, and the input, once


@pytest.mark.slow
def test_20k_layer_cfg_builds_and_tabulates(tmp_path):
    """Building and the layer table are linear: a 20,000-layer cfg within the suite's budget
    (28 s for the build alone before the fix, quadratic)."""
    from surgery.core.graph import layer_table

    lines = ["[net]", "channels=4", "height=2", "width=2", "[convolutional]", "filters=4", "size=1"]
    for i in range(1, 20_000):  # cheap layers (one module each) with long-range reads: route -2
        lines += ["[route]", "layers=-2"] if i % 2 == 0 else ["[maxpool]", "size=1", "stride=1"]
    cfg = tmp_path / "deep.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    net = sio.load(str(cfg))
    table = layer_table(net.module)
    assert len(table) == 20_000 and table[-2].type == "route" and table[-1].type == "maxpool"


# ------------------------------------------------------------------ the contract, fuzzed


def _contract(code: int, err: list[str], before: set[str], d: Path) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("surgery: error: "), err
        assert all(c.isprintable() for c in err[0]), err
    assert listing(d) == before  # nothing written (no temp file either)


@st.composite
def mutated_cfg(draw) -> bytes:
    data = bytearray(TINY_CFG.encode())
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "number", "bom"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "number":
            data = data.replace(b"=4", b"=" + str(draw(st.sampled_from([0, -1, 2**31, 10**12]))).encode(), 1)
        elif kind == "bom":
            data[0:0] = b"\xef\xbb\xbf"
    return bytes(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated_cfg(), st.binary(max_size=300)))
def test_fuzz_cfg_contract(tmp_path_factory, capsys, data):
    d = tmp_path_factory.mktemp("fz")
    (d / "f.cfg").write_bytes(data)
    before = listing(d)
    code, err = run_main(["fold", d / "f.cfg", "-o", d / "out.pt"], capsys)
    if code == 0:
        (d / "out.pt").unlink(missing_ok=True)  # "nothing to fold" writes nothing
    _contract(code, err, before, d)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("ck")
    (d / "t.cfg").write_text(TINY_CFG)
    return sio.save(sio.load(str(d / "t.cfg")), d / "m.pt").read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_fuzz_checkpoint_contract(tmp_path_factory, capsys, checkpoint_bytes, edits, cut):
    data = bytearray(checkpoint_bytes)
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[:int(cut * len(data))]
    d = tmp_path_factory.mktemp("fz")
    (d / "m.pt").write_bytes(bytes(data))
    before = listing(d)
    code, err = run_main(["info", d / "m.pt", "--json"], capsys)
    _contract(code, err, before, d)
