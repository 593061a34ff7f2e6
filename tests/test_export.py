"""ONNX export: verified against PyTorch before writing, atomic, never over an existing file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import DataDependent
from torch import nn

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.export import export_onnx
from surgery.core.net import Net

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
    assert out.exists() and rep.output == str(out)
    assert rep.verified and rep.provider == "CPUExecutionProvider" and rep.probes == 3  # 2 at batch 2, 1 at batch 1
    assert rep.max_rel is not None and rep.max_rel <= 1e-4 and rep.rtol == 1e-4
    assert rep.exporter == "dynamo" and rep.notes == ()  # the TorchScript exporter is only the fallback
    assert rep.opset == next(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx"))
    assert rep.batch is None and rep.dtype == "float32" and rep.input_shape == (3, 32, 32)
    assert rep.output_shapes == ((10,),) and rep.size_bytes == out.stat().st_size
    assert rep.input_name == "input" and rep.output_names == ("head0_out0",)
    onnx.checker.check_model(str(out))
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["head0_out0"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    # an independent check on fresh inputs of several batch sizes
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        (y,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            ref = small.module(x).numpy()
        assert y.shape == (batch, 10) and np.abs(y - ref).max() / np.abs(ref).max() < 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    js = rep.to_json()
    assert js["output"] == str(out) and js["batch"] == "dynamic" and set(js["verify"]) >= {"max_abs", "max_rel"}


def test_a_fixed_batch_is_static(tmp_path, small):
    rep = export_onnx(small, tmp_path / "b4.onnx", batch=4, verify=False, exporter="torchscript")
    graph = onnx.load(str(tmp_path / "b4.onnx")).graph
    assert rep.batch == 4 and graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert rep.to_json()["verify"] is None


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
    assert rep.output_names == ("head0_out0", "head0_out1") and rep.output_shapes == ((4, 16, 16), (2, 8, 8))
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
