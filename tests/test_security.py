"""Code from files (DESIGN.md, README "Security model"): a checkpoint's ``py:`` arch and a run
directory's config are data; they import or run nothing the user did not name, and ``--run-dir``
/ ``--force`` never remove inputs or folders surgery did not make. One test per class of the
hostile probe of issue 20 — every case through the real console script, checking that the
side effect did *not* happen (a marker file not created, a victim file or folder intact)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli

def one_line(res, *needles):
    assert res.code == 2, (res.out, res.err)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def evil_checkpoint(path: Path, name: str, kwargs: dict) -> Path:
    """A surgery checkpoint whose arch names code (weights and their hash left as they are)."""
    from surgery.core import io as sio

    ckpt = sio.checkpoint_dict(sio.load("zoo:digits_cnn:width=2"))
    ckpt["arch"] = {"kind": "py", "name": name, "kwargs": kwargs}
    ckpt.pop("content_sha256")  # an attacker drops (or recomputes) it: the naming rule must hold alone
    torch.save(ckpt, path)
    return path


def shell(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


# ------------------------------------------------------------------ 1, 2: a checkpoint's py: arch


@pytest.mark.parametrize("cwd_is_repo", [True, False], ids=["from-the-repo-root", "from-elsewhere"])
@pytest.mark.parametrize("name, kwargs", [
    # an installed package's function (sympy ships with torch): arbitrary code through its parser
    ("sympy:sympify", {"a": "SHELL"}),
    # torch functions that write files or run a hubconf.py
    ("torch.serialization:save", {"obj": 1, "f": "VICTIM"}),
    ("torch.hub:load", {"repo_or_dir": "HUB", "model": "m", "source": "local"}),
    # the project's own code (an editable install is not under site-packages)
    ("surgery.datasets.digits:write_digits", {"out_dir": "VICTIMDIR", "force": True}),
    # the standard library
    ("os:system", {"command": "SHELLCMD"}),
])
def test_a_checkpoint_naming_code_imports_nothing(cli, tmp_path, cwd_is_repo, name, kwargs):
    marker, victim, victim_dir, hub = tmp_path / "pwned", tmp_path / "victim.txt", tmp_path / "victim_dir", tmp_path / "hub"
    victim.write_text("precious")
    victim_dir.mkdir()
    (victim_dir / "f.txt").write_text("precious")
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"import os\nos.system('touch {marker}')\ndef m():\n    pass\n")
    subst = {"SHELL": shell(marker), "VICTIM": str(victim), "VICTIMDIR": str(victim_dir), "HUB": str(hub),
             "SHELLCMD": f"touch {marker}"}
    evil = evil_checkpoint(tmp_path / "evil.pt", name, {k: subst.get(v, v) for k, v in kwargs.items()})
    res = cli("info", evil, cwd=ROOT if cwd_is_repo else tmp_path)
    line = one_line(res)
    assert "names code" in line or "standard library" in line, line
    if "names code" in line:
        module = name.split(":")[0]
        assert f"pass `--arch py:{name}` (or `--trust-code`)" in line and module in line
    assert not marker.exists()
    assert victim.read_text() == "precious" and (victim_dir / "f.txt").read_text() == "precious"


def test_naming_the_module_or_trusting_imports_it(cli, tmp_path):
    """The legitimate path: the user's own class, saved by a surgery, reloads when they name it."""
    env = {"PYTHONPATH": str(ROOT)}
    res = cli("fold", "py:examples.mynet:MyNet:width=4", "-o", "f.pt", cwd=tmp_path, env=env)
    assert res.code == 0, res.err
    one_line(cli("info", "f.pt", cwd=tmp_path, env=env), "f.pt names code `py:examples.mynet:MyNet`")
    assert cli("info", "f.pt", "--arch", "py:examples.mynet:MyNet", cwd=tmp_path, env=env).code == 0
    assert cli("info", "f.pt", "--trust-code", cwd=tmp_path, env=env).code == 0
    # naming another module does not unlock this one
    one_line(cli("info", "f.pt", "--arch", "py:examples.other:Net", cwd=tmp_path, env=env), "names code")


