"""``surgery profile``: measured latency beside counted cost — the speed/FLOP trade-off.

A sweep times every (model, batch, dtype, runtime) combination with
:mod:`analyzers.latency` and joins each row with the cost analyzer
(:func:`analyzers.cost.analyze`: MACs, params, memory traffic) and the roofline
(:func:`analyzers.roofline.roofline`: the fastest the device could possibly run that pass).

Units of a row:

- ``median_ms``, ``p10_ms``, ``p90_ms``: milliseconds per forward pass of the whole batch;
  ``cv``: coefficient of variation of the samples (fraction); ``runs``: timed samples;
- ``throughput``: samples (images) per second, ``batch / median``;
- ``macs``: multiply-accumulates **per sample** (the timed pass does ``batch × macs``);
  ``params``: parameter elements; ``bytes``: memory traffic of the whole timed pass in the
  row's dtype (weights are read once per pass, so it is not proportional to the batch);
- ``gmacs_per_s``: achieved 1e9 MACs per second, ``batch × macs / median``;
- ``roofline_ms``: the device's roofline floor for the timed pass; ``roofline_pct``: the
  percentage of that floor reached, ``100 × roofline_ms / median_ms``;
- ``latency_ratio`` / ``macs_ratio``: this row against the first model's row with the same
  runtime, device, batch and dtype (1.0 for the first model itself);
- ``pareto``: not dominated in (MACs, latency) among the successful rows with the same
  device, batch and dtype (across models and runtimes).

A *chain* entry (``[A, B]``, typed ``A.pt+B.pt`` on the command line) runs its models one
after the other on the same input, as one entry: what a user weighs when comparing separate
task models against one shared net. Its MACs, params, bytes and roofline floor are the sums
of its parts'.

Failures never stop a sweep: a runtime that cannot run here gives a row with
``status="unavailable"``, any other exception ``status="failed"``; the reason is in
``error``. A cost-analyzer failure leaves ``macs`` null with the reason in ``cost_error``.

The parts: the rows, ratios and Pareto flags (:mod:`analyzers.profile_rows`), the counted side
and chains (:mod:`analyzers.profile_costs`), timing one job (:mod:`analyzers.profile_runner`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from analyzers import latency as lat
from analyzers.latency import DTYPES, TimingConfig
from analyzers.profile_costs import Costs, chain, roofline_spec_name
from analyzers.profile_rows import Job, ProfileReport, ProfileRow, join_cost, pareto_rows, plan, ratio_rows
from analyzers.profile_runner import Runner
from surgery.core.dtypes import dtype_name
from surgery.core.errors import SurgeryError
from surgery.core.net import Net

ProgressFn = Callable[[int, int, str], None]  # (done, total, what is running now)


def parse_dtypes(names: Sequence[str]) -> list[str]:
    """Canonical names (aliases as in :mod:`surgery.core.dtypes`), each once, in order."""
    out = []
    for n in names:
        key = dtype_name(n, tuple(DTYPES))
        if key not in out:
            out.append(key)
    return out


def profile(
    models: Sequence[Net | str],
    *,
    device: str = "cpu",
    runtimes: Sequence[str] = ("torch",),
    batches: Sequence[int] = (1,),
    dtypes: Sequence[str] = ("float32",),
    timing: TimingConfig = TimingConfig(),
    threads: int | None = None,
    tf32: bool = False,
    device_spec: str | None = None,
    labels: Sequence[str] | None = None,
    on_progress: ProgressFn | None = None,
) -> ProfileReport:
    """Time every model × batch × dtype × runtime and join the cost analyzer and roofline.

    ``models`` are Nets or references for :func:`surgery.core.io.load`. ``device`` is ``cpu`` or
    ``cuda[:N]`` (a SurgeryError if CUDA is missing). ``runtimes`` from
    :data:`analyzers.latency.RUNTIMES` (``onnxruntime`` expands to the device's providers).
    ``on_progress(done, total, label)`` is called before each job and once at the end.
    """
    from surgery.core.io import UntrustedProgram, load

    dev = lat.resolve_device(device)
    runtimes = lat.expand_runtimes(runtimes, dev)
    dtypes = parse_dtypes(dtypes)
    batches = [int(b) for b in batches]
    if not batches or any(b < 1 for b in batches):
        raise SurgeryError(f"batch sizes must be positive integers, got {batches}")
    if threads is not None and threads < 1:
        raise SurgeryError(f"--threads must be positive, got {threads}")
    nets = [chain([p if isinstance(p, Net) else load(p) for p in m]) if isinstance(m, (list, tuple))
            else m if isinstance(m, Net) else load(m) for m in models]
    if not nets:
        raise SurgeryError("no model to profile")
    names = list(labels) if labels else [n.source or f"model{i}" for i, n in enumerate(nets)]
    if len(names) != len(nets):
        raise SurgeryError("labels: one per model")
    for name, net in zip(names, nets):  # refused before any timing, not as a failed row per runtime
        if any(isinstance(m, UntrustedProgram) for m in net.module.modules()):
            raise SurgeryError(f"{name}: a .pt2 program loaded without trust; timing runs its graph on real "
                               "tensors. Pass --trust-code if you trust its source (counting needs no flag)")

    # PyTorch convs run in TF32 on tensor cores when asked: the roofline then uses the TF32 peak
    costs = Costs(lambda dt: "tf32" if (tf32 and dev.type == "cuda" and dt == "float32") else None)
    spec_name = device_spec or roofline_spec_name(dev)
    jobs = plan(len(nets), batches, dtypes, runtimes)
    timed: list[tuple[Job, ProfileRow, dict]] = []  # each timing with its cost entry (updated on a re-measure)
    # the whole sweep (and the measured CPU roofline spec) at the requested thread count
    with lat.torch_settings(torch.device("cpu"), threads=threads), \
            tempfile.TemporaryDirectory(prefix="surgery-profile-") as tmp:
        runner = Runner(dev, Path(tmp), timing, threads, tf32)
        current = None
        for done, job in enumerate(jobs):
            net, name = nets[job.model_index], names[job.model_index]
            if on_progress:
                on_progress(done, len(jobs), f"{name} · {job.runtime} · batch {job.batch} · {job.dtype}")
            if current != job.model_index:
                runner.release()
                if current is not None:
                    costs.forget(current)
                current = job.model_index
            row = runner.run(net, name, job)
            # a row on the CPU (the ONNX Runtime CPU provider in a CUDA sweep) is bounded by the CPU
            row_spec = "cpu" if (row.device == "cpu" and dev.type != "cpu") else spec_name
            cost = costs.get(job.model_index, net, job.batch, job.dtype, row_spec)
            timed.append((job, row, cost))
        runner.release()
        rows = [(job, join_cost(row, cost)) for job, row, cost in timed]
        # A measured CPU floor that a model beats was measured at a busier moment (the cached peak
        # is the best seen so far): measure again, at the sweep's threads, and bound every row anew.
        if any(r.roofline_estimate and (r.roofline_pct or 0) > 100 for _, r in rows) and costs.remeasure_cpu():
            rows = [(job, join_cost(row, cost)) for job, row, cost in timed]
    if on_progress:
        on_progress(len(jobs), len(jobs), "done")
    results = pareto_rows(ratio_rows(rows))
    settings = {
        "runtimes": runtimes,
        "batches": batches,
        "dtypes": dtypes,
        "timing": {k: getattr(timing, k) for k in timing.__dataclass_fields__},
        "threads": threads or (torch.get_num_threads() if dev.type == "cpu" else None),
        "tf32": tf32,
        "device_spec": spec_name,
    }
    return ProfileReport(lat.device_info(dev, threads=threads), settings, tuple(results))
