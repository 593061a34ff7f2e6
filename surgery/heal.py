"""``surgery heal``: train a lossily edited network until it behaves like the original again.

Regroup, OnionNet splits, retargeted heads and diverged shared backbones change what a
network computes. Healing trains the edited network (the *student*) on an image folder to
match the original (the *teacher*) — without labels for ``kd``/``at``/``feat``
(:mod:`surgery.train.losses`) — in one training run (:func:`surgery.train.run.run`: processes,
run directory, held-out figures before and after, the project's one loop). Without a teacher
and with ``ce`` alone it is plain supervised training (``surgery train``), which makes the dense
teachers of the demos.

Everything that can be wrong with the input is checked before a run directory is made or a
step is taken: the folders (missing, empty, unreadable images are skipped and counted), the
teacher's output shapes against the student's, ``match`` naming unknown layers or layers
without feature maps, ``freeze`` naming unknown layers, the options.

The result is a normal surgery checkpoint: the recipe gains a step ``heal`` (or ``train``)
recording the data folder's listing hash, the losses and the steps; its structural replay is
a no-op (training changes values, not structure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError
from surgery.core.graph import layer_graph, output_tensors, select
from surgery.core.net import Net, Step
from surgery.core.recipe import replayable
from surgery.train import data as tdata
from surgery.train.data import TrainData
from surgery.train.losses import LossSpec, distillation
from surgery.train.loop import Hooks, TrainConfig
from surgery.train.matching import Pair, auto_pairs, parse_pairs
from surgery.train.run import RunReport, run


@replayable("heal")
def _replay_heal(module, args: Mapping):
    return module  # weights only: the structure is unchanged


@replayable("train")
def _replay_train(module, args: Mapping):
    return module


@dataclass(frozen=True)
class HealConfig:
    data: str
    val: str | None = None
    losses: LossSpec = field(default_factory=LossSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    match: str | None = None  # "S:T,..." (None: automatic, when at/feat are asked for)
    freeze: str | None = None  # layer selector (graph.select)
    crop_scale: float = 0.25
    flip: bool = True


@dataclass(frozen=True)
class HealReport(RunReport):
    """What heal (or train) did; the run's figures are :class:`surgery.train.run.RunReport`'s."""

    model: str
    teacher: str | None
    op: str  # "heal" | "train"
    data: str
    data_sha256: str
    train_images: int
    val_images: int
    skipped_images: int
    skipped: tuple[str, ...]  # the first few unreadable files
    losses: Mapping[str, Any]
    pairs: tuple[Pair, ...]
    frozen_layers: tuple[int, ...]
    frozen_params: int
    teacher_eval: Mapping[str, Any]  # the teacher's own held-out accuracy (labelled folders)

    def to_json(self) -> dict:
        d = super().to_json()
        d["pairs"] = [p.to_json() for p in self.pairs]
        d["frozen_layers"] = list(self.frozen_layers)
        d["skipped"] = list(self.skipped)
        return d


@dataclass(frozen=True)
class _Plan:
    data: TrainData
    digest: str
    pairs: tuple[Pair, ...]
    frozen_names: tuple[str, ...]
    frozen_layers: tuple[int, ...]
    frozen_params: int


def _check_models(student: Net, teacher: Net | None, spec: LossSpec, classes: int) -> None:
    student.require_editable("heal")
    if teacher is None:
        if spec.needs_teacher:
            need = ",".join(k for k in spec.kinds if k != "ce")
            raise SurgeryError(f"--loss {need} compares with a teacher; pass --teacher MODEL (or train with --loss ce)")
        return
    if tuple(teacher.input_shape) != tuple(student.input_shape):
        raise SurgeryError(f"teacher {teacher.source} takes {'x'.join(map(str, teacher.input_shape))} but student "
                           f"{student.source} takes {'x'.join(map(str, student.input_shape))}; they must see the same images")
    x = student.example_input(2)
    with torch.no_grad():
        so = output_tensors(student.module(x))
        to = output_tensors(teacher.module(x))
    s_shapes = [tuple(t.shape[1:]) for t in so]
    t_shapes = [tuple(t.shape[1:]) for t in to]
    if s_shapes != t_shapes:
        raise SurgeryError(f"teacher {teacher.source} outputs {t_shapes} but student {student.source} outputs "
                           f"{s_shapes}; distillation needs outputs of the same shapes")


def _plan(student: Net, teacher: Net | None, cfg: HealConfig) -> _Plan:
    spec = cfg.losses
    spec.validate()
    cfg.train.validate()
    if len(student.input_shape) != 3:
        raise SurgeryError(f"{student.source} takes {list(student.input_shape)}; healing needs an image model (C x H x W)")
    train_f, val_f = tdata.folders(cfg.data, cfg.val, labels=spec.needs_labels)
    try:  # held-out accuracy whenever the held-out folder is labelled
        val_l = tdata.scan(val_f.root, labels=True, what="validation folder") if val_f.labels is None else val_f
        if set(val_l.files) == set(val_f.files):
            val_f = val_l
    except SurgeryError:
        pass
    _check_models(student, teacher, spec, len(train_f.classes))
    if spec.needs_labels:
        k = output_tensors(student.module(student.example_input(1)))[0]
        if k.ndim != 2 or k.shape[1] < len(train_f.classes):
            raise SurgeryError(f"--loss ce: the data folder has {len(train_f.classes)} classes but {student.source} "
                               f"outputs {list(k.shape[1:])}; retarget it to {len(train_f.classes)} classes first")
    pairs: tuple[Pair, ...] = ()
    if spec.needs_features:
        if cfg.match:
            pairs = tuple(parse_pairs(cfg.match, student.module, student.input_shape, teacher.module, teacher.input_shape))
        else:
            pairs = tuple(auto_pairs(student.module, student.input_shape, teacher.module, teacher.input_shape))
        if "feat" in spec.kinds:
            for p in pairs:
                if p.student.shape != p.teacher.shape:
                    raise SurgeryError(f"--loss feat: student layer {p.student.index} ({p.student.name}) outputs "
                                       f"{'x'.join(map(str, p.student.shape))} but teacher layer {p.teacher.index} "
                                       f"({p.teacher.name}) {'x'.join(map(str, p.teacher.shape))}; feat needs equal "
                                       "shapes (use at, or --match other layers)")
    elif cfg.match:
        raise SurgeryError("--match pairs layers for the at and feat losses; add at or feat to --loss")
    frozen_names, frozen_layers, frozen_params = frozen_selection(student.module, cfg.freeze)
    norm = tdata.Normalization.from_metadata(student.metadata, student.input_shape[0])
    data = TrainData(train_f, val_f, tuple(student.input_shape), norm, cfg.crop_scale, cfg.flip)
    data.validate()
    return _Plan(data, tdata.digest(train_f, val_f), pairs, frozen_names, frozen_layers, frozen_params)


def frozen_selection(module: torch.nn.Module, freeze: str | None) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    """``--freeze``: (module names kept exactly, their layer indices, their parameter count)."""
    if not freeze:
        return (), (), 0
    chosen = select(layer_graph(module), freeze)
    names = tuple(l.name for l in chosen if l.kind == "module")
    params = sum(p.numel() for n in names for p in module.get_submodule(n).parameters())
    return names, tuple(l.index for l in chosen), params


def heal(student: Net, teacher: Net | None, cfg: HealConfig, *, run_dir: str | Path | None = None,
         run_config: Mapping[str, Any] | None = None, resume: bool = False, force: bool = False,
         hooks: Hooks | None = None, interrupt=None) -> tuple[Net, HealReport]:
    """Train ``student`` towards ``teacher`` (or on labels alone); ``student`` is not mutated.

    ``run_dir``: a run directory for epoch checkpoints — made here (with ``run_config`` in
    its config.json) after every input check passed, or continued with ``resume``."""
    plan = _plan(student, teacher, cfg)
    t_mod = teacher.module if teacher is not None else None
    ran = run(student.module, distillation(cfg.losses), plan.data, cfg.train, teacher=t_mod, measure_teacher=True,
              taps=(tuple(p.student.node for p in plan.pairs), tuple(p.teacher.node for p in plan.pairs)),
              frozen=plan.frozen_names, run_dir=run_dir, run_config=run_config, resume=resume, force=force,
              inputs=[cfg.data, cfg.val, student.source, teacher.source if teacher is not None else None],
              hooks=hooks, interrupt=interrupt)
    result = ran.result
    op = "heal" if teacher is not None else "train"
    step = Step(op, {
        "teacher": teacher.source if teacher is not None else None,
        "data": str(cfg.data), "data_sha256": plan.digest,
        "train_images": len(plan.data.train), "losses": cfg.losses.weights(),
        "pairs": [[p.student.index, p.teacher.index] for p in plan.pairs],
        "frozen_layers": list(plan.frozen_layers), **result.recipe_fields(cfg.train),
    })
    meta = {**dict(student.metadata), "normalization": plan.data.norm.to_dict()}
    out = student.evolve(result.module, step, metadata=meta)
    skipped = plan.data.train.skipped + (plan.data.val.skipped if plan.data.val is not None else ()) + result.undecodable
    rep = HealReport(
        model=student.source, teacher=teacher.source if teacher is not None else None, op=op, data=str(cfg.data),
        data_sha256=plan.digest, train_images=len(plan.data.train),
        val_images=len(plan.data.val) if plan.data.val is not None else 0,
        skipped_images=len(set(skipped)), skipped=tuple(sorted(set(skipped)))[:5], losses=cfg.losses.weights(),
        pairs=plan.pairs, frozen_layers=plan.frozen_layers, frozen_params=plan.frozen_params, before=ran.before,
        after=ran.after, teacher_eval=ran.teacher, **result.report_fields(cfg.train, run_dir))
    return out, rep


make_callable(__name__, heal)  # surgery.heal(...) calls heal() (the public API)
