"""The README's self-contained examples run as written (onnx-graphsurgeon's habit: examples
that are executed by the tests), and the figures it quotes are what the tool prints.

Self-contained = every model reference is a zoo: reference. Examples that need the user's
files (base.pt, yolov3.weights) are what `make demo` exercises; `profile` lines are timing
runs and `--device cuda` needs a GPU, so those are left to the profiler's own tests.
"""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT


def _examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("surgery "):
                cmds.append(line)
    return cmds


def _self_contained(cmd: str) -> bool:
    args = shlex.split(cmd)[1:]
    if args[0] == "profile" or "cuda" in cmd:
        return False
    inputs = [a for a in args[1:] if not a.startswith("-") and re.search(r"\.(pt|cfg|weights|pt2|onnx)$", a)]
    outputs = {args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-o", "--output", "--plot", "--onnx", "--darknet")}
    inputs += [args[i + 1] for i, a in enumerate(args[:-1])  # folders from earlier lines (`data --val N` is a count)
               if a in ("--data", "--val") and not args[i + 1].isdigit()]
    return all(a in outputs for a in inputs)


EXAMPLES = [c for c in _examples() if _self_contained(c)]


def test_readme_has_examples_for_every_command():
    shown = {shlex.split(c)[1] for c in _examples()}
    assert {"info", "zoo", "layers", "flops", "share", "retarget", "diff", "fold", "profile", "export"} <= shown


@pytest.mark.parametrize("cmd", EXAMPLES)
def test_readme_example_runs(cmd, cli, tmp_path):
    res = cli(*shlex.split(cmd)[1:], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})  # py:examples... as from the root
    assert res.code == 0, f"{cmd}\n{res.err}"
    assert res.out.strip()


def test_readme_quoted_figures(cli):
    text = (ROOT / "README.md").read_text()
    assert "2.861e9 MACs" in text
    macs = cli("flops", "zoo:resnet50:variant=v1,root=8", "--json").json()["totals"]["macs"]
    assert f"{macs / 1e9:.3f}e9" == "2.861e9"
    assert "61,949,149 params" in text and "65.864" in text
    d = cli("layers", "zoo:yolov3", "--json").json()
    assert d["totals"]["params"] == 61_949_149
    bflops = sum(l["flops"] for l in d["layers"] if l["type"] == "convolutional") / 1e9
    assert f"{bflops:.3f}" == "65.864"
