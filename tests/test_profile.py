"""``surgery profile``: timing statistics, the sweep joined with the cost analyzer, runtimes
that cannot run here, the JSON contract, the plot, and (when a GPU is lent) the CUDA paths.

Timings are never asserted against wall-clock numbers (a loaded machine orders anything):
what is checked is what the numbers are made of — the statistics, the MACs, the rows a
runtime that cannot run gives, the Pareto flags on hand-made rows.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from conftest import DataDependent
from torch import nn

from analyzers import latency as lat
from analyzers.latency import TimingConfig, Unavailable
from analyzers.profile import profile
from analyzers.profile_rows import ProfileReport, ProfileRow, pareto_front, pareto_rows
from cli_commands.base import to_jsonable
from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.net import Net

SMALL = "zoo:resnet18:num_classes=10"
FAST = TimingConfig(warmup=1, warmup_s=0.0, min_runs=5, max_runs=9, min_time_s=0.05, max_time_s=5.0)
CUDA = torch.cuda.is_available()


def _pair():
    """ResNet-18 at 32×32 and at 64×64: the second has (almost exactly) 4× the MACs."""
    return [sio.load(SMALL, input_shape=(3, 32, 32)), sio.load(SMALL, input_shape=(3, 64, 64))]


@pytest.fixture(scope="module")
def report() -> ProfileReport:
    return profile(_pair(), runtimes=["torch", "onnxruntime", "cudagraph"], batches=[1], timing=FAST,
                   labels=["r18@32", "r18@64"])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _tiny(shape=(3, 16, 16)) -> Net:
    torch.manual_seed(0)
    return Net(Tiny().eval(), None, shape, source="tiny", format="module")


# ------------------------------------------------------------------ statistics and the timing loop


def test_summarize_matches_the_definitions():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 100.0]
    t = lat.summarize(samples)
    assert t.median_ms == 3.5 and t.runs == 6 and t.min_ms == 1.0
    assert t.p10_ms == pytest.approx(1.5) and t.p90_ms == pytest.approx(52.5)  # numpy's linear percentiles
    assert t.cv == pytest.approx(statistics.stdev(samples) / statistics.fmean(samples))
    assert lat.summarize([2.0]).cv == 0.0
    assert t.spread_warning(0.10) and "CV" in t.spread_warning(0.10)
    assert lat.summarize([1.0, 1.01, 0.99]).spread_warning(0.10) is None


def test_measure_warms_up_then_repeats_adaptively():
    calls = []
    t = lat.measure(lambda: calls.append(1), TimingConfig(warmup=3, warmup_s=0.0, min_runs=7, max_runs=50,
                                                          min_time_s=0.0))
    assert t.warmup_runs == 3 and t.runs == 7 and len(calls) == 10 and t.clock == "perf_counter"
    # the cap wins over the minimum time
    t = lat.measure(lambda: None, TimingConfig(warmup=0, warmup_s=0.0, min_runs=2, max_runs=4, min_time_s=60))
    assert t.runs == 4
    # a minimum time is honoured
    t = lat.measure(lambda: sum(range(1000)), TimingConfig(warmup=0, warmup_s=0.0, min_runs=1, max_runs=10**6,
                                                            min_time_s=0.05))
    assert t.total_s >= 0.05 and t.runs > 1
    assert t.p10_ms <= t.median_ms <= t.p90_ms


def test_pareto_front():
    pts = [(1, 10.0), (2, 5.0), (2, 6.0), (4, 5.0), (4, 1.0), (1, 10.0)]
    assert pareto_front(pts) == [True, True, False, False, True, True]  # ties are not domination


def test_runtime_names_are_validated_and_expanded():
    cpu = torch.device("cpu")
    assert lat.expand_runtimes(["torch", "ort", "eager", "onnxruntime:cpu"], cpu) == ["torch", "onnxruntime:cpu"]
    with pytest.raises(SurgeryError, match="cudagraph"):
        lat.expand_runtimes(["cudagrap"], cpu)


def _resnet18_macs(hw: int, classes: int = 10) -> int:
    """Closed-form conv + fc MACs of ResNet-18 (v1.5) for one ``3 x hw x hw`` image."""

    def stage(side, cin, cout):  # two blocks of two 3x3 convs, the first strided, + a 1x1 projection
        return side * side * cout * cin * 9 + 3 * side * side * cout * cout * 9 + (side * side * cout * cin if cin != cout else 0)

    s = hw // 4
    return ((hw // 2) ** 2 * 64 * 3 * 49 + stage(s, 64, 64) + stage(s // 2, 64, 128) + stage(s // 4, 128, 256)
            + stage(s // 8, 256, 512) + 512 * classes)


# ------------------------------------------------------------------ the sweep


def test_rows_are_positive_and_count_the_4x_model(report):
    ok = {(r.model, r.runtime): r for r in report.results if r.status == "ok"}
    assert set(ok) == {(m, rt) for m in ("r18@32", "r18@64") for rt in ("torch", "onnxruntime:cpu")}
    for r in ok.values():
        assert r.median_ms > 0 and 0 < r.p10_ms <= r.median_ms <= r.p90_ms
        assert r.cv >= 0 and FAST.min_runs <= r.runs <= FAST.max_runs
        assert r.throughput == pytest.approx(1e3 / r.median_ms)
        assert r.threads == torch.get_num_threads() and r.device == "cpu" and r.batch == 1
        hw = 32 if r.model == "r18@32" else 64  # ResNet-18 MACs scale with the input area: 1,814,073,344 at 224
        assert r.params == 11_181_642 and r.macs == _resnet18_macs(hw) and r.bytes > 0
        assert r.gmacs_per_s == pytest.approx(r.macs / r.median_ms / 1e6)
    for rt in ("torch", "onnxruntime:cpu"):
        small, big = ok[("r18@32", rt)], ok[("r18@64", rt)]
        assert 3.5 < big.macs / small.macs <= 4.0  # the classifier does not grow with the image
        assert small.latency_ratio == 1.0 and small.macs_ratio == 1.0
        assert big.latency_ratio == pytest.approx(big.median_ms / small.median_ms)
        assert big.macs_ratio == pytest.approx(big.macs / small.macs)


def test_onnx_rows_are_verified_against_pytorch(report):
    rows = [r for r in report.results if r.runtime == "onnxruntime:cpu"]
    assert len(rows) == 2
    for r in rows:
        assert r.onnx["exporter"] in ("dynamo", "torchscript") and r.onnx["opset"] >= 17
        assert math.isfinite(r.onnx["max_abs"]) and math.isfinite(r.onnx["max_rel"])


def test_an_onnx_model_that_differs_from_pytorch_is_a_failed_row(monkeypatch):
    """The verification is what stands between a wrong export and a timed row."""
    from surgery.core import onnx_io

    real = onnx_io.OrtModule.forward
    monkeypatch.setattr(onnx_io.OrtModule, "forward", lambda self, x: tuple(o + 1.0 for o in real(self, x)))
    rep = profile([_tiny()], runtimes=["torch", "onnxruntime"], timing=FAST)
    by = {r.runtime: r for r in rep.results}
    assert by["torch"].status == "ok"
    assert by["onnxruntime:cpu"].status == "failed" and "differ from PyTorch" in by["onnxruntime:cpu"].error
    assert by["onnxruntime:cpu"].median_ms is None


def test_cudagraph_on_cpu_is_a_row_not_a_crash(report):
    rows = [r for r in report.results if r.runtime == "cudagraph"]
    assert len(rows) == 2
    for r in rows:
        assert r.status == "unavailable" and "needs --device cuda" in r.error
        assert r.median_ms is None and r.runs == 0 and r.pareto is None
        assert r.macs is not None  # the cost columns are still filled in


def test_pareto_flags(report):
    ok = [r for r in report.results if r.status == "ok"]
    assert all(isinstance(r.pareto, bool) for r in ok)
    fastest_small = min((r for r in ok if r.model == "r18@32"), key=lambda r: r.median_ms)
    assert fastest_small.pareto  # nothing counts fewer MACs, nothing with as few runs faster
    assert all(r.pareto is None for r in report.results if r.status != "ok")


def test_pareto_flags_of_hand_made_rows():
    """Flags within each (device, batch, dtype) group of successful rows with a MAC count."""
    def row(macs, ms, batch=1, status="ok"):
        return ProfileRow("m", "torch", "cpu", batch, "float32", status, median_ms=ms, macs=macs)

    rows = [row(10, 5.0), row(20, 4.0), row(20, 6.0), row(30, 9.0, batch=8), row(5, 1.0, status="failed"),
            row(None, 0.5)]
    # (20, 6) is dominated by (10, 5); (30, 9) is alone at batch 8; a failed row and one without MACs get none
    assert [r.pareto for r in pareto_rows(rows)] == [True, True, False, True, None, None]


def test_roofline_floor_joined(report):
    ok = {(r.model, r.runtime): r for r in report.ok}
    for r in ok.values():  # the CPU has a (measured) spec: every timed row gets its floor
        assert r.roofline_error is None and r.roofline_ms > 0 and r.roofline_pct > 0 and r.roofline_estimate
    for rt in ("torch", "onnxruntime:cpu"):  # 4x the MACs and more bytes: a higher floor, the same for both runtimes
        assert ok[("r18@64", rt)].roofline_ms > ok[("r18@32", rt)].roofline_ms
        assert ok[("r18@64", rt)].roofline_ms == ok[("r18@64", "torch")].roofline_ms


def test_json_contract(report):
    d = to_jsonable(report)
    check_json(d)


def check_json(d: dict) -> None:
    """The issue's schema, checked by hand."""
    assert set(d) >= {"device", "results"}
    dev = d["device"]
    for key, typ in (("device", str), ("cpu", str), ("threads", int), ("torch", str), ("date", str)):
        assert isinstance(dev[key], typ), key
    assert dev["cuda"] is None or {"name", "capability"} <= set(dev["cuda"])
    assert dev["onnxruntime"] is None or "CPUExecutionProvider" in dev["onnxruntime"]["providers"]
    assert d["results"]
    types = {"model": str, "runtime": str, "device": str, "batch": int, "dtype": str, "median_ms": float,
             "p10_ms": float, "p90_ms": float, "cv": float, "runs": int, "macs": int, "params": int}
    for row in d["results"]:
        for key, typ in types.items():
            assert key in row, key
            if key == "macs" and row["macs"] is None:
                assert row["cost_error"], row  # a MAC count is missing only with its reason
            elif row["status"] == "ok" or key in ("model", "runtime", "device", "batch", "dtype", "runs"):
                assert isinstance(row[key], typ) and not isinstance(row[key], bool), (key, row[key])
            else:
                assert row[key] is None or isinstance(row[key], typ), (key, row[key])
        assert "roofline_ms" in row and (row["roofline_ms"] is None or isinstance(row["roofline_ms"], float))
        assert row["status"] in ("ok", "unavailable", "failed")
        assert row["status"] == "ok" or row["error"]
        assert row["pareto"] in (True, False, None)
        if row["status"] == "ok":
            assert all(math.isfinite(row[k]) for k in ("median_ms", "p10_ms", "p90_ms", "cv"))


