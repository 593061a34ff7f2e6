"""Timing one job of ``surgery profile`` (:mod:`analyzers.profile`): a (model, batch, dtype,
runtime) in eager PyTorch, a compiled or CUDA-graph form, or ONNX Runtime (exported once per
model and shape, verified against PyTorch). A runtime that cannot run gives an ``unavailable``
row, any other failure a ``failed`` one."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from analyzers import latency as lat
from analyzers.latency import DTYPES, TimingConfig, Unavailable
from analyzers.profile_costs import row_error
from analyzers.profile_rows import Job, ProfileRow
from surgery.core.errors import SurgeryError
from surgery.core.net import Net


@dataclass
class Runner:
    """Runs one job; holds the current model's prepared copies and ONNX exports."""

    device: torch.device
    tmp: Path
    timing: TimingConfig
    threads: int | None
    tf32: bool
    _modules: dict = field(default_factory=dict)
    _exports: dict = field(default_factory=dict)

    def release(self) -> None:
        self._modules.clear()
        for path, _ in self._exports.values():
            if isinstance(path, Path):
                path.unlink(missing_ok=True)
        self._exports.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self, net: Net, name: str, job: Job) -> ProfileRow:
        dev_str = lat.row_device(job.runtime, self.device)
        base = ProfileRow(model=name, runtime=job.runtime, device=dev_str, batch=job.batch, dtype=job.dtype,
                          status="ok")
        try:
            if job.runtime.startswith("onnxruntime"):
                m, extra = self._time_ort(net, job)
            else:
                m, extra = self._time_torch(net, job), {}
        except Unavailable as e:
            return replace(base, status="unavailable", error=row_error(e))
        except Exception as e:  # one runtime failing must not stop the sweep
            if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
                self.release()
            return replace(base, status="failed", error=row_error(e))
        t = m.timing
        return replace(base, median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms, cv=t.cv, runs=t.runs,
                       throughput=job.batch / (t.median_ms / 1e3) if t.median_ms > 0 else None,
                       threads=m.threads, setup_s=m.setup_s, clock=t.clock,
                       warning=t.spread_warning(self.timing.max_cv), **extra)

    def _module(self, net: Net, dtype: str):
        if dtype not in self._modules:
            self._modules.clear()  # one prepared copy at a time
            self._modules[dtype] = lat.prepare_module(net.module, self.device, DTYPES[dtype])
        return self._modules[dtype]

    def _time_torch(self, net: Net, job: Job) -> lat.Measurement:
        if job.runtime == "cudagraph" and self.device.type != "cuda":
            raise Unavailable("cudagraph needs --device cuda (CUDA graphs are a CUDA feature)")
        module = self._module(net, job.dtype)
        x = net.example_input(job.batch, device=self.device, dtype=DTYPES[job.dtype])
        return lat.time_torch(module, x, runtime=job.runtime, config=self.timing, threads=self.threads,
                              tf32=self.tf32)

    def _export(self, net: Net, job: Job):
        """The ONNX file for (batch, dtype), exported once per model (static shapes)."""
        from surgery.core.onnx_io import export_model

        key = (job.batch, job.dtype)
        if key not in self._exports:
            try:
                dtype = DTYPES[job.dtype]
                module = net.module.eval() if dtype == torch.float32 else lat.prepare_module(net.module, torch.device("cpu"), dtype)
                exported = export_model(module, net.example_input(job.batch, dtype=dtype))
                path = self.tmp / f"model-b{job.batch}-{job.dtype}.onnx"
                path.write_bytes(exported.data)
                self._exports[key] = (path, exported)
            except Exception as e:
                self._exports[key] = (None, e)
        path, exported = self._exports[key]
        if path is None:
            raise SurgeryError(f"ONNX export: {row_error(exported)}")
        return path, exported

    def _time_ort(self, net: Net, job: Job):
        from surgery.core.onnx_io import verify_session

        if job.runtime != "onnxruntime:cpu" and self.device.type != "cuda":
            raise Unavailable(f"{job.runtime} needs --device cuda")
        dtype = DTYPES[job.dtype]
        if dtype not in lat.NUMPY_DTYPES:
            raise Unavailable(f"onnxruntime cannot be fed {job.dtype} (numpy has no such type); use float32 or float16")
        lat.check_ort(job.runtime, self.device)  # before the (slow) export
        path, exported = self._export(net, job)
        t0 = time.perf_counter()
        sess = lat.ort_session(path, job.runtime, self.device, threads=self.threads, dtype=dtype, tf32=self.tf32)
        rtol = 5e-3 if (self.tf32 and dtype == torch.float32) else None
        rep = verify_session(sess, net.module, net.input_shape, batch=job.batch, dtype=dtype, probes=1, rtol=rtol,
                             what=f"ONNX model ({job.runtime})")
        setup = time.perf_counter() - t0
        x = net.example_input(job.batch, device=self.device if job.runtime != "onnxruntime:cpu" else "cpu", dtype=dtype)
        m = lat.time_onnxruntime(sess, x, job.runtime, config=self.timing, threads=self.threads, setup_s=setup)
        onnx_info = {"exporter": exported.exporter, "opset": exported.opset, "max_abs": rep.max_abs,
                     "max_rel": rep.max_rel, "export_s": round(exported.export_s, 3)}
        if exported.notes:
            onnx_info["notes"] = list(exported.notes)
        return m, {"onnx": onnx_info}
