"""Pass thresholds of a cascade's S1 at a chosen recall (OnionNet §3.3, "Thresholds").

For each S1-class ``k`` of interest the ROC of its score (softmax column ``k`` of S1's
logits, exactly what :meth:`zoo.onion.OnionCascade.pass_scores` computes at run time) is
taken over the calibration examples — positives are the examples of S1-class ``k`` —
(scikit-learn's ``roc_curve``), and the threshold is the highest one whose TPR reaches the
target. An example passes S1 if its score reaches the threshold of *any* class of interest;
the others get ``+inf`` (never pass). The paper computes the ROC "over the complete training
set", so the calibration examples are the training folder; a held-out folder, when there
is one, is scored with the same thresholds (what the thresholds do on unseen data).

The threshold sits halfway between the last positive score it must keep and the next lower
score, so an example exactly at the boundary does not flip when S1 runs at another batch
size (whose convolution may round differently). The achieved TPR is then the target rounded
up to whole examples: ``ceil(tpr · P) / P``, within one example (ties aside).

Reported per target TPR: every class's threshold, positives, negatives, achieved TPR and FPR;
over the classes of interest together: TPR, FPR (examples of other S1-classes that pass) and
the pass fraction p̄ (§4: "mean percentage of examples passing S1").

Several TPRs are a sweep (the paper's LDB plot uses 0.99, 0.95, 0.90): every row is reported
and kept in the checkpoint's metadata (``onion_calibration``); the cascade's ``thresholds``
buffer — what its forward, ``surgery onion run``, ``surgery profile`` and the exported ONNX
pair use — holds the first TPR's. The checkpoint's recipe gains a step ``onion_calibrate``
(structure unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from analyzers.onion_operating import CALIBRATION_KEY as META_KEY
from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError
from surgery.core.net import Net, Step
from surgery.core.recipe import replayable
from surgery.onion import s1classes
from surgery.train import data as tdata
from zoo.onion import OnionCascade, cascade_of


@replayable("onion_calibrate")
def _replay(module, args: Mapping):
    return module  # thresholds are a buffer in the state_dict: the structure is unchanged


@dataclass(frozen=True)
class ClassThreshold:
    s1_class: int
    threshold: float  # pass when score >= threshold
    positives: int
    negatives: int
    tpr: float
    fpr: float | None  # None without negatives


@dataclass(frozen=True)
class Rates:
    examples: int
    tpr: float | None  # examples of the classes of interest that pass S1
    fpr: float | None  # examples of other S1-classes that pass (None when every class is of interest)
    pass_fraction: float  # p̄


@dataclass(frozen=True)
class TprRow:
    tpr_target: float
    thresholds: tuple[float, ...]  # one per S1-class; inf = never passes
    classes: tuple[ClassThreshold, ...]  # the classes of interest
    calibration: Rates
    val: Rates | None


@dataclass(frozen=True)
class CalibrationReport:
    model: str
    data: str
    data_sha256: str
    s1_classes: int
    s1_map: str  # binary | map | kmeans
    interest: tuple[int, ...]
    operating_points: tuple[TprRow, ...]  # one per requested TPR
    active_tpr: float  # the operating point whose thresholds the checkpoint carries
    output: str = ""

    def to_json(self) -> dict:
        def fin(v):
            return None if v is None or not math.isfinite(v) else v

        def rates(r: Rates | None):
            return None if r is None else {"examples": r.examples, "tpr": r.tpr, "fpr": r.fpr,
                                           "pass_fraction": r.pass_fraction}

        return {
            "model": self.model, "output": self.output, "data": self.data, "data_sha256": self.data_sha256,
            "s1_classes": self.s1_classes, "s1_map": self.s1_map, "interest": list(self.interest),
            "active_tpr": self.active_tpr,
            "operating_points": [
                {"tpr_target": r.tpr_target, "thresholds": [fin(t) for t in r.thresholds],
                 "classes": [{"s1_class": c.s1_class, "threshold": c.threshold, "positives": c.positives,
                              "negatives": c.negatives, "tpr": c.tpr, "fpr": c.fpr} for c in r.classes],
                 "calibration": rates(r.calibration), "val": rates(r.val)} for r in self.operating_points],
        }


# ----------------------------------------------------------------------------- pure maths


def check_tprs(tprs: float | Sequence[float]) -> tuple[float, ...]:
    """The target recalls, each in (0, 1], in order, without repeats (the first is the active one)."""
    vals = [float(tprs)] if isinstance(tprs, (int, float)) else [float(v) for v in tprs]
    if not vals:
        raise SurgeryError("give at least one TPR, e.g. --tpr 0.99")
    for v in vals:
        if not (0.0 < v <= 1.0):
            raise SurgeryError(f"TPR {v} is outside (0, 1]; a recall of S1 like 0.99 keeps 99% of the positives")
    return tuple(dict.fromkeys(vals))


def threshold_at_tpr(scores: np.ndarray, positive: np.ndarray, tpr: float, s1_class: int = 0) -> ClassThreshold:
    """The highest threshold whose TPR (``scores >= t`` over ``positive``) reaches ``tpr``."""
    from sklearn.metrics import roc_curve

    scores = np.asarray(scores, dtype=np.float32)
    positive = np.asarray(positive, dtype=bool)
    p, n = int(positive.sum()), int((~positive).sum())
    if p == 0:
        raise SurgeryError(f"S1-class {s1_class} has no positive example in the calibration data; its ROC is "
                           "undefined (calibrate on data that holds that class, or leave it out of --classes)")
    if n == 0:  # roc_curve needs both; every example is a positive
        order = np.sort(scores)[::-1]
        i = math.ceil(tpr * p - 1e-9) - 1
        t = _between(order[i], order[i + 1] if i + 1 < p else None)
        return ClassThreshold(s1_class, t, p, 0, float((scores >= t).sum() / p), None)
    fpr_c, tpr_c, thr = roc_curve(positive, scores, drop_intermediate=False)
    # thr decreasing; thr[0] = inf (nothing passes); tpr_c non-decreasing
    i = int(np.argmax(tpr_c >= tpr - 1e-12))
    below = scores[scores < thr[i]]
    t = _between(np.float32(thr[i]), below.max() if below.size else None)
    keep = scores >= np.float32(t)
    return ClassThreshold(s1_class, t, p, n, float(keep[positive].sum() / p), float(keep[~positive].sum() / n))


def _between(hi: np.float32, lo: np.float32 | None) -> float:
    """A float32 threshold in (lo, hi]: the midpoint when float32 can hold it strictly above lo."""
    hi = np.float32(hi)
    if lo is None:  # nothing scores lower: a little below hi (a millionth of it)
        return float(hi - np.float32(abs(float(hi)) * 1e-6))
    mid = np.float32((np.float64(hi) + np.float64(lo)) / 2.0)
    return float(mid) if np.float32(lo) < mid <= hi else float(hi)


def rates(scores: Tensor, target: Tensor, thresholds: Tensor, interest: Sequence[int]) -> Rates:
    """TPR/FPR/p̄ of the pass rule ``any(score >= threshold)`` against S1-class targets."""
    passed = (scores >= thresholds.to(scores.dtype)).any(dim=1)
    pos = torch.isin(target, torch.tensor(list(interest), dtype=target.dtype))
    n, p = int(target.numel()), int(pos.sum())
    return Rates(n, float(passed[pos].sum()) / p if p else None,
                 float(passed[~pos].sum()) / (n - p) if n - p else None, float(passed.sum()) / n if n else 0.0)


# ----------------------------------------------------------------------------- data


@torch.no_grad()
def s1_logits(cascade: OnionCascade, folder: tdata.ImageFolder, shape, norm: tdata.Normalization, *,
              batch: int = 256, device: str = "cpu") -> Tensor:
    """S1's logits (N, K) for every image of ``folder`` in folder order (eval, no augmentation)."""
    from torch.utils.data import DataLoader

    was = cascade.training
    cascade.eval()
    loader = DataLoader(tdata.FolderDataset(folder, tuple(shape), train=False), batch_size=batch, shuffle=False)
    out = []
    for sample in loader:
        x = tdata.prepare(sample, norm, tuple(shape[1:]), train=False, device=device)
        out.append(cascade.stage1(x)[0].float().cpu())
    cascade.train(was)
    return torch.cat(out)