# ------------------------------------------------------------------ what cannot run here


@pytest.mark.skipif(CUDA, reason="a GPU is present")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(SurgeryError, match="CUDA is not available.*--device cpu"):
        profile([_tiny()], device="cuda", timing=FAST)
    with pytest.raises(SurgeryError, match="CUDA is not available"):
        lat.resolve_device("cuda:1")
    with pytest.raises(SurgeryError, match="unknown device"):
        lat.resolve_device("tpu")


def test_unavailable_providers_and_dtypes_give_rows():
    rep = profile([_tiny()], runtimes=["onnxruntime:cuda", "onnxruntime:tensorrt", "torch", "onnxruntime"],
                  dtypes=["bfloat16"], timing=FAST)
    by = {r.runtime: r for r in rep.results}
    assert not CUDA or by["onnxruntime:cuda"].status == "unavailable"
    assert by["onnxruntime:cuda"].status == "unavailable" and "cuda" in by["onnxruntime:cuda"].error.lower()
    assert by["onnxruntime:tensorrt"].status == "unavailable"
    assert by["torch"].status == "ok" and by["torch"].dtype == "bfloat16"  # torch eager runs bf16 on CPU
    assert by["onnxruntime:cpu"].status == "unavailable" and "bfloat16" in by["onnxruntime:cpu"].error
    check_json(to_jsonable(rep))


