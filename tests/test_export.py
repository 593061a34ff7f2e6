"""ONNX export: verified against PyTorch before writing, atomic, never over an existing file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import DataDependent
from torch import nn

from surgery import io as sio
from surgery.errors import SurgeryError
from surgery.export import export_onnx
from surgery.net import Net

SMALL = "zoo:resnet18:num_classes=10"


@pytest.fixture(scope="module")
def small():
    return sio.load(SMALL, input_shape=(3, 32, 32))


class TwoHeads(nn.Module):
    """Several outputs (a tuple holding a dict): flattened in order in the ONNX graph."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 2, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.body(x)
        return self.a(y), {"b": self.b(y)}


def _net(module: nn.Module, shape, name: str) -> Net:
    torch.manual_seed(0)
    module.eval()
    return Net(module, None, shape, source=name, format="module")


def test_export_verified_and_runs_like_pytorch(tmp_path, small):
    out = tmp_path / "r18.onnx"
    rep = export_onnx(small, out)
    assert out.exists() and rep.path == str(out)
    assert rep.verified and rep.provider == "CPUExecutionProvider" and rep.probes == 2
    assert rep.max_rel is not None and rep.max_rel <= 1e-4 and rep.rtol == 1e-4
    assert rep.exporter in ("dynamo", "torchscript") and rep.opset >= 17
    assert rep.batch == 1 and rep.dtype == "float32" and rep.input_shape == (3, 32, 32)
    assert rep.output_shapes == ((10,),) and rep.size_bytes == out.stat().st_size
    onnx.checker.check_model(str(out))
    # an independent check on a fresh input
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    (y,) = sess.run(None, {rep.input_name: x.numpy()})
    with torch.no_grad():
        ref = small.module(x).numpy()
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_existing_output_needs_force_and_inputs_are_never_overwritten(tmp_path, small):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(SurgeryError, match="--force"):
        export_onnx(small, out, verify=False)
    assert out.read_bytes() == b"keep me"
    ckpt = sio.save(sio.load(SMALL), tmp_path / "m.pt")
    with pytest.raises(SurgeryError, match="input"):
        export_onnx(sio.load(str(ckpt)), ckpt, force=True, verify=False)
    rep = export_onnx(small, out, force=True, verify=False, exporter="torchscript")
    assert rep.exporter == "torchscript" and not rep.verified and rep.max_rel is None
    assert out.read_bytes()[:7] != b"keep me"


def test_several_outputs_are_flattened_and_verified(tmp_path):
    net = _net(TwoHeads(), (3, 16, 16), "two-heads")
    rep = export_onnx(net, tmp_path / "two.onnx", batch=2)
    assert len(rep.output_names) == 2 and rep.output_shapes == ((4, 16, 16), (2, 8, 8))
    assert rep.verified and rep.max_rel <= 1e-4 and rep.batch == 2


def test_float16_export_is_verified_with_a_float16_tolerance(tmp_path):
    net = _net(TwoHeads(), (3, 16, 16), "two-heads")
    rep = export_onnx(net, tmp_path / "half.onnx", dtype=torch.float16)
    assert rep.dtype == "float16" and rep.rtol == 1e-2 and rep.verified and rep.max_rel <= 1e-2


def test_a_model_that_does_not_survive_export_writes_nothing(tmp_path):
    out = tmp_path / "frozen.onnx"
    with pytest.raises(SurgeryError) as e:
        export_onnx(_net(DataDependent(), (3, 8, 8), "data-dependent"), out, probes=4)
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert "dynamo exporter failed" in msg and "torchscript exporter failed" in msg and "differ from PyTorch" in msg
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_arguments(tmp_path, small):
    with pytest.raises(SurgeryError, match="Net"):
        export_onnx(small.module, tmp_path / "x.onnx")
    with pytest.raises(SurgeryError, match="exporter"):
        export_onnx(small, tmp_path / "x.onnx", exporter="tflite")
    with pytest.raises(SurgeryError, match="directory"):
        export_onnx(small, tmp_path / "missing" / "x.onnx")
