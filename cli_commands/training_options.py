"""The options of every command that trains through the one loop (``heal``, ``train``, ``onion
train``): one definition each, and one function that turns them into the loop's config.

Imports nothing heavy at module level (the CLI must start in a blink)."""

from __future__ import annotations

from typing import Optional

import typer

ValOpt = typer.Option(None, "--val", help="Held-out folder (default: DATA/val, else 10% of DATA).")
EpochsOpt = typer.Option(None, "--epochs", help="Epochs (default 1).")
StepsOpt = typer.Option(None, "--steps", help="Optimizer steps instead of --epochs.")
BatchOpt = typer.Option(64, "--batch", help="Global batch (all processes together).")
LrOpt = typer.Option(None, "--lr", help="Learning rate (default 1e-3 adamw, 0.05 sgd).")
OptimizerOpt = typer.Option("adamw", "--optimizer", help="sgd (momentum 0.9) or adamw.")
ScheduleOpt = typer.Option("cosine", "--schedule", help="cosine or constant learning rate.")
WeightDecayOpt = typer.Option(0.0, "--weight-decay", help="Weight decay.")
BnOpt = typer.Option("update", "--bn", help="BatchNorm statistics: update (train mode) or freeze.")
CropScaleOpt = typer.Option(0.25, "--crop-scale", help="Smallest area fraction of the random resized crop.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda.")
WorkersOpt = typer.Option(None, "--workers", help="DataLoader worker processes (default: CPU cores - 2, at most 4).")
ThreadsOpt = typer.Option(None, "--threads", help="torch threads per process (default: the cores left by the "
                                                   "DataLoader workers, shared by the processes; at least 1).")
SaveEveryOpt = typer.Option(None, "--save-every", metavar="STEPS",
                            help="Save the run state every STEPS steps inside an epoch too (default: every 3 minutes "
                                 "of work; --resume continues exactly from there).")
KeepOpt = typer.Option("last", "--keep", help="last: the weights after the last step; best: the epoch with the best "
                                              "held-out KL to the teacher (else accuracy).")

# the options above by the parameter name every training command gives them (option_groups.declared)
TRAINING = {
    "val": (Optional[str], ValOpt),
    "epochs": (Optional[int], EpochsOpt),
    "steps": (Optional[int], StepsOpt),
    "batch": (int, BatchOpt),
    "lr": (Optional[float], LrOpt),
    "optimizer": (str, OptimizerOpt),
    "schedule": (str, ScheduleOpt),
    "weight_decay": (float, WeightDecayOpt),
    "bn": (str, BnOpt),
    "crop_scale": (float, CropScaleOpt),
    "device": (str, DeviceOpt),
    "workers": (Optional[int], WorkersOpt),
    "threads": (Optional[int], ThreadsOpt),
    "save_every": (Optional[int], SaveEveryOpt),
    "keep": (str, KeepOpt),
}


def auto_workers() -> int:
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 2))


def train_config(p: dict, **extra):
    """The loop's :class:`~surgery.train.loop.TrainConfig` from the options above, ``p`` holding
    them by parameter name (a resumed run's saved options read the same). Neither --epochs nor
    --steps: 1 epoch; no --lr: the optimizer's default; no --workers: :func:`auto_workers`.
    ``extra``: further TrainConfig fields (e.g. ``bn``)."""
    from surgery.train.loop import TrainConfig

    epochs, steps = p["epochs"], p["steps"]
    if epochs is None and steps is None:
        epochs = 1
    return TrainConfig(batch=p["batch"], epochs=epochs, steps=steps,
                       lr=p["lr"] if p["lr"] is not None else (0.05 if p["optimizer"] == "sgd" else 1e-3),
                       optimizer=p["optimizer"], weight_decay=p["weight_decay"], schedule=p["schedule"],
                       seed=p["seed"], workers=p["workers"] if p["workers"] is not None else auto_workers(),
                       device=p["device"], save_every=p.get("save_every"), keep=p.get("keep") or "last", **extra)


def auto_threads(workers: int, processes: int | None = None) -> int:
    """torch threads per training process so that threads x processes + workers does not exceed
    the cores (torchrun's processes each count; DataLoader workers each take a core, and with no
    workers the process decodes and augments the images itself, which takes one core too: idle
    OpenMP threads spin and steal it — 2 threads on 2 cores trained the digits 6x slower than 1,
    docs/BENCHMARKS.md "train threads")."""
    import os

    from surgery.train import dist

    procs = processes if processes is not None else dist.environment().local_world
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (cores - max(1, workers)) // max(1, procs))


