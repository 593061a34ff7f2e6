"""One training run: what ``heal``, ``surgery train`` and ``onion train`` share around the loop.

    out = run(model, loss, data, cfg, measure=..., teacher=..., run_dir=..., run_config=..., inputs=...)
    out.result (the loop's TrainResult), out.before, out.after, out.teacher (held-out figures)

In order, whatever the command:

1. **Processes.** torchrun's environment is read once (:func:`surgery.train.dist.environment`);
   the process group is made here and torn down here however the run ends
   (:func:`surgery.train.dist.session`) — the caller never touches it.
2. **Run directory.** Made by rank 0 alone (marker, ``config.json``); a refusal (it exists, it
   is an input) reaches every rank, so none waits for a rank that left. ``resume``: it must
   exist. A run that fails before its first saved state removes the directory it made.
3. **Before.** ``measure(model, teacher, d)`` — every rank measures its share of the held-out
   images and gets the figures of all of them (:func:`surgery.train.predict.predict`); the
   teacher's own figures too when asked (``measure_teacher``).
4. **The loop** (:func:`surgery.train.loop.train`), measuring the same way after every epoch.
5. **After.** The last epoch's figures, or the best epoch's when the output holds it
   (``--keep best``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from torch import nn

from surgery.core.errors import SurgeryError
from surgery.train import checkpoint as ckpt
from surgery.train import dist
from surgery.train.data import TrainData
from surgery.train.loop import Hooks, LossFn, TrainConfig, TrainResult, train
from surgery.train.predict import Measure, evaluate


@dataclass(frozen=True)
class Outcome:
    result: TrainResult
    before: Mapping[str, Any]  # held-out figures of the model before training
    after: Mapping[str, Any]  # ... of the output (the last epoch's, or the best epoch's when kept)
    teacher: Mapping[str, Any]  # the teacher's own figures (``measure_teacher``), else {}


@dataclass(frozen=True, kw_only=True)
class RunReport:
    """The figures every training report shares (heal's and train's, onion train's): what the
    run did (``TrainResult.report_fields``) and the held-out figures before and after it. A
    report adds its own fields; its JSON lists those first, then these (docs/JSON.md)."""

    steps: int
    epochs: int
    steps_per_epoch: int
    batch: int
    world_size: int
    seconds: float
    images_per_s: float
    before: Mapping[str, Any]  # held-out figures of the model before training
    after: Mapping[str, Any]  # ... and of the output
    history: tuple[Mapping[str, Any], ...]
    resumed_at: int = 0
    run_dir: str | None = None
    best: Mapping[str, Any] | None = None  # the best held-out epoch (epoch, step, metric, score: higher = better)
    kept: str = "last"  # which weights the output holds: "last" step's or the "best" epoch's
    threads: int = 1  # torch threads per process while training (the images/s figure's conditions)
    workers: int = 0  # DataLoader workers per process
    output: str = ""

    def to_json(self) -> dict:
        shared = list(RunReport.__dataclass_fields__)
        own = [k for k in self.__dataclass_fields__ if k not in RunReport.__dataclass_fields__]
        return {k: getattr(self, k) for k in own + shared}


def run(model: nn.Module, loss: LossFn, data: TrainData, cfg: TrainConfig, *, measure: Measure | None = None,
        teacher: nn.Module | None = None, measure_teacher: bool = False,
        taps: tuple[Sequence[str], Sequence[str]] = ((), ()), frozen: Sequence[str] = (),
        run_dir: str | Path | None = None, run_config: Mapping[str, Any] | None = None,
        inputs: Iterable[str | Path | None] = (), resume: bool = False, force: bool = False,
        hooks: Hooks | None = None, interrupt: Callable[[int], bool] | None = None) -> Outcome:
    """Train a copy of ``model`` with ``loss`` (see the module docstring); ``model`` is not mutated.

    ``measure``: the held-out figures (default :func:`surgery.train.predict.evaluate` on the
    data's held-out folder); ``teacher``: given to the loss and the measure; ``inputs``: the files
    the run reads (a run directory may not be, hold or lie inside one); the rest as
    :func:`surgery.train.loop.train`."""
    cfg.validate()
    data.validate()
    if measure is None:
        def measure(m, t, d):
            return evaluate(m, t, data, d=d)
    made = False
    with dist.session(cfg.device) as d:
        try:
            if run_dir is not None:
                made = _run_dir(run_dir, run_config, inputs, resume=resume, force=force, d=d)
            before = dict(measure(model, teacher, d))
            own = dict(measure(teacher, None, d)) if (measure_teacher and teacher is not None) else {}
            result = train(model, loss, data, cfg, teacher=teacher, taps=taps, frozen=frozen, run_dir=run_dir,
                           resume=resume, hooks=hooks, interrupt=interrupt, measure=measure, d=d)
        except BaseException:
            if made and d.main:  # refused or stopped before its first saved state: leave nothing behind
                ckpt.discard_unstarted(run_dir)
            raise
        after = _after(result, lambda: measure(result.module, teacher, d))
    return Outcome(result, before, after, own)


def _run_dir(path, config, inputs, *, resume: bool, force: bool, d: dist.Dist) -> bool:
    """Make (rank 0) or check (``resume``) the run directory; True when this run made it."""
    if resume:
        if not Path(path).is_dir():
            raise SurgeryError(f"run directory {str(path)!r} does not exist")
        return False
    dist.on_main(lambda: ckpt.create(path, config or {}, force=force, inputs=[i for i in inputs if i]), d)
    return True


def _after(result: TrainResult, measure_now: Callable[[], Mapping]) -> dict:
    """The output's figures: its epoch's record (the best epoch's with ``--keep best``); a run
    whose records carry none (an older run directory) is measured now."""
    if result.kept == "best" and result.best is not None:
        rec = next((r for r in result.history if r["epoch"] == result.best["epoch"]), None)
    else:
        rec = result.history[-1] if result.history else None
    if rec is not None and "eval" in rec:
        return dict(rec["eval"])
    return dict(measure_now())