def test_only_classes_and_functions_of_the_named_package_with_literal_arguments(tmp_path, monkeypatch):
    """Checked before calling: an attribute path into another package, a non-module class, a
    callable object, a mapping argument — all refused even when the module is named/trusted."""
    from surgery.core import io as sio
    from surgery.core import pyref
    from surgery.core.errors import SurgeryError

    (tmp_path / "userpkg.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n    def __init__(self, width=2):\n        super().__init__()\n"
        "        self.c = nn.Conv2d(3, width, 1)\n        self.input_shape = (3, 4, 4)\n"
        "    def forward(self, x):\n        return self.c(x)\n"
        "class NotANet:\n    pass\n"
        "calls = []\n"
        "class Callable:\n    def __call__(self, **kw):\n        calls.append(kw)\n        return Net()\n"
        "instance = Callable()\n"
        "from os import system\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for ref, needle in (("py:userpkg:system", "defined in 'posix'"), ("py:userpkg:torch.save", "defined in 'torch"),
                        ("py:userpkg:NotANet", "not an nn.Module"), ("py:userpkg:instance", "not a class or function"),
                        ("py:userpkg:Net:width=[[[[[1]]]]]", "arguments are numbers")):
        with pytest.raises(SurgeryError, match=needle):
            sio.load(ref)
    import userpkg

    assert userpkg.calls == []
    with pytest.raises(SurgeryError, match="arguments are numbers"):
        pyref.build("userpkg", "Net", {"width": {"a": 1}})


def test_user_code_that_prints_exits_or_interrupts_is_one_line(cli, tmp_path):
    (tmp_path / "noisy.py").write_text(
        "import sys\nfrom torch import nn\n"
        "def talks():\n    print('hello from user code')\n    m = nn.Conv2d(3, 2, 1)\n    m.input_shape = (3, 4, 4)\n"
        "    return m\n"
        "def quits():\n    sys.exit(0)\n"
        "def interrupts():\n    raise KeyboardInterrupt\n")
    ok = cli("flops", "py:noisy:talks", "--json", cwd=tmp_path)
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["totals"]["macs"] == 3 * 2 * 16  # stdout is the JSON alone
    assert "hello from user code" in ok.err
    one_line(cli("info", "py:noisy:quits", cwd=tmp_path), "called sys.exit(0)")
    one_line(cli("info", "py:noisy:interrupts", cwd=tmp_path), "KeyboardInterrupt")