@torch.no_grad()
def teacher_classes(teacher: torch.nn.Module, folder: tdata.ImageFolder, shape, norm, *, batch: int = 256) -> Tensor:
    """The teacher's decision per image: argmax of its logits, or score > 0 for one output."""
    from surgery.core.graph import output_tensors
    from torch.utils.data import DataLoader

    loader = DataLoader(tdata.FolderDataset(folder, tuple(shape), train=False), batch_size=batch, shuffle=False)
    out = []
    for sample in loader:
        x = tdata.prepare(sample, norm, tuple(shape[1:]), train=False, device="cpu")
        y = output_tensors(teacher(x))[0].flatten(1)
        out.append((y[:, 0] > 0).long() if y.shape[1] == 1 else y.argmax(1))
    return torch.cat(out)


def require_thresholds(net: Net) -> OnionCascade:
    """The cascade, refused when its thresholds were never set (every S1-class at -inf)."""
    cascade = cascade_of(net)
    if bool(torch.isneginf(cascade.thresholds).all()):
        raise SurgeryError(f"{net.source} has no pass thresholds (every sample passes S1); calibrate it first: "
                           f"surgery onion calibrate {net.source} --data DIR --tpr 0.99")
    return cascade


# ----------------------------------------------------------------------------- calibration


def _targets(net: Net, folder: tdata.ImageFolder, s1: s1classes.S1Map, teacher: Net | None, norm) -> Tensor:
    if teacher is not None:
        cls = teacher_classes(teacher.module.eval(), folder, net.input_shape, norm)
    elif folder.labels is not None:
        cls = torch.tensor(folder.labels, dtype=torch.long)
    else:
        raise SurgeryError(f"{folder.root} has no class sub-folders; calibrate on labelled data or pass --teacher")
    if int(cls.max()) >= len(s1.of_class):
        raise SurgeryError(f"{folder.root}: class {int(cls.max())} is beyond the {len(s1.of_class)} classes of the "
                           "S1-class map; use the data the cascade was trained on")
    return s1.tensor()[cls]


