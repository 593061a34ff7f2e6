"""``surgery export``: verified ONNX and Darknet cfg+weights, nothing written on failure."""

from __future__ import annotations

import torch

from surgery.core import io as sio
from surgery.core.verify import compare

TINY = "zoo:yolov3_tiny:width=128,height=128"


def test_export_darknet_and_onnx_round_trip(cli, tmp_path):
    cfg, onnx = tmp_path / "t.cfg", tmp_path / "t.onnx"
    res = cli("export", TINY, "--darknet", cfg, "--onnx", onnx, "--json")
    assert res.code == 0, res.err
    d = res.json()
    assert d["model"] == TINY and d["darknet"]["output"] == str(cfg) and d["darknet"]["identical"] is True
    assert d["darknet"]["weights"] == str(tmp_path / "t.weights")
    assert d["darknet"]["layers"] == 24 and d["darknet"]["batchnorms"] == 11
    assert d["onnx"]["output"] == str(onnx) and d["onnx"]["verify"]["max_rel"] <= d["onnx"]["verify"]["rtol"]
    assert d["onnx"]["batch"] == "dynamic" and d["onnx"]["output_names"] == ["head0_out0", "head0_out1"]
    src = sio.load(TINY)
    back = sio.load(str(cfg))  # same-stem .weights is picked up
    assert back.metadata["weights"] == str(tmp_path / "t.weights")
    for k, v in src.module.state_dict().items():
        assert torch.equal(v, back.module.state_dict()[k]), k
    rep = compare(src.module, back.module, src.input_shape, probes=1, batch=1)
    assert rep.max_abs == 0.0
    # written weights are byte-compatible: a second export of the loaded files gives the same bytes
    again = tmp_path / "again.cfg"
    assert cli("export", cfg, "--darknet", again).code == 0
    assert (tmp_path / "again.weights").read_bytes() == (tmp_path / "t.weights").read_bytes()


def test_export_refusals_write_nothing(cli, tmp_path):
    res = cli("export", "zoo:resnet18:num_classes=3", "--darknet", tmp_path / "r.cfg")
    assert res.code == 2 and "as ONNX instead" in res.err and "Traceback" not in res.err
    assert list(tmp_path.iterdir()) == []
    assert cli("export", TINY, "--darknet", tmp_path / "x.txt").code == 2
    assert cli("export", TINY, "--batch", "1,8").code == 2
    (tmp_path / "t.cfg").write_text("keep")
    res = cli("export", TINY, "--darknet", tmp_path / "t.cfg")
    assert res.code == 2 and "--force" in res.err
    assert (tmp_path / "t.cfg").read_text() == "keep" and not (tmp_path / "t.weights").exists()


def test_export_default_is_onnx_in_the_current_directory(cli, tmp_path):
    res = cli("export", "zoo:resnet18:num_classes=3", "--input", "3x32x32", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.err.strip().splitlines()[-1] == "wrote resnet18.onnx" and "wrote" not in res.out
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18.onnx"]
    again = cli("export", "zoo:resnet18:num_classes=3", "--input", "3x32x32", cwd=tmp_path)
    assert again.code == 2 and "--force" in again.err


def _as_the_table_shows(x: float) -> str:
    """The table's number format (cli_commands.base.fmt_num), written out again: three significant
    digits, an exponent only outside 1e-4..1e6."""
    import math

    if x == 0:
        return "0"
    if 1e-4 <= abs(x) < 1e6:
        return f"{x:,.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"
    return f"{x:.3g}"


def test_export_table_fits_the_terminal_without_cutting_a_number(cli, tmp_path):
    import re
    from pathlib import Path

    cfg = Path(__file__).parent / "data" / "darknet" / "lrn.cfg"
    # a long output directory: at 200 columns too the natural table is wider than the terminal
    deep = tmp_path / "a_rather_long_directory_name_so_that_the_table_is_wider_than_the_terminal" / "and_deeper"
    deep.mkdir(parents=True)
    args = ("export", cfg, "--onnx", deep / "x.onnx", "--darknet", deep / "x.cfg", "--batch", "1")
    res = cli(*args, "--json")
    assert res.code == 0, res.err
    d = res.json()
    numbers = [_as_the_table_shows(d["onnx"]["verify"]["max_abs"]), _as_the_table_shows(d["onnx"]["verify"]["max_rel"]),
               f"{d['darknet']['params']:,}", f"{d['darknet']['weights_bytes']:,}", f"{d['darknet']['layers']}"]
    for cols in (80, 200):
        res = cli(*args, "--force", env={"COLUMNS": str(cols)})
        assert res.code == 0, res.err
        lines = res.out.rstrip("\n").splitlines()
        assert max(len(l.rstrip()) for l in lines) <= cols, res.out  # nothing runs past the edge (rich would crop it)
        header = next(l for l in lines if "┃" in l)
        assert [h.strip() for h in header.strip("┃").split("┃")] == ["format", "files", "what", "check"], res.out
        assert "left out" not in res.out and "…" not in res.out
        body = [l for l in lines if l.startswith("│")]
        for n in numbers:  # each number whole on one line of one cell
            assert any(re.search(rf"(?<![\d.,]){re.escape(n)}(?![\d])", l) for l in body), (cols, n, res.out)
        # the paths fold onto more lines: joined again, each cell of the files column holds them whole
        files = "".join(l.split("│")[2].strip() for l in body)
        for p in (deep / "x.onnx", deep / "x.cfg", deep / "x.weights"):
            assert str(p) in files, (cols, p, res.out)