# ------------------------------------------------------------------ 3, 4, 5: --resume and config.json


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished `surgery train` run on the digits (2 steps) and its data."""
    d = tmp_path_factory.mktemp("run")
    assert run_cli("data", "digits", "digits", cwd=d).code == 0
    res = run_cli("train", "zoo:digits_cnn:width=2", "--data", "digits", "--steps", "2", "--no-flip",
                  "--batch", "32", "--workers", "0", "-o", "t.pt", cwd=d)
    assert res.code == 0, res.err
    return d


def edited_run(src: Path, dst: Path, **changes) -> Path:
    """A copy of the finished run (and its data beside it, as the config names it) with its
    config.json edited."""
    if not (dst.parent / "digits").exists():
        shutil.copytree(src / "digits", dst.parent / "digits")
    shutil.copytree(src / "t.run", dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_resume_takes_no_trust_from_the_run_directory(cli, finished_run, tmp_path):
    marker = tmp_path / "pwned"
    # a pickle that runs a command when unpickled, named by the config with trust_code: true
    (tmp_path / "evil_pickle.py").write_text(f"import os\nclass E:\n    def __reduce__(self):\n"
                                             f"        return (os.system, ('touch {marker}',))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import evil_pickle

        torch.save({"m": evil_pickle.E()}, tmp_path / "evil.pt")
    finally:
        sys.path.remove(str(tmp_path))
    run = edited_run(finished_run, tmp_path / "r.run", trust_code=True, model=str(tmp_path / "evil.pt"))
    one_line(cli("train", "--resume", run, "--steps", "3", cwd=tmp_path), "pickled", "--trust-code")
    assert not marker.exists()


def test_resume_imports_no_code_the_config_names(cli, finished_run, tmp_path):
    marker = tmp_path / "pwned"
    run = edited_run(finished_run, tmp_path / "r.run", model=f"py:sympy:sympify:a={shell(marker)}")
    one_line(cli("train", "--resume", run, "--steps", "3", cwd=tmp_path),
             "config.json names code `py:sympy:sympify`", "--trust-code")
    # a bare state_dict, with the arch that builds it taken from the config
    torch.save(torch.load(finished_run / "t.pt", weights_only=True)["state_dict"], tmp_path / "bare.pt")
    run2 = edited_run(finished_run, tmp_path / "r2.run", arch=f"py:sympy:sympify:a={shell(marker)}",
                      model=str(tmp_path / "bare.pt"))
    one_line(cli("train", "--resume", run2, "--steps", "3", cwd=tmp_path), "names code `py:sympy:sympify`")
    assert not marker.exists()


def test_resume_writes_only_where_the_command_line_says(cli, finished_run, tmp_path):
    victim = tmp_path / "elsewhere" / "victim.pt"
    victim.parent.mkdir()
    victim.write_text("precious")
    run = edited_run(finished_run, tmp_path / "r.run", output=str(victim), force=True)
    res = cli("train", "--resume", run, "--steps", "3", cwd=tmp_path)
    assert res.code == 0, res.err
    assert victim.read_text() == "precious"
    assert (tmp_path / "r.pt").is_file() and "wrote " in res.err  # X.run -> X.pt beside it
    # -o and --force on the resuming command line are honoured
    again = cli("train", "--resume", run, "--steps", "3", "-o", "mine.pt", cwd=tmp_path)
    assert again.code == 0 and (tmp_path / "mine.pt").is_file(), again.err
    one_line(cli("train", "--resume", run, "--steps", "3", "-o", "mine.pt", cwd=tmp_path), "exists; pass --force")
    assert cli("train", "--resume", run, "--steps", "3", "-o", "mine.pt", "--force", cwd=tmp_path).code == 0


def test_resume_refuses_a_model_file_that_changed(cli, finished_run, tmp_path):
    """A run started from a file resumes only from that same file (sha256 recorded at start)."""
    d = tmp_path / "w"
    d.mkdir()
    shutil.copytree(finished_run / "digits", d / "digits")
    shutil.copy(finished_run / "t.pt", d / "student.pt")
    res = cli("heal", "student.pt", "--teacher", "student.pt", "--data", "digits", "--steps", "1", "--no-flip",
              "--batch", "32", "--workers", "0", "-o", "h.pt", cwd=d)
    assert res.code == 0, res.err
    cfg = json.loads((d / "h.run" / "config.json").read_text())
    assert set(cfg["inputs_sha256"]) == {"model", "teacher"}
    from surgery.core import io as sio

    (d / "student.pt").unlink()
    sio.save(sio.load("zoo:digits_cnn:width=2"), d / "student.pt")  # the same architecture, other weights
    one_line(cli("heal", "--resume", "h.run", "--steps", "2", "--force", cwd=d),
             "the model file differs from the one the run started from")


@pytest.mark.parametrize("config, needle", [
    ("[1, 2]", "JSON list"),
    ('{"op": "train", "model": "zoo:digits_cnn", "data": "d", "lr": "fast"}', "option 'lr'"),
    ('{"op": "train", "model": {"x": 1}}', "not a model reference"),
    ("{", "not valid JSON"),
])
def test_damaged_run_config_is_one_line(cli, tmp_path, config, needle):
    run = tmp_path / "r.run"
    run.mkdir()
    (run / "config.json").write_text(config)
    one_line(cli("train", "--resume", run, cwd=tmp_path), needle)


# ------------------------------------------------------------------ 6, 7: --run-dir X --force


@pytest.mark.parametrize("where", ["model-folder", "teacher-folder", "data-folder", "inside-data", "above-all"])
def test_run_dir_never_removes_inputs(cli, finished_run, tmp_path, where):
    d = tmp_path / "w"
    (d / "models").mkdir(parents=True)
    (d / "teach").mkdir()
    shutil.copytree(finished_run / "digits", d / "dd")
    shutil.copy(finished_run / "t.pt", d / "models" / "s.pt")
    shutil.copy(finished_run / "t.pt", d / "teach" / "t.pt")
    run_dir = {"model-folder": "models", "teacher-folder": "teach", "data-folder": "dd", "inside-data": "dd/train",
               "above-all": "."}[where]
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    res = cli("heal", "models/s.pt", "--teacher", "teach/t.pt", "--data", "dd", "--steps", "1", "-o", "out.pt",
              "--run-dir", run_dir, "--force", cwd=d)
    one_line(res, "choose another --run-dir")
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before


def test_force_removes_only_run_directories(cli, finished_run, tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    shutil.copytree(finished_run / "digits", d / "dd")
    (d / "notes").mkdir()
    (d / "notes" / "thesis.tex").write_text("precious")
    base = ["train", "zoo:digits_cnn:width=2", "--data", "dd", "--steps", "1", "--workers", "0", "-o", "m.pt"]
    one_line(cli(*base, "--run-dir", "notes", "--force", cwd=d), "not a run directory of surgery")
    assert (d / "notes" / "thesis.tex").read_text() == "precious"
    ok = cli(*base, "--run-dir", "r", cwd=d)
    assert ok.code == 0 and (d / "r" / ".surgery-run").is_file(), ok.err
    again = cli(*base, "--run-dir", "r", "--force", cwd=d)  # a run directory of ours: replaced
    assert again.code == 0, again.err


def test_data_force_replaces_only_data_folders(cli, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    one_line(cli("data", "digits", "mine", "--force", cwd=tmp_path), "not written by `surgery data`")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"
    one_line(cli("data", "digits", "/proc/x", cwd=tmp_path), "cannot be written")


# ------------------------------------------------------------------ smaller defects of the probe


def test_refused_run_leaves_no_run_directory(cli, finished_run, tmp_path):
    shutil.copytree(finished_run / "digits", tmp_path / "dd")
    base = ["train", "zoo:digits_cnn:width=2", "--data", "dd", "--steps", "1", "--workers", "0", "-o", "m.pt"]
    if not torch.cuda.is_available():
        one_line(cli(*base, "--device", "cuda", cwd=tmp_path), "no CUDA device")
        assert not (tmp_path / "m.run").exists()
    one_line(cli(*base, "--lr", "-1", cwd=tmp_path), "--lr")
    assert not (tmp_path / "m.run").exists()
    assert cli(*base, cwd=tmp_path).code == 0  # and the next run is not refused


def test_fifo_and_undecodable_images_are_skipped_and_counted(cli, finished_run, tmp_path):
    d = tmp_path / "dd"
    shutil.copytree(finished_run / "digits", d)
    os.mkfifo(d / "train" / "0" / "f.png")  # opening it would block forever
    # a PNG whose header and checksums pass verify() but whose pixel data does not decode
    good = next((d / "train" / "1").glob("*.png")).read_bytes()
    import zlib

    ihdr_end = good.index(b"IDAT") - 4
    bad_data = zlib.compress(b"\x00" * 3)  # far too few pixels for the header's size
    chunk = len(bad_data).to_bytes(4, "big") + b"IDAT" + bad_data + zlib.crc32(b"IDAT" + bad_data).to_bytes(4, "big")
    (d / "train" / "1" / "broken.png").write_bytes(good[:ihdr_end] + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    res = cli("train", "zoo:digits_cnn:width=2", "--data", "dd", "--epochs", "1", "--batch", "64", "--workers", "0",
              "--json", "-o", "m.pt", cwd=tmp_path, timeout=300)
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["skipped_images"] == 2, rep["skipped"]
    assert set(rep["skipped"]) == {"0/f.png", "1/broken.png"}


def test_warnings_stay_off_the_terminal(cli, tmp_path):
    # a real "decompression bomb" cannot be made small, so a warning is raised by a user's module:
    # the one filter in cli.main covers torch's, Pillow's and everyone else's
    (tmp_path / "warner.py").write_text("import warnings\nfrom torch import nn\n"
                                        "def net():\n    warnings.warn('library noise')\n"
                                        "    m = nn.Conv2d(3, 2, 1)\n    m.input_shape = (3, 4, 4)\n    return m\n")
    res = cli("info", "py:warner:net", cwd=tmp_path)
    assert res.code == 0 and "library noise" not in res.err, res.err
    debug = cli("info", "py:warner:net", cwd=tmp_path, env={"SURGERY_DEBUG": "1"})
    assert "library noise" in debug.err


def test_huge_requests_are_refused_up_front(cli, tmp_path):
    one_line(cli("data", "stereo-patches", "sp", "--train-pairs", "100000000", cwd=tmp_path, timeout=60),
             "ask for fewer pairs")
    assert not (tmp_path / "sp").exists()
    one_line(cli("onion", "curve", "zoo:onion_p", "--min-time", "-1", cwd=tmp_path), "--min-time")


def test_folder_listing_is_linear(tmp_path):
    """20,000 files are listed and checked in one pass (the listing used to be quadratic in the
    number of unreadable files); the progress callback sees every step to the end."""
    from PIL import Image

    from surgery.train import data as tdata

    im = Image.new("L", (4, 4))
    for i in range(2000):
        (tmp_path / str(i % 2)).mkdir(exist_ok=True)
        im.save(tmp_path / str(i % 2) / f"{i}.png")
    for i in range(18000):
        (tmp_path / str(i % 2) / f"bad{i}.png").write_bytes(b"not a png")
    seen = []
    with tdata.reporting(lambda done, total, what: seen.append((done, total))):
        f = tdata.scan(tmp_path, labels=True)
    assert len(f) == 2000 and len(f.skipped) == 18000
    assert seen[-1] == (20000, 20000)