def set_threads(p: dict, workers: int) -> int:
    """Apply ``--threads`` (or :func:`auto_threads`) to torch in this process; returns it."""
    import torch

    if p.get("threads") is not None and int(p["threads"]) < 1:
        from surgery.core.errors import SurgeryError

        raise SurgeryError(f"--threads {p['threads']}: give at least 1")
    n = int(p["threads"]) if p.get("threads") is not None else auto_threads(workers)
    torch.set_num_threads(n)
    return n


# What ``--resume`` restores from a run directory's config.json: how to train (steps, lr, losses,
# seeds, data). Never what grants trust or chooses what runs or is written: --trust-code, -o and
# --force come from the resuming command line alone; the models (with their --arch/--weights) too,
# or — when the command line names none — the run's own, loaded as references *read from a file*
# (a py: one imports nothing the user did not name) and checked against the sha256 the run
# recorded. DESIGN.md "Code from files".
_NEVER_RESTORED = ("trust_code", "output", "force", "run_dir")
_MODELS = ("model", "teacher", "arch", "weights")
# the kind of the options whose default is None (the others: the kind of their default)
_KINDS = {"lr": "number", "epochs": "number", "steps": "number", "workers": "number", "data": "str", "val": "str",
          "freeze": "str", "match": "str", "input": "str", "threads": "number", "save_every": "number"}


def _restored(key: str, value, default, where: str):
    """A saved option, if it is the kind of value the option takes (JSON scalars only)."""
    def kind(v):
        return "bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else type(v).__name__

    want = _KINDS.get(key) or (kind(default) if default is not None else None)
    if not (value is None or isinstance(value, (bool, int, float, str))) or (
            want is not None and value is not None and kind(value) != want):
        from surgery.core.errors import SurgeryError

        raise SurgeryError(f"{where}: option {key!r} holds {value!r}, not a value of that option; the run directory "
                           f"is damaged")
    return value


def _model_refs(value, key: str, where: str):
    if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    from surgery.core.errors import SurgeryError

    raise SurgeryError(f"{where}: {key!r} holds {value!r}, not a model reference; the run directory is damaged")


def resumed(params: dict, resume: str | None, op: str) -> dict:
    """``params`` with a ``--resume RUN_DIR``'s saved training options in place of the ones
    given (see the comment above). ``--epochs``/``--steps`` given on the resuming command line
    extend the run. Refuses a run directory another command made."""
    if not resume:
        return params
    from surgery.core.errors import SurgeryError
    from surgery.train import checkpoint as ckpt

    saved = ckpt.read_config(resume)
    where = f"{resume}/{ckpt.CONFIG}"
    if saved.get("op") != op:
        raise SurgeryError(f"{resume} is a `surgery {saved.get('op')}` run; resume it with that command")
    out = dict(params)
    extend = params.get("epochs") is not None or params.get("steps") is not None
    for k, v in params.items():
        if k in _NEVER_RESTORED or k in _MODELS or k not in saved:
            continue
        if extend and k in ("epochs", "steps"):
            continue  # the resuming command line's length wins
        out[k] = _restored(k, saved[k], v, where)
    if not params.get("model"):  # the run's own models, read from its config: data, not commands
        for k in _MODELS:
            if k in params:
                out[k] = _model_refs(saved.get(k), k, where)
        out["models_from_run"] = True
    recorded = saved.get("inputs_sha256", {})
    out["recorded_sha256"] = recorded if isinstance(recorded, dict) else {}
    out["run_dir"] = resume
    return out


def run_rows(rep) -> list[tuple[str, str]]:
    """The steps and speed rows every training command's table shows."""
    return [
        ("steps", f"{rep.steps} ({rep.epochs} epoch{'s' if rep.epochs != 1 else ''} of {rep.steps_per_epoch}, "
                  f"batch {rep.batch}, "
                  f"{rep.world_size} process{'es' if rep.world_size > 1 else ''})"
                  + (f", resumed at step {rep.resumed_at}" if rep.resumed_at else "")),
        ("speed", f"{rep.images_per_s:,.0f} images/s ({rep.seconds:.1f} s; {rep.threads} thread"
                  f"{'s' if rep.threads != 1 else ''} x {rep.world_size} process{'es' if rep.world_size > 1 else ''}, "
                  f"{rep.workers} DataLoader worker{'s' if rep.workers != 1 else ''} each)"),
    ]
