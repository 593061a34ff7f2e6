"""surgery.outputs (the one way a command writes a model) and surgery.core.ort_session (the one
ONNX Runtime session builder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery import outputs
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.onnx_io import export_model
from surgery.core.ort_session import ort_session


@pytest.fixture(scope="module")
def net():
    return sio.load("zoo:digits_cnn")


@pytest.mark.parametrize("kw,why", [
    ({"checkpoint": "a.onnx"}, "a surgery checkpoint is a .pt"),
    ({"checkpoint": "a.pt", "darknet": "a.weights"}, "name the .cfg"),
    ({"checkpoint": "a.pt", "onnx": "a.pt2"}, "ending in .onnx"),
    ({"checkpoint": "a.pt", "onnx": "./a.pt"}, "ending in .onnx"),
    ({"checkpoint": None}, "nothing to write"),
])
def test_plan_refuses_bad_names(kw, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = kw.pop("checkpoint")
    with pytest.raises(SurgeryError, match=why):
        outputs.plan_outputs(checkpoint, **kw)


def test_plan_refuses_an_existing_file_and_an_input(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(SurgeryError, match="exists; pass --force"):
        outputs.plan_outputs(tmp_path / "m.pt", onnx=tmp_path / "m.onnx")
    with pytest.raises(SurgeryError, match="also an input"):
        outputs.plan_outputs(tmp_path / "m.pt", onnx=tmp_path / "m.onnx", force=True, inputs=[tmp_path / "m.onnx"])
    plan = outputs.plan_outputs(tmp_path / "m.pt", onnx=tmp_path / "m.onnx", force=True)
    assert plan.paths == [tmp_path / "m.pt", tmp_path / "m.onnx"]


def test_checkpoint_and_onnx_are_written_and_read_back(net, tmp_path):
    plan = outputs.plan_outputs(tmp_path / "d.pt", onnx=tmp_path / "d.onnx")
    steps = []
    w = outputs.write_outputs(net, plan, step=steps.append)
    assert steps == ["exporting ONNX and verifying it", "writing the checkpoint"]
    assert w.paths == (tmp_path / "d.pt", tmp_path / "d.onnx") and w.onnx.output == str(tmp_path / "d.onnx")
    back = sio.load(str(tmp_path / "d.pt"))
    x = torch.randn(3, *net.input_shape)
    with torch.no_grad():
        ref = net.module.eval()(x)
        assert torch.equal(back.module.eval()(x), ref)
    sess = ort_session(tmp_path / "d.onnx")
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_a_failure_leaves_no_file(net, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise SurgeryError("ONNX export failed: on purpose")

    monkeypatch.setattr(outputs, "export_onnx", broken)
    plan = outputs.plan_outputs(tmp_path / "d.pt", onnx=tmp_path / "d.onnx")
    with pytest.raises(SurgeryError, match="on purpose"):
        outputs.write_outputs(net, plan)
    assert list(tmp_path.iterdir()) == []  # the checkpoint is not left behind either


def test_session_options(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    data = export_model(m, torch.randn(1, 3, 8, 8), exporter="torchscript").data
    saved = tmp_path / "opt.onnx"
    sess = ort_session(data, threads=1, optimization="basic", optimized_path=saved)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_session_options().intra_op_num_threads == 1
    assert sess.get_session_options().inter_op_num_threads == 1
    assert saved.exists()  # the optimised graph the session runs
    with pytest.raises(SurgeryError, match="graph optimisation level"):
        ort_session(data, optimization="max")
