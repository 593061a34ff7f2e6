"""The options of every command that trains through the one loop (``heal``, ``train``, ``onion
train``): one definition each, and one function that turns them into the loop's config.

Imports nothing heavy at module level (the CLI must start in a blink)."""

from __future__ import annotations

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
                       device=p["device"], **extra)


def resumed(params: dict, resume: str | None, op: str) -> dict:
    """``params`` with a ``--resume RUN_DIR``'s saved options in place of the ones given: the run
    continues as it started. Refuses a run directory another command made."""
    if not resume:
        return params
    from surgery.core.errors import SurgeryError
    from surgery.train import checkpoint as ckpt

    saved = ckpt.read_config(resume)
    if saved.get("op") != op:
        raise SurgeryError(f"{resume} is a `surgery {saved.get('op')}` run; resume it with that command")
    return {**{k: saved.get(k, v) for k, v in params.items()}, "run_dir": resume}


def run_rows(rep) -> list[tuple[str, str]]:
    """The steps and speed rows every training command's table shows."""
    return [
        ("steps", f"{rep.steps} ({rep.epochs} epoch{'s' if rep.epochs != 1 else ''} of {rep.steps_per_epoch}, "
                  f"batch {rep.batch}, "
                  f"{rep.world_size} process{'es' if rep.world_size > 1 else ''})"
                  + (f", resumed at step {rep.resumed_at}" if rep.resumed_at else "")),
        ("speed", f"{rep.images_per_s:,.0f} images/s ({rep.seconds:.1f} s)"),
    ]
