"""Joint training of an OnionNet cascade (onionnet-bmvc2016 §3.2) through the project's one loop.

``L = α·L_S1 + (1−α)·L_S2``, α in (0, 1), every batch through both stages
(:func:`surgery.train.loop.train` with the loss callback :func:`joint_loss`):

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

The result is a normal checkpoint: the recipe gains a step ``onion_train`` (structure
unchanged) and the metadata the S1-class map (``onion_s1_classes``) that calibration uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from surgery.core.graph import output_tensors
from surgery.core.net import Net, Step
from surgery.core.recipe import replayable
from surgery.onion import s1classes
from surgery.train import checkpoint as ckpt
from surgery.train import data as tdata
from surgery.train import dist
from surgery.train.loop import Batch, Forward, Hooks, TrainConfig, TrainData, train
from surgery.train.losses import kd
from zoo.onion import OnionCascade

S2_LOSSES = ("auto", "hinge", "ce", "kd")


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
class JointReport:
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
    steps: int
    epochs: int
    steps_per_epoch: int
    batch: int
    world_size: int
    seconds: float
    images_per_s: float
    before: Mapping[str, Any]
    after: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...]
    resumed_at: int = 0
    run_dir: str | None = None
    best: Mapping[str, Any] | None = None  # the best held-out epoch (epoch, step, metric, score: higher = better)
    kept: str = "last"  # which weights the output holds: "last" step's or the "best" epoch's
    threads: int = 1  # torch threads per process while training (the images/s figure's conditions)
    workers: int = 0  # DataLoader workers per process
    output: str = ""


# ----------------------------------------------------------------------------- losses


def hinge(score: Tensor, labels: Tensor) -> Tensor:
    """Binary hinge loss of a (B, 1) score against labels 0/1: mean max(0, 1 − y·s), y = 2·label − 1."""
    y = labels.to(score.dtype) * 2 - 1
    return F.relu(1 - y * score.reshape(-1)).mean()


def s2_term(kind: str, out: Tensor, labels: Tensor | None, teacher_out: Tensor | None, temperature: float) -> Tensor:
    if kind == "hinge":
        return hinge(out, labels)
    if kind == "ce":
        return F.cross_entropy(out, labels)
    if out.shape[1] == 1:  # a single score: match it
        return F.mse_loss(out, teacher_out)
    return kd(out, teacher_out, temperature)


def teacher_decision(out: Tensor) -> Tensor:
    """The teacher's class: argmax, or score > 0 for a single output."""
    out = out.flatten(1)
    return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)


def joint_terms(s1_logits: Tensor | None, s2_out: Tensor, *, alpha: float, s2_kind: str, s1_of_class: Tensor | None,
                labels: Tensor | None = None, teacher_out: Tensor | None = None,
                temperature: float = 4.0) -> dict[str, Tensor]:
    """``{"s1": α·L_S1, "s2": (1−α)·L_S2}`` (``{"s2": L_S2}`` for a monolithic model)."""
    if s1_logits is None:
        return {"s2": s2_term(s2_kind, s2_out, labels, teacher_out, temperature)}
    cls = labels if s2_kind in ("hinge", "ce") else teacher_decision(teacher_out)
    l1 = F.cross_entropy(s1_logits, s1_of_class.to(cls.device)[cls])
    l2 = s2_term(s2_kind, s2_out, labels, teacher_out, temperature)
    return {"s1": alpha * l1, "s2": (1 - alpha) * l2}


def joint_loss(*, alpha: float, s2_kind: str, s1_of_class: Tensor | None, temperature: float = 4.0):
    """The loss callback of :func:`surgery.train.loop.train` for a cascade (or a monolithic model)."""

    def loss(s: Forward, t: Forward | None, batch: Batch) -> dict[str, Tensor]:
        outs = output_tensors(s.output)
        t_out = output_tensors(t.output)[0].flatten(1) if t is not None else None
        if len(outs) == 2:
            return joint_terms(outs[0], outs[1], alpha=alpha, s2_kind=s2_kind, s1_of_class=s1_of_class,
                               labels=batch.labels, teacher_out=t_out, temperature=temperature)
        return joint_terms(None, outs[0].flatten(1), alpha=alpha, s2_kind=s2_kind, s1_of_class=None,
                           labels=batch.labels, teacher_out=t_out, temperature=temperature)

    return loss