def test_a_runtime_failure_is_reported_in_its_row():
    net = Net(DataDependent().eval(), None, (3, 8, 8), source="data-dependent", format="module")
    rep = profile([net], runtimes=["torch", "onnxruntime"], timing=FAST)
    by = {r.runtime: r for r in rep.results}
    assert by["torch"].status == "ok" and by["torch"].median_ms > 0
    assert by["onnxruntime:cpu"].status == "failed" and "ONNX" in by["onnxruntime:cpu"].error
    for r in rep.results:
        assert r.params == 112
        assert (r.macs is None) == (r.cost_error is not None)
    check_json(to_jsonable(rep))


def test_compile_runtime_small():
    """torch.compile on CPU: a timed row (inductor builds its kernels with the C++ compiler the
    test environment has)."""
    rep = profile([_tiny()], runtimes=["compile"], timing=FAST)
    (row,) = rep.results
    assert row.status == "ok", row.error
    assert row.median_ms > 0 and row.setup_s > 0 and row.runs >= FAST.min_runs


def test_a_compiler_failure_is_a_failed_row_with_the_reason(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler found\nlong trace")

    monkeypatch.setattr(torch, "compile", broken)
    rep = profile([_tiny()], runtimes=["compile", "torch"], timing=FAST)
    by = {r.runtime: r for r in rep.results}
    assert by["compile"].status == "failed" and "no C++ compiler found" in by["compile"].error
    assert "long trace" not in by["compile"].error
    assert by["torch"].status == "ok"  # the sweep goes on


def test_each_compiled_model_gets_a_cache_of_its_own():
    """Eight differently built models fill the recompile limit of a shared code object: the
    ninth would silently run eager. own_code gives each its own, without resetting dynamo."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    x = torch.randn(1, 3, 8, 8)
    for depth in range(1, 11):
        m = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(depth)]).eval()
        compiled = torch.compile(lat.own_code(m), backend="eager")
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), m(x))
    assert counters["stats"]["unique_graphs"] - before == 10  # every model compiled, none left eager


def test_sweep_over_batches_and_progress():
    seen = []
    rep = profile([_tiny(), _tiny((3, 32, 32))], runtimes=["torch"], batches=[1, 4], timing=FAST,
                  on_progress=lambda done, total, label: seen.append((done, total, label)))
    assert [(r.model, r.batch) for r in rep.results] == [("tiny", 1), ("tiny", 4), ("tiny", 1), ("tiny", 4)]
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4] and all(s[1] == 4 for s in seen)
    assert seen[-1][2] == "done"
    r4 = rep.results[1]
    assert r4.throughput == pytest.approx(4e3 / r4.median_ms)
    assert r4.bytes > rep.results[0].bytes and r4.macs == rep.results[0].macs  # MACs are per sample
    assert rep.settings["batches"] == [1, 4] and rep.settings["threads"] == torch.get_num_threads()


def test_threads_are_used_and_restored():
    before = torch.get_num_threads()
    rep = profile([_tiny()], runtimes=["torch", "onnxruntime"], timing=FAST, threads=1)
    assert all(r.threads == 1 for r in rep.results) and rep.device["threads"] == 1
    assert torch.get_num_threads() == before


def test_bad_arguments():
    with pytest.raises(SurgeryError, match="dtype"):
        profile([_tiny()], dtypes=["int8"], timing=FAST)
    with pytest.raises(SurgeryError, match="batch"):
        profile([_tiny()], batches=[0], timing=FAST)
    with pytest.raises(SurgeryError, match="runtime"):
        profile([_tiny()], runtimes=["tensorflow"], timing=FAST)


def test_plot(tmp_path, report):
    from analyzers.profile_plot import plot_profile

    out = plot_profile(report, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SurgeryError, match="--force"):
        plot_profile(report, out)
    plot_profile(report, out, force=True)


# ------------------------------------------------------------------ the console script


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    paths = []
    for side in (32, 64):
        net = sio.load(SMALL)
        net = net.evolve(net.module, input_shape=(3, side, side))
        paths.append(str(sio.save(net, d / f"r18_{side}.pt")))
    return paths


TINY_TIMING = ["--warmup", "1", "--warmup-time", "0", "--min-runs", "3", "--max-runs", "5", "--min-time", "0.02"]


def test_cli_json_plot_and_unavailable_row(cli, checkpoints, tmp_path):
    png = tmp_path / "trade-off.png"
    res = cli("profile", *checkpoints, "--runtime", "torch,cudagraph", "--batch", "1,2", "--json", "--plot", png,
              *TINY_TIMING)
    assert res.code == 0, res.err
    d = res.json()
    check_json(d)
    assert [(r["model"], r["runtime"], r["batch"]) for r in d["results"]] == [
        (m, rt, b) for m in checkpoints for b in (1, 2) for rt in ("torch", "cudagraph")]
    eager = [r for r in d["results"] if r["runtime"] == "torch"]
    assert all(r["status"] == "ok" for r in eager)
    assert all(r["status"] == "unavailable" for r in d["results"] if r["runtime"] == "cudagraph")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # the plot is never overwritten without --force, and that is found out before any timing
    res = cli("profile", checkpoints[0], "--plot", png, *TINY_TIMING)
    assert res.code == 2 and "--force" in res.err and "Traceback" not in res.err


def test_cli_table_and_csv(cli, checkpoints):
    # names as the user typed them (relative), so a long temporary path never folds the column
    from pathlib import Path
    here = Path(checkpoints[0]).parent
    assert all(Path(c).parent == here for c in checkpoints)
    res = cli("profile", *[Path(c).name for c in checkpoints], *TINY_TIMING, cwd=here)
    assert res.code == 0, res.err
    assert "r18_32.pt" in res.out and "r18_64.pt" in res.out and "★" in res.out and "MACs" in res.out
    res = cli("profile", checkpoints[0], "--runtime", "torch,cudagraph", "--csv", *TINY_TIMING)
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    assert lines[0].startswith("model,runtime,device,batch,dtype,status,median_ms")
    assert len(lines) == 3 and ",unavailable," in lines[2]


@pytest.mark.parametrize("args, needle", [
    (["--runtime", "tensorflow", "--dtype", "float16"], "unknown runtime"),
    (["--batch", "1,x"], "--batch"),
] + ([] if CUDA else [(["--device", "cuda"], "CUDA is not available")]))
def test_cli_errors_are_one_line(cli, args, needle):
    res = cli("profile", SMALL, *args, *TINY_TIMING)
    assert res.code == 2, (res.out, res.err)
    lines = [l for l in res.err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.err


# ------------------------------------------------------------------ GPU (when a device is lent)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_paths_eager_graph_and_onnxruntime():
    net = sio.load("zoo:resnet50:variant=v1")
    rep = profile([net], device="cuda", runtimes=["torch", "cudagraph", "onnxruntime"], batches=[1, 8],
                  timing=TimingConfig(min_time_s=0.2, max_runs=200))
    by = {(r.runtime, r.batch): r for r in rep.results}
    for b in (1, 8):
        assert by[("torch", b)].status == "ok" and by[("torch", b)].clock == "cuda_event"
        assert by[("cudagraph", b)].status == "ok"
        ort = by[("onnxruntime:cuda", b)]
        assert ort.status in ("ok", "unavailable"), ort.error
    assert rep.device["cuda"]["name"]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_repeat_profiles_time_the_same_work():
    net = sio.load("zoo:resnet50:variant=v1")
    rows = [profile([net], device="cuda", runtimes=["torch"], batches=[32], timing=TimingConfig(min_time_s=0.2)).results[0]
            for _ in range(2)]
    for r in rows:
        assert r.status == "ok" and r.clock == "cuda_event" and r.median_ms > 0
    assert rows[0].macs == rows[1].macs and rows[0].bytes == rows[1].bytes


def test_unavailable_is_not_a_surgery_error():
    # a runtime that cannot run here becomes a row; it must not be mistaken for bad input
    assert not issubclass(Unavailable, SurgeryError)


def test_a_beaten_cpu_floor_is_measured_again(tmp_path, monkeypatch):
    """A cached CPU peak measured at a busy moment makes a floor the models beat: profile measures
    the CPU again (the cache keeps the best figure) and bounds every row on the new spec."""
    from analyzers import roofline as R

    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path))
    peaks = iter([1e6, 1e15])  # a hopeless first measurement, then a realistic-or-better one
    calls = []

    def measure(**kw):
        calls.append(1)
        p = next(peaks)
        return R.DeviceSpec("cpu", {"float32": p}, p, "test", "test", measured=True)

    monkeypatch.setattr(R, "measure_cpu", measure)
    rep = profile([_tiny(), _tiny((3, 32, 32))], runtimes=["torch"], timing=FAST, device_spec="cpu")
    assert len(calls) == 2
    rows = [r for r in rep.results if r.status == "ok"]
    assert len(rows) == 2 and all(r.roofline_estimate and r.roofline_pct < 100 for r in rows)
    assert not any("faster than the estimated roofline floor" in (r.warning or "") for r in rows)
    # the re-measured peak is what the floor used: floor = flops / 1e15 + bytes / 1e15, per layer max
    assert all(r.roofline_ms < 1e-3 for r in rows)
