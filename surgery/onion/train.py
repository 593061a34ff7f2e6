"""Joint training of an OnionNet cascade (onionnet-bmvc2016 §3.2) in the project's one training
run (:func:`surgery.train.run.run`).

``L = α·L_S1 + (1−α)·L_S2``, α in (0, 1), every batch through both stages (the loss callback
:func:`surgery.train.losses.joint_loss`, the registry's ``joint``):

- **with labels** (class sub-folders): ``L_S2`` per application — ``hinge``, the binary
  hinge loss ``mean(max(0, 1 − y·s))`` with ``y = ±1`` of a single-score S2 (the patch net:
  class 0 = non-matching pair, class 1 = matching), or ``ce``, cross-entropy over S2's
  classes; ``L_S1`` = cross-entropy over the S1-classes of the labels (:mod:`.s1classes`);
- **label-free**, ``teacher`` = the monolithic source: ``L_S2`` = distillation to its outputs
  (``kd``: Hinton's KL at temperature T for class logits; the squared error of the score for
  a single output), ``L_S1`` = cross-entropy towards the S1-class of the teacher's decision.

Because S2 reads S1's maps, S1's weights except its last layer get gradients from both
terms and S2's from ``L_S2`` only; S1's last layer (its classifier) from ``L_S1`` only
(tests/test_onion_train.py checks each with autograd).

A monolithic model (P_M, the baseline) trains under ``L_S2`` alone, through the same path.

Held-out figures (:func:`heldout`, before, after every epoch and after): S2's FPR@95 (a single
score) or accuracy, S1's accuracy over S1-classes, agreement with the teacher label-free.

The result is a normal checkpoint: the recipe gains a step ``onion_train`` (structure
unchanged) and the metadata the S1-class map (``onion_s1_classes``) that calibration uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from surgery.core.graph import output_tensors
from surgery.core.net import Net, Step
from surgery.core.recipe import replayable
from surgery.onion import s1classes
from surgery.train import data as tdata
from surgery.train import dist
from surgery.train.data import TrainData
from surgery.train.loop import Hooks, TrainConfig
from surgery.train.losses import S2_KINDS, joint_loss, teacher_decision
from surgery.train.predict import predict
from surgery.train.run import RunReport, run
from zoo.onion import OnionCascade

S2_LOSSES = ("auto", *S2_KINDS)


@replayable("onion_train")
def _replay(module, args: Mapping):
    return module  # weights only


@dataclass(frozen=True)
class JointConfig:
    data: str
    val: str | None = None
    alpha: float = 0.5
    s2_loss: str = "auto"  # auto: kd with a teacher, else hinge for one output, ce for several
    s1_classes: str = "binary"  # binary | kmeans | FILE.json
    temperature: float = 4.0
    train: TrainConfig = field(default_factory=TrainConfig)
    crop_scale: float = 1.0  # patches: no crop (a crop rescales the pair); 1.0 = the whole image
    flip: bool = True  # the paper's "random flipping"

    def validate(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise SurgeryError(f"--alpha {self.alpha} is outside (0, 1); the paper uses 0.5 "
                               "(L = alpha*L_S1 + (1-alpha)*L_S2)")
        if self.s2_loss not in S2_LOSSES:
            raise SurgeryError(f"unknown S2 loss {self.s2_loss!r}; choose {', '.join(S2_LOSSES)}")
        if self.temperature <= 0:
            raise SurgeryError(f"--temperature {self.temperature} must be positive")
        self.train.validate()


@dataclass(frozen=True)
class JointReport(RunReport):
    """What joint training did; the run's figures are :class:`surgery.train.run.RunReport`'s."""

    model: str
    teacher: str | None
    cascade: bool  # False: a monolithic model trained under L_S2 alone
    data: str
    data_sha256: str
    train_images: int
    val_images: int
    alpha: float | None
    s2_loss: str
    s1_map: str | None
    s1_of_class: tuple[int, ...]


# ----------------------------------------------------------------------------- held-out metrics


def _take(s, t, sample) -> dict[str, Tensor]:
    """The columns :func:`heldout` reads: S1's logits (cascades), S2's (or the model's) output,
    the teacher's output."""
    row = {"s2": s[-1].flatten(1).float()}
    if len(s) == 2:
        row["s1"] = s[0].float()
    if t is not None:
        row["teacher"] = t[0].flatten(1).float()
    return row


def fpr_at_tpr(scores: Tensor, positive: Tensor, tpr: float = 0.95) -> float:
    """FPR at the threshold that keeps ``tpr`` of the positives (the patch-matching metric FPR@95)."""
    from surgery.onion.calibrate import threshold_at_tpr

    return threshold_at_tpr(scores.numpy(), positive.numpy(), tpr).fpr


def heldout(module: nn.Module, data: TrainData, s2_kind: str, s1_of_class: Tensor | None,
            teacher: nn.Module | None = None, *, d: dist.Dist = dist.SINGLE) -> dict[str, Any]:
    """On ``data.val``: ``s2_fpr95`` (single score, labelled) or ``s2_accuracy``; ``s1_accuracy``
    over S1-classes; ``teacher_agreement`` label-free (every rank its share, the figures of all)."""
    folder = data.val
    if folder is None:
        return {}
    o = predict(module, folder, data, teacher=teacher, take=_take, d=d)
    res: dict[str, Any] = {"images": int(o["position"].shape[0])}
    labels = torch.tensor(folder.labels)[o["index"]] if folder.labels is not None else None
    target = labels if s2_kind in ("hinge", "ce") else (teacher_decision(o["teacher"]) if "teacher" in o else None)
    if target is None:
        return res
    out = o["s2"]
    if out.shape[1] == 1:
        pos = target == 1
        if bool(pos.any()) and bool((~pos).any()):
            res["s2_fpr95"] = fpr_at_tpr(out[:, 0], pos)
        res["s2_accuracy"] = float(((out[:, 0] > 0).long() == target).float().mean())
    else:
        res["s2_accuracy"] = float((out.argmax(1) == target).float().mean())
    if s2_kind == "kd":
        res = {**res, "teacher_agreement": res.pop("s2_accuracy")}
    if "s1" in o and s1_of_class is not None:
        res["s1_accuracy"] = float((o["s1"].argmax(1) == s1_of_class[target]).float().mean())
    return res


# ----------------------------------------------------------------------------- plan and run


def _s2_kind(cfg: JointConfig, module: nn.Module, shape, teacher: Net | None, n_classes: int) -> str:
    if cfg.s2_loss == "kd" and teacher is None:
        raise SurgeryError("--s2-loss kd distils a teacher; pass --teacher MONOLITHIC")
    with torch.no_grad():
        outs = output_tensors(module(torch.zeros(2, *shape)))
    c = outs[-1].flatten(1).shape[1]
    kind = cfg.s2_loss
    if kind == "auto":
        kind = "kd" if teacher is not None else ("hinge" if c == 1 else "ce")
    if kind == "hinge" and (c != 1 or n_classes != 2):
        raise SurgeryError(f"the binary hinge loss needs one S2 score and 2 classes; S2 outputs {c} and the data has "
                           f"{n_classes} classes (use --s2-loss ce)")
    if kind == "ce" and c < n_classes:
        raise SurgeryError(f"--s2-loss ce: the data has {n_classes} classes but S2 outputs {c}")
    if teacher is not None and kind == "kd":
        with torch.no_grad():
            tc = output_tensors(teacher.module(torch.zeros(2, *shape)))[0].flatten(1).shape[1]
        if tc != c:
            raise SurgeryError(f"teacher {teacher.source} outputs {tc} values but S2 outputs {c}; distillation needs "
                               "equal outputs")
    return kind


def _class_means(teacher: Net, folder: tdata.ImageFolder, norm, kind: str, n_classes: int) -> Tensor:
    data = TrainData(folder, None, tuple(teacher.input_shape), norm)
    tab = predict(teacher.module, folder, data, take=_take)
    o = tab["s2"]
    act = torch.softmax(o, 1) if o.shape[1] > 1 else torch.sigmoid(o)
    cls = torch.tensor(folder.labels)[tab["index"]] if kind in ("hinge", "ce") else teacher_decision(o)
    means = torch.zeros(n_classes, act.shape[1], dtype=torch.float64)
    for c in range(n_classes):
        sel = act[cls == c]
        if len(sel) == 0:
            raise SurgeryError(f"class {c} has no example in {folder.root}; k-means needs every class")
        means[c] = sel.double().mean(0)
    return means


def _s1_map(cfg: JointConfig, cascade: OnionCascade, classes, teacher: Net | None, folder, norm, kind: str):
    k = cascade.s1_classes
    if cfg.s1_classes == "binary":
        return s1classes.binary(classes, k)
    if cfg.s1_classes == "kmeans":
        if teacher is None:
            raise SurgeryError("--s1-classes kmeans clusters the teacher's class-mean activations; pass --teacher")
        return s1classes.kmeans(_class_means(teacher, folder, norm, kind, len(classes)), classes, k,
                                seed=cfg.train.seed)
    if cfg.s1_classes.endswith(".json") or Path(cfg.s1_classes).exists():
        return s1classes.from_json(cfg.s1_classes, classes, k)
    raise SurgeryError(f"--s1-classes {cfg.s1_classes!r}: give binary, kmeans or a JSON file mapping class -> S1-class")


def joint_train(net: Net, cfg: JointConfig, *, teacher: Net | None = None, run_dir: str | Path | None = None,
                run_config: Mapping[str, Any] | None = None, resume: bool = False, force: bool = False,
                hooks: Hooks | None = None, interrupt=None) -> tuple[Net, JointReport]:
    """Train ``net`` (a cascade jointly, a monolithic model under L_S2); ``net`` is not mutated.
    Every input is checked before a run directory is made or a step taken."""
    cfg.validate()
    net.require_editable("train")
    if len(net.input_shape) != 3:
        raise SurgeryError(f"{net.source} takes {list(net.input_shape)}; training needs an image model (C x H x W)")
    if teacher is not None and tuple(teacher.input_shape) != tuple(net.input_shape):
        raise SurgeryError(f"teacher {teacher.source} takes {'x'.join(map(str, teacher.input_shape))} but "
                           f"{net.source} takes {'x'.join(map(str, net.input_shape))}")
    is_cascade = isinstance(net.module, OnionCascade)
    label_free = teacher is not None and cfg.s2_loss in ("auto", "kd")
    train_f, val_f = tdata.folders(cfg.data, cfg.val, labels=not label_free)
    if label_free:  # held-out accuracy against the teacher needs no labels
        classes = tuple(str(i) for i in range(
            max(2, output_tensors(teacher.module(torch.zeros(1, *net.input_shape)))[0].flatten(1).shape[1])))
    else:
        classes = train_f.classes
    norm = tdata.Normalization.from_metadata(net.metadata, net.input_shape[0])
    kind = _s2_kind(cfg, net.module, net.input_shape, teacher, len(classes))
    s1 = None
    if is_cascade:
        s1 = _s1_map(cfg, net.module, classes, teacher, train_f, norm, kind)
    s1_t = s1.tensor() if s1 is not None else None
    data = TrainData(train_f, val_f, tuple(net.input_shape), norm, cfg.crop_scale, cfg.flip)
    data.validate()
    digest = tdata.digest(train_f, val_f)
    t_mod = teacher.module.eval() if (teacher is not None and kind == "kd") else None

    def measure(module, t, d):
        return heldout(module, data, kind, s1_t, t, d=d)

    ran = run(net.module, joint_loss(alpha=cfg.alpha, s2_kind=kind, s1_of_class=s1_t, temperature=cfg.temperature),
              data, cfg.train, measure=measure, teacher=t_mod, run_dir=run_dir, run_config=run_config,
              inputs=[cfg.data, cfg.val, net.source, teacher.source if teacher is not None else None],
              resume=resume, force=force, hooks=hooks, interrupt=interrupt)
    result = ran.result
    step = Step("onion_train", {
        "teacher": teacher.source if teacher is not None else None, "data": str(cfg.data), "data_sha256": digest,
        "alpha": cfg.alpha if is_cascade else None, "s2_loss": kind, "s1_classes": s1.kind if s1 else None,
        **result.recipe_fields(cfg.train)})
    meta = {**dict(net.metadata), "normalization": norm.to_dict()}
    if s1 is not None:
        meta[s1classes.META_KEY] = s1.to_dict()
    out = net.evolve(result.module, step, metadata=meta)
    rep = JointReport(
        model=net.source, teacher=teacher.source if teacher is not None else None, cascade=is_cascade,
        data=str(cfg.data), data_sha256=digest, train_images=len(train_f), val_images=len(val_f) if val_f else 0,
        alpha=cfg.alpha if is_cascade else None, s2_loss=kind, s1_map=s1.kind if s1 else None,
        s1_of_class=s1.of_class if s1 else (), before=ran.before, after=ran.after,
        **result.report_fields(cfg.train, run_dir))
    return out, rep
