"""The one training loop (heal, OnionNet joint training, dense training with labels).

A caller gives the model, a *loss callback* and the data::

    def loss(student: Forward, teacher: Forward | None, batch: Batch) -> dict[str, Tensor]:
        return {"kd": ..., "at": ...}          # named, already weighted terms; total = sum

    result = train(model, loss, TrainData(...), TrainConfig(epochs=3), teacher=t, taps=(s_nodes, t_nodes))

``Forward.output`` is whatever the model returns (a tensor, a tuple for multi-stage models);
``Forward.features`` the feature maps at the fx nodes named in ``taps`` (see
:mod:`surgery.train.matching`). The teacher (if any) runs in eval mode without gradients.

The loop never mutates ``model``: it trains a copy and returns a fresh module with the
trained weights. It handles the optimizer (SGD with momentum or AdamW) and a per-step LR
schedule (cosine or constant), frozen modules (no gradients, eval mode: their running
statistics stay too), the run directory's state (checkpoint each epoch and every few minutes,
exact resume), DDP, a held-out measure after every epoch (:mod:`surgery.train.predict`) and
progress callbacks (library code never prints). What surrounds the loop — the process group, the
run directory itself, the figures before and after — is :func:`surgery.train.run.run`'s.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from surgery.core.errors import SurgeryError
from surgery.train import checkpoint as ckpt
from surgery.train import dist
from surgery.train.data import EpochSampler, FolderDataset, TrainData, prepare
from surgery.train.matching import Tapped
from surgery.train.predict import Measure, evaluate, score

__all__ = ["Batch", "Forward", "Hooks", "TrainConfig", "TrainData", "TrainResult", "evaluate", "plan", "score", "train"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
BN_MODES = ("update", "freeze")
KEEP = ("last", "best")


@dataclass(frozen=True)
class TrainConfig:
    batch: int = 64  # global batch (all processes together)
    epochs: int | None = 1
    steps: int | None = None  # when given, it wins over ``epochs``
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    device: str = "cpu"
    bn: str = "update"  # "freeze": every BatchNorm keeps its running statistics
    save_every: int | None = None  # steps between mid-epoch saves of the run state; None: every save_seconds
    save_seconds: float = 180.0  # a few minutes of work at most is lost to an interruption
    keep: str = "last"  # "best": the output is the epoch with the best held-out score (``score``)

    def validate(self) -> None:
        if self.steps is None and self.epochs is None:
            raise SurgeryError("give --epochs or --steps")
        if self.steps is None and self.epochs < 1:
            raise SurgeryError(f"--epochs {self.epochs}: train for at least 1 epoch")
        if self.steps is not None and self.steps < 1:
            raise SurgeryError(f"--steps {self.steps}: train for at least 1 step")
        if self.batch < 1:
            raise SurgeryError(f"--batch {self.batch} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SurgeryError(f"--lr {self.lr} must be a positive number")
        if self.weight_decay < 0:
            raise SurgeryError(f"--weight-decay {self.weight_decay} must not be negative")
        if self.workers < 0:
            raise SurgeryError(f"--workers {self.workers} must not be negative")
        dist.check_device(self.device)  # before any run directory is made
        if self.save_every is not None and self.save_every < 1:
            raise SurgeryError(f"--save-every {self.save_every}: save at least every 1 step (or leave it out)")
        if self.keep not in KEEP:
            raise SurgeryError(f"--keep {self.keep!r}: choose {' or '.join(KEEP)}")
        for value, allowed, what in ((self.optimizer, OPTIMIZERS, "optimizer"), (self.schedule, SCHEDULES, "schedule"),
                                     (self.bn, BN_MODES, "bn mode")):
            if value not in allowed:
                raise SurgeryError(f"unknown {what} {value!r}; choose {' or '.join(allowed)}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Batch:
    images: Tensor  # (B, C, H, W), augmented and normalised
    labels: Tensor | None  # (B,) class indices when the folder is labelled
    index: Tensor  # (B,) sample indices in the folder
    targets: Tensor | None = None  # a task's targets (detection: (B, max boxes, 5) class, cx, cy, w, h)


@dataclass(frozen=True)
class Forward:
    output: Any
    features: tuple[Tensor, ...] = ()


LossFn = Callable[[Forward, "Forward | None", Batch], Mapping[str, Tensor]]


@dataclass
class Hooks:
    """Progress callbacks (called on rank 0 only)."""

    start: Callable[[int, int], None] | None = None  # (first step, total steps)
    step: Callable[[int, Mapping[str, float], float], None] | None = None  # (step, terms, images/s)
    epoch: Callable[[Mapping[str, Any]], None] | None = None  # the epoch's history record


@dataclass(frozen=True)
class TrainResult:
    module: nn.Module  # a fresh module with the trained weights, eval mode, on CPU
    steps: int
    epochs: int
    steps_per_epoch: int
    images: int  # images trained on by this invocation (all processes)
    seconds: float
    images_per_s: float
    history: tuple[Mapping[str, Any], ...] = ()
    world_size: int = 1
    resumed_at: int = 0  # the step a resumed run continued from (0: fresh)
    run_dir: str | None = None
    undecodable: tuple[str, ...] = ()  # training files that passed verify() but failed to decode (skipped)
    best: Mapping[str, Any] | None = None  # the best held-out epoch: epoch, step, metric, score (higher = better)
    kept: str = "last"  # which weights ``module`` holds: the last step's or the best epoch's
    threads: int = 1  # torch threads of each process while it trained
    workers: int = 0  # DataLoader worker processes of each process

    def report_fields(self, cfg: TrainConfig, run_dir) -> dict:
        """The fields every training report (heal's, onion train's) shares, by their report names."""
        return dict(steps=self.steps, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch, batch=cfg.batch,
                    world_size=self.world_size, seconds=self.seconds, images_per_s=self.images_per_s,
                    history=self.history, resumed_at=self.resumed_at,
                    run_dir=str(run_dir) if run_dir is not None else None, best=self.best, kept=self.kept,
                    threads=self.threads, workers=self.workers)

    def recipe_fields(self, cfg: TrainConfig) -> dict:
        """What every training recipe step records about the run (after the step's own fields)."""
        return {"steps": self.steps, "batch": cfg.batch, "optimizer": cfg.optimizer, "lr": cfg.lr, "seed": cfg.seed,
                "world_size": self.world_size}


def plan(cfg: TrainConfig, n_train: int, world: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, epochs)."""
    if cfg.batch % world:
        raise SurgeryError(f"--batch {cfg.batch} is the global batch and must be divisible by the "
                           f"{world} processes")
    spe = n_train // cfg.batch
    if spe < 1:
        raise SurgeryError(f"the training folder has {n_train} images, fewer than one batch of {cfg.batch}; "
                           "lower --batch")
    total = cfg.steps if cfg.steps is not None else cfg.epochs * spe
    return spe, total, math.ceil(total / spe)


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(cfg: TrainConfig, opt, total: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _extend(sched, opt, step: int, total: int, planned: int, run_dir) -> None:
    """A resumed run given another length (``--epochs``/``--steps`` on resume): the learning-rate
    schedule is re-planned over the new total from the step reached (cosine: its closed form at
    ``step`` of ``total``), the optimizer state kept. Shorter than what is done: refused."""
    if total < step:
        raise SurgeryError(f"{run_dir}: the run has done {step} steps already; --epochs/--steps ask for {total} "
                           f"in all (planned: {planned}); give more to extend it")
    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        sched.T_max = max(total, 1)
        sched.last_epoch = step
        for group, lr in zip(opt.param_groups, sched._get_closed_form_lr()):
            group["lr"] = lr
        sched._last_lr = [g["lr"] for g in opt.param_groups]


def _due(cfg: TrainConfig, step: int, last_save: float, d) -> bool:
    """Is a mid-epoch save due? Every ``save_every`` steps, else after ``save_seconds`` of work
    (rank 0's clock decides for every rank: they must save at the same step)."""
    if cfg.save_every is not None:
        return step % cfg.save_every == 0
    due = torch.tensor([float(time.perf_counter() - last_save >= cfg.save_seconds)])
    if d.world > 1:
        torch.distributed.broadcast(due, src=0)
    return bool(due.item())


def _labels(sample: Mapping, device) -> Tensor | None:
    labels = sample["label"]
    if bool((labels < 0).any()):
        return None
    return labels.to(device)


def _set_modes(model: nn.Module, work: nn.Module, frozen: Sequence[str], bn: str) -> None:
    model.train()
    for name in frozen:  # looked up by name: on CUDA, DDP set-up swaps BatchNorms for SyncBatchNorms
        work.get_submodule(name).eval()
    if bn == "freeze":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(model: nn.Module, loss_fn: LossFn, data: TrainData, cfg: TrainConfig, *,
          teacher: nn.Module | None = None, taps: tuple[Sequence[str], Sequence[str]] = ((), ()),
          frozen: Sequence[str] = (), run_dir: str | Path | None = None, resume: bool = False,
          hooks: Hooks | None = None, interrupt: Callable[[int], bool] | None = None,
          measure: Measure | None = None, d: dist.Dist | None = None) -> TrainResult:
    """Train a copy of ``model`` (see the module docstring); ``frozen``: module names kept
    exactly; ``run_dir``: where epoch checkpoints go (created by the caller with
    :func:`surgery.train.checkpoint.create`); ``resume``: continue from its state;
    ``interrupt(epoch)``: return True to stop after that epoch (as if killed) — tests use it;
    ``measure(model, teacher, d)``: the held-out figures after every epoch (default
    :func:`surgery.train.predict.evaluate` on the data's held-out folder); ``d``: the processes of
    the caller's :func:`surgery.train.dist.session` (None: a session for this call alone)."""
    cfg.validate()
    data.validate()
    if d is None:
        with dist.session(cfg.device) as d:
            return train(model, loss_fn, data, cfg, teacher=teacher, taps=taps, frozen=frozen, run_dir=run_dir,
                         resume=resume, hooks=hooks, interrupt=interrupt, measure=measure, d=d)
    hooks = hooks or Hooks()
    spe, total, epochs = plan(cfg, len(data.train), d.world)
    per_rank = cfg.batch // d.world
    device = d.device

    work = copy.deepcopy(model).to(device)
    try:
        frozen_mods = [work.get_submodule(n) for n in frozen]
    except AttributeError as e:
        raise SurgeryError(f"cannot freeze: {e}") from None
    for m in frozen_mods:
        m.requires_grad_(False)
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise SurgeryError("every parameter is frozen; nothing to train (check --freeze)")
    student = dist.wrap(Tapped(work, taps[0]), d)
    t_plain = t_model = None
    if teacher is not None:
        t_plain = copy.deepcopy(teacher).to(device) if device != "cpu" else teacher
        t_model = Tapped(t_plain, taps[1]).eval()
    if measure is None:
        def measure(m, t, dd):
            return evaluate(m, t, data, batch=max(per_rank, 64), d=dd)

    opt = _optimizer(cfg, params)
    sched = _schedule(cfg, opt, total)
    dataset = (data.task.dataset(data.train, data.shape, train=True, seed=cfg.seed) if data.task is not None else
               FolderDataset(data.train, data.shape, train=True, seed=cfg.seed, crop_scale=data.crop_scale,
                             flip=data.flip))
    sampler = EpochSampler(dataset, num_replicas=d.world, rank=d.rank, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=True, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, pin_memory=device.startswith("cuda"))

    with torch.random.fork_rng(devices=[d.local_rank] if device.startswith("cuda") else []):
        torch.manual_seed(cfg.seed + d.rank)  # dropout and other random layers
        step, history, resumed_at, partial, best = 0, [], 0, {}, None
        state = ckpt.load_state(run_dir) if (resume and run_dir is not None) else None
        if state is not None:
            work.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            step = resumed_at = int(state["step"])
            history = list(state["history"])
            partial = dict(state.get("partial") or {})
            best = state.get("best")
            if int(state.get("steps_per_epoch", spe)) != spe:
                raise SurgeryError(f"{run_dir}: the run took {state['steps_per_epoch']} steps per epoch, this data and "
                                   f"--batch make {spe}; resume with the data it started from")
            rng = state["rng"][d.rank] if d.rank < len(state["rng"]) else state["rng"][0]
            ckpt.set_rng_state(rng, device)
            if int(state["total_steps"]) != total:
                _extend(sched, opt, step, total, int(state["total_steps"]), run_dir)
        if d.main and hooks.start:
            hooks.start(step, total)
        trained, t0, undecodable = 0, time.perf_counter(), set()
        epoch = step // spe
        last_save = time.perf_counter()

        def save(sums: Mapping[str, float], count: int) -> None:
            """The run state at ``step`` (every rank takes part: the RNG states are gathered)."""
            rngs = _gather_rng(device, d)
            if d.main and run_dir is not None:
                ckpt.save_state(run_dir, {
                    "model": {k: v.detach().cpu() for k, v in work.state_dict().items()},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "epoch": step // spe, "total_steps": total, "steps_per_epoch": spe,
                    "rng": rngs, "history": history, "best": best,
                    "partial": {"sums": dict(sums), "count": count} if step % spe else None})
                ckpt.write_log(run_dir, history)

        while step < total:
            sampler.set_epoch(epoch)
            sampler.start = (step - epoch * spe) * per_rank
            _set_modes(student, work, frozen, cfg.bn)
            sums: dict[str, float] = dict(partial.get("sums") or {}) if step % spe else {}
            count = int(partial.get("count") or 0) if step % spe else 0
            partial = {}
            for sample in loader:
                if step >= total:
                    break
                undecodable.update(int(i) for i in sample["undecodable"] if int(i) >= 0)
                if data.task is not None:
                    batch = data.task.batch(sample, data, train=True, device=device)
                    x = batch.images
                else:
                    x = prepare(sample, data.norm, data.shape[1:], train=True, device=device)
                    batch = Batch(x, _labels(sample, device), sample["index"])
                out, feats = student(x)
                t_fwd = None
                if t_model is not None:
                    with torch.no_grad():
                        t_fwd = Forward(*t_model(x))
                terms = loss_fn(Forward(out, feats), t_fwd, batch)
                if not terms:
                    raise SurgeryError("the loss function returned no terms")
                loss = torch.stack([v.reshape(()) for v in terms.values()]).sum()
                if not torch.isfinite(loss):
                    raise SurgeryError(f"the loss became {float(loss)} at step {step + 1}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                count += 1
                trained += per_rank * d.world
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if d.main and hooks.step:
                    dt = time.perf_counter() - t0
                    hooks.step(step, {k: float(v.detach()) for k, v in terms.items()}, trained / dt if dt > 0 else 0.0)
                if run_dir is not None and step % spe and step < total and _due(cfg, step, last_save, d):
                    save(sums, count)  # mid-epoch: the step (the sampler position follows) and the sums so far
                    last_save = time.perf_counter()
            names = sorted(sums)
            mean_terms = dist.mean(torch.tensor([sums[k] / max(count, 1) for k in names], dtype=torch.float64), d)
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                                      "loss": {k: float(v) for k, v in zip(names, mean_terms)}}
            record["eval"] = dict(measure(work, t_plain, d))  # every rank its share; the same figures on each
            history.append(record)
            judged = score(record["eval"])
            if judged is not None and (best is None or judged[1] > best["score"]):
                best = {"epoch": epoch + 1, "step": step, "metric": judged[0], "score": judged[1],
                        "model": ({k: v.detach().cpu().clone() for k, v in work.state_dict().items()}
                                  if cfg.keep == "best" else None)}
            save({}, 0)  # the epoch's record is in the history now
            last_save = time.perf_counter()
            if d.main and hooks.epoch:
                hooks.epoch(record)
            dist.barrier(d)
            epoch += 1
            if interrupt is not None and interrupt(epoch):
                break
        seconds = time.perf_counter() - t0

    final = copy.deepcopy(model)
    kept = best["model"] if (cfg.keep == "best" and best is not None and best.get("model") is not None) else None
    final.load_state_dict(kept if kept is not None else {k: v.detach().cpu() for k, v in work.state_dict().items()})
    final.eval()
    best_info = {k: v for k, v in best.items() if k != "model"} if best is not None else None
    return TrainResult(final, step, epoch, spe, trained, seconds, trained / seconds if seconds > 0 else 0.0,
                       tuple(history), d.world, resumed_at, str(run_dir) if run_dir is not None else None,
                       tuple(sorted(data.train.files[i] for i in undecodable)), best_info,
                       "best" if kept is not None else "last", torch.get_num_threads(), cfg.workers)


def _gather_rng(device: str, d: dist.Dist) -> list:
    """Every process's RNG state (rank order), so a resumed torchrun run continues each."""
    mine = ckpt.rng_state(device)
    if not d.distributed:
        return [mine]
    out = dist.gather({k: v.tolist() for k, v in mine.items()}, d)
    return [{k: torch.tensor(v, dtype=torch.uint8) for k, v in s.items()} for s in out]
