"""analyzers.onion_curve and surgery.onion.export: t(p), t_NS(p), t_M (complexity exact, time measured) and
the two-graph ONNX pair in ONNX Runtime."""

from __future__ import annotations

import pytest
import torch

from surgery.core import io as sio
from surgery.core.net import Net
from analyzers.onion_curve import curve, plot
from surgery.core.errors import SurgeryError
from surgery.onion.export import check_pair, export
from zoo import registry
from zoo.onion_onnx import export_bytes, ort_cascade
from zoo.onion_runtime import forced_mask, run_uncompacted


def meta_net(name: str) -> Net:
    entry = registry.get(name)
    with torch.device("meta"):
        m = entry.build()
    return Net(m.eval(), None, entry.shape_for({}), source=f"zoo:{name}")


@pytest.mark.parametrize("name", ["onion_p", "onion_d", "onion_r"])
def test_table1_complexity_ordering(name):
    """§5.2: t < t_NS for every p (> 0), t_NS > t_M for large p — and t_M constant."""
    rep = curve(meta_net(name), batch=120, points=6, runtimes=())
    assert rep.checks["complexity_t_below_t_ns"]
    assert rep.checks["complexity_t_ns_above_t_m_at_p1"]
    assert rep.points[0].t.macs == rep.points[0].t_ns.macs  # p = 0: S1 only, for both
    assert [q.n_pass for q in rep.points] == [0, 24, 48, 72, 96, 120]


def test_curve_complexity_is_the_closed_form():
    """t = B·S1 + n·S2, t_NS = B·S1 + n·M, t_M = B·M (conv MACs, Table 1 widths of P)."""
    k = [4, 3, 3, 3, 3, 3, 3, 2]
    m = [21, 19, 17, 15, 6, 4, 2, 1]
    n1, n2, mono = [32] * 4 + [64] * 3 + [2], [64] * 4 + [128] * 3 + [1], [96] * 4 + [192] * 3 + [1]

    def macs(cin, widths):
        return sum(k[l] ** 2 * (cin[l]) * widths[l] * m[l] ** 2 for l in range(8))

    s1 = macs([2] + n1[:-1], n1)
    s2 = macs([2] + [a + b for a, b in zip(n1[:-1], n2[:-1])], n2)
    mm = macs([2] + mono[:-1], mono)
    rep = curve(meta_net("onion_p"), batch=120, points=3, runtimes=())
    assert rep.t_m.conv_macs == 120 * mm
    for q, n in zip(rep.points, (0, 60, 120)):
        assert q.t.conv_macs == 120 * s1 + n * s2
        assert q.t_ns.conv_macs == 120 * s1 + n * mm


def test_measured_curve_and_plot(tmp_path):
    torch.manual_seed(0)
    net = sio.load("zoo:onion_p")
    from analyzers.latency import TimingConfig

    quick = TimingConfig(warmup=1, warmup_s=0.0, min_runs=1, max_runs=2, min_time_s=0.0, max_time_s=1.0)
    rep = curve(net, batch=4, points=2, runtimes=("torch", "onnxruntime"), timing=quick)
    for q in rep.points:
        assert set(q.t.ms) == {"torch", "onnxruntime"} and all(v > 0 for v in q.t.ms.values())
    png = plot(rep, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["onion_p", "onion_p_ns"])
def test_onnx_pair_matches_torch_at_dynamic_batches(name):
    torch.manual_seed(0)
    c = registry.get(name).build().eval()
    d1, d2, names = export_bytes(c, (2, 64, 64))
    pair = ort_cascade(d1, d2, c.thresholds.numpy())
    assert len(names) == len(c.shared_layers())
    for b in (1, 3, 7):  # the pair against torch's uncompacted cascade, independently of check_pair
        x = torch.randn(b, 2, 64, 64, generator=torch.Generator().manual_seed(b))
        mask = forced_mask(b, 0.6, seed=b)
        logits, passed, out = pair(x.numpy(), mask.numpy())
        ref = run_uncompacted(c, x, mask)
        assert passed.tolist() == mask.tolist()
        torch.testing.assert_close(torch.from_numpy(logits), c.stage1(x)[0].detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(out)[mask], ref[mask], rtol=1e-4, atol=1e-5)
        assert bool(torch.from_numpy(out)[~mask].isnan().all())  # rejected rows: no S2 output


def test_check_pair_refuses_a_pair_that_differs():
    torch.manual_seed(0)
    c = registry.get("onion_p").build().eval()
    other = registry.get("onion_p").build().eval()  # same graph, other weights
    d1, d2, _ = export_bytes(other, (2, 64, 64))
    with pytest.raises(SurgeryError, match="differs from torch"):
        check_pair(ort_cascade(d1, d2, c.thresholds.numpy()), c, (2, 64, 64), batches=(2,))


def test_export_writes_both_graphs_and_refuses_overwrite(tmp_path):
    net = sio.load("zoo:onion_p")
    outs = (tmp_path / "a.onnx", tmp_path / "b.onnx")
    export(net, outs)
    # the files read back run as the cascade does: S1's logits, and S2 on S1's shared maps
    pair = ort_cascade(outs[0], outs[1], net.module.thresholds.numpy())
    x = torch.randn(3, 2, 64, 64, generator=torch.Generator().manual_seed(5))
    logits, passed, out = pair(x.numpy())
    ref_logits, ref_out = net.module.stage1(x)[0].detach(), run_uncompacted(net.module, x, torch.ones(3, dtype=bool))
    assert passed.all()  # uncalibrated: every sample passes
    torch.testing.assert_close(torch.from_numpy(logits), ref_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(out), ref_out, rtol=1e-4, atol=1e-5)
    with pytest.raises(SurgeryError, match="exists"):
        export(net, outs)
