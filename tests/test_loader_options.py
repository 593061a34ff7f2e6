"""The loader options (--arch, --weights, --trust-code/--trust-pickle, --input) mean the same in
every command that loads a model; multi-model commands take --arch/--weights repeated, in the
order of their models (cli_commands.base.load_models)."""

from __future__ import annotations

import pytest
import torch
import typer

import cli
from cli_commands.base import per_model
from cli_commands.lazy import load_all
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.datasets import write_digits

# Every argument of every command is one of these: a new command's argument must be classified
# here, so a command that loads a model cannot escape the checks below.
MODEL_ARGS = {"model", "models", "cascade", "a", "b"}
OTHER_ARGS = {"out_dir", "name"}  # `surgery data` folders, `surgery zoo` names (not model references)
# Options naming a further model: the command takes per-model (repeatable) --arch/--weights.
EXTRA_MODEL_OPTS = {"teacher", "baseline"}
LOADER = ("--arch", "--weights", "--trust-code", "--trust-pickle", "--input")


def _arg(p) -> bool:  # typer vendors click (typer._click): duck-typed, no private import
    return p.param_type_name == "argument"


def _opt(p) -> bool:
    return p.param_type_name == "option"


def _commands(cmd, path: tuple[str, ...] = ()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield path, cmd


load_all()  # command modules load lazily; register every one
ALL = dict(_commands(typer.main.get_command(cli.app)))
assert len(ALL) > 20, sorted(ALL)  # every command and sub-command, not the lazy stubs
LOADING = {p: c for p, c in ALL.items()
           if any(_arg(a) and a.name in MODEL_ARGS for a in c.params)}


def _multi(cmd) -> bool:
    args = [a for a in cmd.params if _arg(a) and a.name in MODEL_ARGS]
    return len(args) > 1 or any(a.nargs == -1 for a in args) or \
        any(_opt(o) and o.name in EXTRA_MODEL_OPTS for o in cmd.params)


def test_every_argument_is_classified_and_the_known_loaders_are_found():
    for path, cmd in ALL.items():
        for a in cmd.params:
            if _arg(a):
                assert a.name in MODEL_ARGS | OTHER_ARGS, f"surgery {' '.join(path)}: argument {a.name!r}"
    names = {" ".join(p) for p in LOADING}
    assert names >= {"info", "layers", "flops", "share", "retarget", "diff", "fold", "profile", "export", "heal",
                     "train", "regroup", "onion split", "onion run", "onion curve", "onion export", "onion train",
                     "onion calibrate"}


@pytest.mark.parametrize("path", sorted(LOADING), ids=lambda p: "-".join(p))
def test_help_lists_every_loader_option(cli, path):
    res = cli(*path, "--help")
    assert res.code == 0, res.err
    for opt in LOADER:
        assert opt in res.out, f"surgery {' '.join(path)} --help lacks {opt}"


@pytest.mark.parametrize("path", sorted(LOADING), ids=lambda p: "-".join(p))
def test_per_model_options_repeat_exactly_on_multi_model_commands(path):
    cmd = LOADING[path]
    opts = {o.name: o for o in cmd.params if _opt(o)}
    multi = _multi(cmd)
    for name in ("arch", "weights"):
        assert opts[name].multiple == multi, f"surgery {' '.join(path)} --{name}"
    assert not opts["input"].multiple and opts["trust_code" if "trust_code" in opts else "trust_pickle"].is_flag
    help_ = opts["weights"].help
    assert ".weights for a .cfg" in help_ and "py:" in help_ and ".safetensors" in help_


def test_per_model_values():
    refs = ["a.pt", "b.pt"]
    assert per_model(None, refs, "--arch") == [None, None]
    assert per_model([], refs, "--arch") == [None, None]
    assert per_model(["zoo:x"], refs, "--arch") == ["zoo:x", "zoo:x"]  # once: every model
    assert per_model("zoo:x", refs, "--arch") == ["zoo:x", "zoo:x"]
    assert per_model(["-", "zoo:y"], refs, "--arch") == [None, "zoo:y"]
    with pytest.raises(SurgeryError, match=r"--arch given 3 times for 2 models \(a.pt, b.pt\)"):
        per_model(["x", "y", "z"], refs, "--arch")


# ------------------------------------------------------------------ real cases, bare state_dicts

A = "zoo:digits_cnn"
B = "zoo:digits_cnn:num_classes=3"  # a different head: A's arch cannot load B's state_dict


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """a.pt: digits_cnn's state_dict; b.pt: the 3-class variant with A's trunk and conv4 doubled."""
    d = tmp_path_factory.mktemp("bare")
    sa = sio.load(A).module.state_dict()
    sb = sio.load(B).module.state_dict()
    for k, v in sa.items():
        if not k.startswith("fc."):
            sb[k] = v.clone()
    sb["features.conv4.weight"] = 2 * sa["features.conv4.weight"]
    torch.save(sa, d / "a.pt")
    torch.save(sb, d / "b.pt")
    return d


def test_diff_takes_one_arch_per_model(cli, bare):
    res = cli("diff", "a.pt", "b.pt", "--arch", A, "--arch", B, "--json", cwd=bare)
    assert res.code == 0, res.err
    rep = res.json()
    conv4 = [r for r in rep["layers"] if r["param"] == "features.conv4.weight"]
    # |2w - w| / mean|w| = |w| / mean|w|: mean exactly 1
    assert len(conv4) == 1 and conv4[0]["mean"] == pytest.approx(1.0, rel=1e-5)
    others = [r for r in rep["layers"] if r["kind"] == "weight" and r["param"] != "features.conv4.weight"]
    assert others and all(r["max"] == 0 for r in others)
    fc = {s["param"]: s for s in rep["skipped"]}
    assert fc["fc.weight"]["shape_a"] == [10, 64] and fc["fc.weight"]["shape_b"] == [3, 64]
    # once: every model, so B's state_dict meets A's arch
    res = cli("diff", "a.pt", "b.pt", "--arch", A, cwd=bare)
    assert res.code == 2 and "b.pt" in res.err and "fc.weight" in res.err and "--arch" in res.err
    res = cli("diff", "a.pt", "b.pt", "--arch", A, "--arch", B, "--arch", A, cwd=bare)
    assert res.code == 2 and "--arch given 3 times for 2 models" in res.err


def test_share_with_a_bare_state_dict_task(cli, bare, tmp_path):
    res = cli("share", "--at", "features.relu2", A, str(bare / "b.pt"), "--arch", "-", "--arch", B, "--input",
              "1x32x32", "-o", "s.pt", "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    assert [h["model"] for h in rep["heads"]] == [A, str(bare / "b.pt")]
    assert all(h["layers_equal"] for h in rep["heads"]) and rep["input_shape"] == [1, 32, 32]
    assert (tmp_path / "s.pt").exists()


def test_heal_with_a_bare_state_dict_teacher(cli, tmp_path):
    teacher = "zoo:digits_cnn:width=2"
    torch.save(sio.load(teacher).module.state_dict(), tmp_path / "t.pt")
    data = write_digits(tmp_path / "digits", per_class=2).output
    fast = ["--data", data, "--steps", "1", "--batch", "8", "--workers", "0", "--json"]
    # STUDENT gets '-', TEACHER the arch: the teacher's weights are the student's, so they agree
    res = cli("heal", teacher, "--teacher", "t.pt", "--arch", "-", "--arch", teacher, *fast, cwd=tmp_path)
    assert res.code == 0, res.err
    rep = res.json()
    assert rep["teacher"].endswith("t.pt")
    assert rep["before"]["top1_agreement"] == 1.0 and rep["before"]["kl_to_teacher"] == pytest.approx(0, abs=1e-6)
    res = cli("heal", teacher, "--teacher", "t.pt", "--arch", teacher, "--arch", "-", *fast, "-o", "x.pt",
              cwd=tmp_path)
    assert res.code == 2 and "t.pt is a bare state_dict; pass --arch" in res.err
    assert not (tmp_path / "x.pt").exists()
