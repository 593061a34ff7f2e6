"""ONNX import and counting speed (not a test: timings depend on the machine).

For the largest ONNX models the tests use — ResNet-18 exported by torch.onnx (TorchScript
exporter, BatchNorm kept, 224x224) and PaddleOCR's pretrained DB text detector
(``ch_PP-OCRv4_det_infer.onnx`` from the rapidocr-onnxruntime wheel, at 3x640x640) — in one
process, one run:

- import: ``.onnx`` -> GraphModule (pre-pass, conversion, build, weights) and the onnxruntime
  check, each timed (cold: the first import pays torch/onnx start-up; warm: median of repeats);
- counting: the native per-layer count (meta device) of the imported net, against fvcore's
  ``FlopCountAnalysis`` of the same imported net (real CPU forward) — totals side by side.

Run: ``.venv/bin/python benchmarks/bench_onnx_import.py [--quick]``. Figures go to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _resnet18_onnx(folder: Path) -> Path:
    import torch

    from surgery.core import io as sio
    from surgery.core.onnx_io import quiet_exporters

    net = sio.load("zoo:resnet18")
    buf = io.BytesIO()
    with quiet_exporters():
        torch.onnx.export(net.module.eval(), (torch.randn(2, 3, 224, 224),), buf, dynamo=False, opset_version=13,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    path = folder / "resnet18.onnx"
    path.write_bytes(buf.getvalue())
    return path


def _paddle_det() -> Path | None:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    return p if p.exists() else None


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def bench(path: Path, shape, repeats: int) -> dict:
    import torch

    from analyzers.cost import analyze
    from analyzers.fvcore_backend import fvcore_count
    from surgery.core.onnx_import import build_module, import_graph
    from surgery.core.onnx_import.check import against_onnxruntime, load_weights

    def convert():
        prep, spec, weights = import_graph(path, shape)
        module = build_module(spec, source=str(path))
        load_weights(module, weights, path)
        return prep, module.eval()

    (prep, module), conv_t = _timed(convert, repeats)
    with torch.no_grad():
        rep, check_t = _timed(lambda: against_onnxruntime(prep, module), max(1, repeats // 2))
    from surgery.core.io import load

    net = load(str(path), input_shape=shape)
    cost, native_t = _timed(lambda: analyze(net), repeats)
    fv, fv_t = _timed(lambda: fvcore_count(net, net.input_shape), max(1, repeats // 2))
    return {
        "model": path.name, "bytes": path.stat().st_size, "input": list(shape), "params": net.params,
        "layers": len(cost.layers), "import_cold_s": conv_t[0], "import_warm_s": statistics.median(conv_t[1:] or conv_t),
        "ort_check_s": statistics.median(check_t), "ort_max_rel": rep.max_rel,
        "native_cold_s": native_t[0], "native_warm_s": statistics.median(native_t[1:] or native_t),
        "native_macs": cost.totals.macs, "fvcore_s": statistics.median(fv_t), "fvcore_total": fv.total,
        "fvcore_conv_linear": sum(v for k, v in fv.by_operator.items() if k in ("conv", "linear", "addmm", "matmul")),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    repeats = 2 if args.quick else 5
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rows.append(bench(_resnet18_onnx(Path(d)), (3, 224, 224), repeats))
        det = _paddle_det()
        if det is not None:
            rows.append(bench(det, (3, 640, 640), repeats))
    print(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