# ----------------------------------------------------------------------------- held-out metrics


@torch.no_grad()
def outputs(module: nn.Module, folder: tdata.ImageFolder, shape, norm, *, batch: int = 256,
            teacher: nn.Module | None = None) -> dict[str, Tensor]:
    """S1 logits (cascades), S2/model outputs and the teacher's outputs for every image, folder order."""
    from torch.utils.data import DataLoader

    was = module.training
    module.eval()
    loader = DataLoader(tdata.FolderDataset(folder, tuple(shape), train=False), batch_size=batch, shuffle=False)
    s1, s2, tt = [], [], []
    for sample in loader:
        x = tdata.prepare(sample, norm, tuple(shape[1:]), train=False, device="cpu")
        outs = output_tensors(module(x))
        if len(outs) == 2:
            s1.append(outs[0].float())
        s2.append(outs[-1].flatten(1).float())
        if teacher is not None:
            tt.append(output_tensors(teacher(x))[0].flatten(1).float())
    module.train(was)
    res = {"s2": torch.cat(s2)}
    if s1:
        res["s1"] = torch.cat(s1)
    if tt:
        res["teacher"] = torch.cat(tt)
    return res


def fpr_at_tpr(scores: Tensor, positive: Tensor, tpr: float = 0.95) -> float:
    """FPR at the threshold that keeps ``tpr`` of the positives (the patch-matching metric FPR@95)."""
    from surgery.onion.calibrate import threshold_at_tpr

    return threshold_at_tpr(scores.numpy(), positive.numpy(), tpr).fpr


def heldout(module: nn.Module, folder: tdata.ImageFolder | None, shape, norm, s2_kind: str,
            s1_of_class: Tensor | None, teacher: nn.Module | None = None) -> dict[str, Any]:
    """``s2_fpr95`` (single score, labelled) or ``s2_accuracy``; ``s1_accuracy`` over S1-classes;
    ``teacher_agreement`` label-free."""
    if folder is None:
        return {}
    o = outputs(module, folder, shape, norm, teacher=teacher)
    res: dict[str, Any] = {"images": int(o["s2"].shape[0])}
    labels = torch.tensor(folder.labels) if folder.labels is not None else None
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
    o = outputs(teacher.module, folder, teacher.input_shape, norm)["s2"]
    act = torch.softmax(o, 1) if o.shape[1] > 1 else torch.sigmoid(o)
    cls = torch.tensor(folder.labels) if kind in ("hinge", "ce") else teacher_decision(o)
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
    # val=None: the loop's per-epoch evaluation reads single-output classifiers; a cascade's pair of
    # outputs is evaluated here instead (before and after, :func:`heldout`)
    data = TrainData(train_f, None, tuple(net.input_shape), norm, cfg.crop_scale, cfg.flip)
    data.validate()
    digest = tdata.digest(train_f, val_f)
    if run_dir is not None and not resume and dist.env_rank() == 0:
        ckpt.create(run_dir, run_config or {}, force=force,
                    inputs=[cfg.data, cfg.val, net.source, teacher.source if teacher is not None else None])
    elif run_dir is not None and resume and not Path(run_dir).is_dir():
        raise SurgeryError(f"run directory {str(run_dir)!r} does not exist")
    t_mod = teacher.module.eval() if teacher is not None else None
    before = heldout(net.module, val_f, net.input_shape, norm, kind, s1_t, t_mod)
    loss = joint_loss(alpha=cfg.alpha, s2_kind=kind, s1_of_class=s1_t, temperature=cfg.temperature)
    result = train(net.module, loss, data, cfg.train, teacher=t_mod if kind == "kd" else None, run_dir=run_dir,
                   resume=resume, hooks=hooks, interrupt=interrupt)
    after = heldout(result.module, val_f, net.input_shape, norm, kind, s1_t, t_mod)
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
        s1_of_class=s1.of_class if s1 else (), before=before, after=after,
        **result.report_fields(cfg.train, run_dir))
    return out, rep
