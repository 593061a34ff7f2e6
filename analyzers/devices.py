"""Where the profiler times: the device a name means (or why it is not here), the runtimes
a device offers, and the facts of the machine a measurement is reported with."""

from __future__ import annotations

import datetime as _dt
import os
import platform

import torch

from analyzers.timing import ORT_PROVIDERS, RUNTIMES
from surgery.core.errors import SurgeryError, suggest

def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` -> a torch.device, or a SurgeryError that says what is missing."""
    text = (name or "cpu").strip().lower()
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise SurgeryError(f"unknown device {name!r}; use cpu or cuda (cuda:N for another GPU)") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise SurgeryError(f"device {name!r} is not supported by the profiler; use cpu or cuda")
    if not torch.cuda.is_available():
        why = (f"this PyTorch ({torch.__version__}) was built without CUDA" if torch.version.cuda is None
               else "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise SurgeryError(f"--device {name}: CUDA is not available: {why}; use --device cpu")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise SurgeryError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def expand_runtimes(names, device: torch.device) -> list[str]:
    """Validate runtime names and expand ``onnxruntime`` for the device (order kept, no repeats)."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name in ("ort", "onnx"):
            name = "onnxruntime"
        if name in ("eager",):
            name = "torch"
        if name not in RUNTIMES:
            raise SurgeryError(f"unknown runtime {raw!r}{suggest(name, RUNTIMES)}; choose from {', '.join(RUNTIMES)}")
        if name == "onnxruntime":
            if device.type == "cpu":
                expanded = ["onnxruntime:cpu"]
            else:
                expanded = ["onnxruntime:cuda"]
                if ORT_PROVIDERS["onnxruntime:tensorrt"] in ort_providers():
                    expanded.append("onnxruntime:tensorrt")
        else:
            expanded = [name]
        out.extend(e for e in expanded if e not in out)
    if not out:
        raise SurgeryError("no runtime given; choose from " + ", ".join(RUNTIMES))
    return out


def row_device(runtime: str, device: torch.device) -> str:
    """Where a runtime's row runs: the ONNX Runtime CPU provider is always the CPU."""
    return "cpu" if runtime == "onnxruntime:cpu" else str(device)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device, *, threads: int | None = None) -> dict:
    """What the numbers were measured on (recorded with every profile)."""
    info = {
        "device": str(device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["cuda"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver_index": device.index,
        }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = {"version": ort.__version__, "providers": list(ort.get_available_providers())}
    except ImportError:
        info["onnxruntime"] = None
    return info