def _s1_map(net: Net, cascade: OnionCascade, folder: tdata.ImageFolder, teacher: Net | None) -> s1classes.S1Map:
    s1 = s1classes.stored(net.metadata, net.source)
    if s1 is not None:
        if s1.k != cascade.s1_classes:
            raise SurgeryError(f"{net.source}: its S1-class map has {s1.k} S1-classes but S1 outputs "
                               f"{cascade.s1_classes}")
        return s1
    if folder.labels is not None:
        return s1classes.binary(folder.classes, cascade.s1_classes)
    if teacher is not None:  # label-free: the teacher's classes (2 outputs or a single score)
        return s1classes.binary(("0", "1"), cascade.s1_classes)
    raise SurgeryError(f"{folder.root} has no class sub-folders; calibrate on labelled data or pass --teacher")


def calibrate(net: Net, data: str, *, tprs: float | Sequence[float], val: str | None = None,
              interest: Sequence[int] | None = None, teacher: Net | None = None,
              batch: int = 256) -> tuple[Net, CalibrationReport]:
    """Thresholds at each TPR of ``tprs`` (the first one goes into the cascade); ``net`` is not mutated."""
    tprs = check_tprs(tprs)
    cascade = cascade_of(net)
    s1classes._need_two(cascade.s1_classes, net.source)
    if batch < 1:
        raise SurgeryError(f"--batch {batch} must be at least 1")
    has_split = (val is not None) or ((Path(data) / "train").is_dir() and (Path(data) / "val").is_dir())
    if has_split:
        cal_f, val_f = tdata.folders(data, val, labels=teacher is None)
    else:
        cal_f, val_f = tdata.scan(data, labels=teacher is None), None
    s1 = _s1_map(net, cascade, cal_f, teacher)
    if s1.classes and cal_f.labels is not None and tuple(cal_f.classes) != s1.classes:
        raise SurgeryError(f"{data}: its classes ({', '.join(cal_f.classes[:6])}) differ from those the cascade was "
                           f"trained on ({', '.join(s1.classes[:6])})")
    chosen = s1classes.check_interest(interest, s1)
    norm = tdata.Normalization.from_metadata(net.metadata, net.input_shape[0])

    scores = cascade.pass_scores(s1_logits(cascade, cal_f, net.input_shape, norm, batch=batch))  # (N, K)
    target = _targets(net, cal_f, s1, teacher, norm)
    v_scores = v_target = None
    if val_f is not None:
        v_scores = cascade.pass_scores(s1_logits(cascade, val_f, net.input_shape, norm, batch=batch))
        v_target = _targets(net, val_f, s1, teacher, norm)

    rows = []
    for tpr in tprs:
        per = [threshold_at_tpr(scores[:, k].numpy(), (target == k).numpy(), tpr, k) for k in chosen]
        thr = torch.full((cascade.s1_classes,), float("inf"))
        for c in per:
            thr[c.s1_class] = c.threshold
        rows.append(TprRow(tpr, tuple(float(t) for t in thr), tuple(per), rates(scores, target, thr, chosen),
                           rates(v_scores, v_target, thr, chosen) if v_scores is not None else None))

    module = cascade_copy(cascade)
    module.thresholds.copy_(torch.tensor(rows[0].thresholds))
    digest = tdata.digest(cal_f, *(() if val_f is None else (val_f,)))
    report = CalibrationReport(net.source, str(data), digest, cascade.s1_classes, s1.kind, chosen, tuple(rows), tprs[0])
    meta = {**dict(net.metadata), s1classes.META_KEY: s1.to_dict(),
            META_KEY: {k: v for k, v in report.to_json().items() if k not in ("model", "output")}}
    step = Step("onion_calibrate", {"data": str(data), "data_sha256": digest, "tpr": list(tprs),
                                    "interest": list(chosen), "thresholds": [
                                        None if not math.isfinite(t) else t for t in rows[0].thresholds]})
    return net.evolve(module, step, metadata=meta), report


def cascade_copy(cascade: OnionCascade) -> OnionCascade:
    import copy

    return copy.deepcopy(cascade).eval()


def stored(net: Net) -> Mapping[str, Any] | None:
    """The calibration a checkpoint carries (its report without model/output), or None."""
    return (net.metadata or {}).get(META_KEY)


make_callable(__name__, calibrate)  # surgery.onion.calibrate(...) calls calibrate() (the public API)
