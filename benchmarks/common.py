"""What the benchmark scripts share: device set-up and round-robin timing of several models."""

from __future__ import annotations

import time

import torch
from torch import nn


def pick_device(name: str, threads: int | None) -> torch.device:
    """``auto`` -> cuda when available; sets CPU threads, flush-denormal and cuDNN benchmark mode."""
    dev = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # compared nets must not differ by denormal slow paths
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_models(models: dict[str, nn.Module], x: torch.Tensor, *, warmup: int, repeats: int,
                clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds per forward for each model, measured round-robin in one run (the order rotates
    every round, so no model always runs first or last)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models.values():
                m(x)
        sync(x.device)
        names = list(models)
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                m = models[name]
                sync(x.device)
                t0 = clock()
                m(x)
                sync(x.device)
                times[name].append(clock() - t0)
    return times
