"""The public Python API (docs/API.md): its examples run as written, in order, in one empty
folder, and print what the page says; ``import surgery`` stays light; every public name
resolves; the surgeries are callable by their module's name."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

import pytest

from conftest import ROOT

DOC = ROOT / "docs" / "API.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_api_page_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks():
            exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 — the page's own examples
    text = out.getvalue()
    # the figures the page quotes in its comments are what the code prints
    for quoted in ("1,814,073,344 MACs, 11,689,512 params", "20 conv1 118013952", "True 0", "['fold']",
                   "OnionCascade True", "unknown zoo model 'no_such_net'"):
        assert quoted in text, (quoted, text)
    assert (tmp_path / "resnet18-folded.pt").is_file()


def test_import_surgery_imports_no_torch():
    code = "import sys, surgery; print(surgery.__version__); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [__import__("surgery").__version__, "False"]


def test_every_public_name_resolves_and_nothing_else_is_offered():
    import surgery

    assert sorted(dir(surgery)) == sorted(surgery.__all__)
    for name in surgery.__all__:
        assert getattr(surgery, name) is not None, name
    with pytest.raises(AttributeError, match="the public API is"):
        surgery.no_such_function  # noqa: B018


def test_surgeries_are_callable_modules():
    """``surgery.fold`` is both the module (its helpers) and the function (the surgery)."""
    import surgery
    from surgery.fold import fold as fold_fn

    net = surgery.load("zoo:digits_cnn:width=2")
    folded, rep = surgery.fold(net)
    assert rep.folds and type(rep).__name__ == "FoldReport"
    assert surgery.fold.fold is fold_fn and surgery.fold.__doc__.startswith("``surgery fold``")
    for name in ("fold", "share", "retarget", "regroup", "heal"):
        assert callable(getattr(surgery, name)), name
    assert callable(surgery.onion.split)
    assert surgery.to_json(rep)["params_after"] == folded.params
