"""Roofline bounds: device specs, per-layer classification and the latency floor."""

from __future__ import annotations

import json

import pytest
from torch import nn

from analyzers import roofline as R
from analyzers.cost import analyze
from surgery.core.errors import SurgeryError


def _report():
    m = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.ReLU()).eval()
    return analyze(m, (256, 56, 56))


def test_builtin_specs():
    h100, h200, a100 = R.get_spec("h100-sxm"), R.get_spec("h200"), R.get_spec("a100")
    assert h100.peak_flops["float32"] == 67e12 and h100.mem_bandwidth == 3.35e12
    assert h100.peak_flops["bfloat16"] == 989.4e12 and h100.peak_flops["tf32"] == 494.7e12
    assert h200.peak_flops == h100.peak_flops and h200.mem_bandwidth == 4.8e12
    assert a100.peak_flops["float32"] == 19.5e12 and a100.mem_bandwidth == 2.039e12
    assert R.get_spec("H100") is h100
    with pytest.raises(SurgeryError, match="h100-sxm"):
        R.get_spec("h1000")


def test_layers_bound_and_floor_is_the_sum_of_layer_floors():
    rep = _report()
    spec = R.get_spec("h100-sxm")
    roof = R.roofline(rep, spec)
    conv, relu = roof.layers
    n = 256 * 56 * 56
    flops = 2 * n * 256 * 9
    nbytes = 4 * (2 * n + 256 * 256 * 9)
    assert conv.flops == flops and conv.bytes == nbytes
    assert conv.intensity == pytest.approx(flops / nbytes) and conv.intensity > roof.ridge_intensity
    assert conv.bound == "compute" and conv.floor_s == pytest.approx(flops / 67e12)
    assert relu.intensity == pytest.approx(2 * n / (8 * n)) and relu.bound == "memory"
    assert relu.floor_s == pytest.approx(8 * n / 3.35e12)
    assert roof.floor_ms == pytest.approx((conv.floor_s + relu.floor_s) * 1e3)
    assert roof.ridge_intensity == pytest.approx(67e12 / 3.35e12)
    # tensor cores: 7.4x the peak, the conv floor shrinks, ReLU's does not
    tf32 = R.roofline(rep, spec, precision="tf32")
    assert tf32.layers[0].floor_s == pytest.approx(max(flops / 494.7e12, nbytes / 3.35e12))
    assert tf32.layers[1].floor_s == relu.floor_s
    assert R.roofline(rep, R.get_spec("h200")).floor_s < roof.floor_s  # more bandwidth, same compute
    json.dumps(roof.to_json())


def test_unknown_precision_falls_back_with_a_note():
    roof = R.roofline(_report(), R.with_peak(R.get_spec("a100"), "int4", 1e15), precision="float8")
    assert roof.precision == "float32" and "float8" in roof.notes[0]


def test_cpu_spec_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path))
    calls = []
    real = R.measure_cpu

    def measure(**kw):
        calls.append(1)
        return real(matmul_n=256, copy_mib=8, budget_s=0.0, min_repeats=2)

    monkeypatch.setattr(R, "measure_cpu", measure)
    first = R.get_spec("cpu")
    assert first.measured and first.peak_flops["float32"] > 1e8 and first.mem_bandwidth > 1e8
    assert (tmp_path / "cpu-spec.json").exists()
    again = R.get_spec("this-cpu")
    assert len(calls) == 1 and again.peak_flops == first.peak_flops and "cached" in again.source
    refreshed = R.get_spec("cpu", refresh=True)
    assert len(calls) == 2
    # a measurement on a busier moment never lowers the cached peak
    assert refreshed.peak_flops["float32"] >= first.peak_flops["float32"]
    assert refreshed.mem_bandwidth >= first.mem_bandwidth
    roof = R.roofline(_report(), again)
    assert roof.device == "cpu" and roof.floor_s > 0


def test_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(R, "measure_cpu", lambda **kw: R.DeviceSpec("cpu", {"float32": 1e11}, 1e10, measured=True))
    assert R.get_spec("cpu").peak_flops["float32"] == 1e11


def test_the_cli_lists_every_spec():
    from analyzers.roofline import spec_names
    from cli_commands.flops import SPEC_NAMES

    assert list(SPEC_NAMES) == spec_names()
