"""Every loss term the training commands use, in one registry by name (:data:`LOSSES`), and the
loss callbacks of :func:`surgery.train.loop.train` built from them.

Terms of ``heal``/``train`` (``--loss``, :class:`LossSpec`):

- ``kd`` (Hinton et al. 2015): KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged
  over the batch, times T² (so gradients keep their size as T changes), as
  ``utils.distillation`` of github.com/szagoruyko/attention-transfer. For outputs that are not
  (B, classes) logits — Darknet detectors' raw head outputs — it is ``feat`` of the output
  tensors instead (a softmax over box coordinates means nothing).
- ``at`` (Zagoruyko & Komodakis 2017; weight-parameterizations thesis §6.3.1, eq. 6.1):
  attention map Q = vec(F²_sum(A)) / C, l2-normalised per sample, and
  β · Σ_j mean over batch and positions of (Q_S^j − Q_T^j)². This is their public code's
  ``at``/``at_loss`` (``at(x) = normalize(x.pow(2).mean(1).view(B, -1))``, loss
  ``(at(x) - at(y)).pow(2).mean()``, total ``β · Σ at_loss`` with β = 1e3): the mean is the
  thesis' "β = 10³ divided by the number of elements in the attention map and batch size".
  Student maps of another spatial size are bilinearly resized to the teacher's first (the
  thesis: "attention maps can be interpolated to match their shapes").
- ``feat``: mean squared error of matched tensors (FitNets-style, no adaptor: the shapes must
  agree), averaged over pairs.
- ``ce``: cross entropy with the folder labels.

Terms of OnionNet joint training (onionnet-bmvc2016 §3.2, ``surgery onion train``):

- ``hinge``: the binary hinge loss ``mean(max(0, 1 − y·s))`` of a single score, y = ±1;
- ``joint``: ``{"s1": α·L_S1, "s2": (1−α)·L_S2}``, L_S1 cross-entropy over the S1-classes,
  L_S2 by the S2 kind (``hinge``, ``ce``, or ``kd`` towards a teacher: Hinton's KL for class
  logits, the squared error of a single score); ``{"s2": L_S2}`` for a monolithic model.

Terms registered by their own modules on import: ``yolo`` (Darknet's ``[yolo]`` loss of
detection training, :func:`surgery.detect.loss.detection_loss`).

:func:`distillation` and :func:`joint_loss` turn them into loss callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from surgery.core.errors import SurgeryError
from surgery.core.graph import output_tensors


@dataclass(frozen=True)
class Term:
    name: str
    fn: Callable[..., Tensor]
    needs: frozenset[str]  # what its inputs come from: "teacher", "labels", "features" (matched maps)
    summary: str


LOSSES: dict[str, Term] = {}


def register(name: str, *, needs: Sequence[str] = (), summary: str = ""):
    """Add a loss term to :data:`LOSSES` under ``name`` (a decorator)."""
    def add(fn):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = Term(name, fn, frozenset(needs), summary or (fn.__doc__ or "").split("\n")[0])
        return fn

    return add


def term(name: str) -> Term:
    """The registered term ``name``; unknown: one line naming the choices."""
    if name not in LOSSES:
        raise SurgeryError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]


@register("kd", needs=("teacher",))
def kd(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's distillation term for (B, K) logits (see the module docstring)."""
    t = float(temperature)
    log_p = F.log_softmax(student / t, dim=1)
    log_q = F.log_softmax(teacher / t, dim=1)
    # KL(q || p) = Σ q (log q − log p), summed over classes and averaged over the batch
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def attention_map(a: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W): mean over channels of a², l2-normalised per sample."""
    return F.normalize(a.pow(2).mean(1).flatten(1), dim=1)


@register("at", needs=("teacher", "features"))
def at(student: Sequence[Tensor], teacher: Sequence[Tensor], beta: float = 1e3) -> Tensor:
    """β · Σ_j mean((Q_S^j − Q_T^j)²) over matched pairs (see the module docstring)."""
    terms = []
    for s, t in zip(student, teacher):
        if s.shape[-2:] != t.shape[-2:]:
            m = s.pow(2).mean(1, keepdim=True)
            m = F.interpolate(m, size=t.shape[-2:], mode="bilinear", align_corners=False)
            qs = F.normalize(m.flatten(1), dim=1)
        else:
            qs = attention_map(s)
        terms.append((qs - attention_map(t)).pow(2).mean())
    return float(beta) * torch.stack(terms).sum()


@register("feat", needs=("teacher", "features"))
def feat(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Mean over matched pairs of their mean squared error (feature maps; a detector's heads)."""
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher)]).mean()


@register("ce", needs=("labels",))
def ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy of class logits with the folder labels."""
    return F.cross_entropy(logits, labels)


@register("hinge", needs=("labels",))
def hinge(score: Tensor, labels: Tensor) -> Tensor:
    """Binary hinge loss of a (B, 1) score against labels 0/1: mean max(0, 1 − y·s), y = 2·label − 1."""
    y = labels.to(score.dtype) * 2 - 1
    return F.relu(1 - y * score.reshape(-1)).mean()


# ----------------------------------------------------------------------------- heal / train


HEAL_KINDS = ("kd", "at", "feat", "ce")  # the terms --loss combines, each with its weight in LossSpec


@dataclass(frozen=True)
class LossSpec:
    """Which terms, and their weights: total = kd_weight·kd + at (β inside) + feat_weight·feat
    + ce_weight·ce."""

    kinds: tuple[str, ...] = ("kd",)
    temperature: float = 4.0
    kd_weight: float = 1.0
    beta: float = 1e3
    feat_weight: float = 1.0
    ce_weight: float = 1.0

    @classmethod
    def parse(cls, text: str, **weights) -> "LossSpec":
        kinds = tuple(dict.fromkeys(p.strip().lower() for p in str(text).split(",") if p.strip()))
        if not kinds:
            raise SurgeryError(f"empty loss list {text!r}; choose from {', '.join(HEAL_KINDS)}, e.g. kd,at")
        bad = [k for k in kinds if k not in HEAL_KINDS]
        if bad:
            raise SurgeryError(f"unknown loss {bad[0]!r}; choose from {', '.join(HEAL_KINDS)}, e.g. kd,at")
        spec = cls(kinds=kinds, **weights)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.temperature <= 0:
            raise SurgeryError(f"temperature {self.temperature} must be positive")
        for name in ("kd_weight", "beta", "feat_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise SurgeryError(f"{name.replace('_', '-')} {getattr(self, name)} must not be negative")

    def _needs(self, what: str) -> bool:
        return any(what in term(k).needs for k in self.kinds)

    @property
    def needs_teacher(self) -> bool:
        return self._needs("teacher")

    @property
    def needs_labels(self) -> bool:
        return self._needs("labels")

    @property
    def needs_features(self) -> bool:
        return self._needs("features")

    def weights(self) -> dict:
        w = {"kd": {"weight": self.kd_weight, "temperature": self.temperature}, "at": {"beta": self.beta},
             "feat": {"weight": self.feat_weight}, "ce": {"weight": self.ce_weight}}
        return {k: w[k] for k in self.kinds}


def distillation(spec: LossSpec):
    """The loss callback (student Forward, teacher Forward, Batch) -> named weighted terms."""

    def loss(s, t, batch) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if "kd" in spec.kinds:
            so, to = output_tensors(s.output), output_tensors(t.output)
            if so[0].ndim == 2 and len(so) == 1:
                terms["kd"] = spec.kd_weight * kd(so[0], to[0], spec.temperature)
            else:
                terms["kd"] = spec.kd_weight * feat(so, to)
        if "at" in spec.kinds:
            terms["at"] = at(s.features, t.features, spec.beta)
        if "feat" in spec.kinds:
            terms["feat"] = spec.feat_weight * feat(s.features, t.features)
        if "ce" in spec.kinds:
            terms["ce"] = spec.ce_weight * ce(output_tensors(s.output)[0], batch.labels)
        return terms

    return loss


# ----------------------------------------------------------------------------- OnionNet joint training


S2_KINDS = ("hinge", "ce", "kd")


def s2_term(kind: str, out: Tensor, labels: Tensor | None, teacher_out: Tensor | None, temperature: float) -> Tensor:
    """L_S2 of the S2 kind: ``hinge`` or ``ce`` with labels; ``kd`` towards the teacher's outputs
    (Hinton's KL for class logits, the squared error of a single score)."""
    if kind in ("hinge", "ce"):
        return term(kind).fn(out, labels)
    if out.shape[1] == 1:  # a single score: match it
        return feat([out], [teacher_out])
    return kd(out, teacher_out, temperature)


def teacher_decision(out: Tensor) -> Tensor:
    """The teacher's class: argmax, or score > 0 for a single output."""
    out = out.flatten(1)
    return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)


@register("joint", summary="OnionNet's L = α·L_S1 + (1−α)·L_S2 (onionnet-bmvc2016 §3.2)")
def joint_terms(s1_logits: Tensor | None, s2_out: Tensor, *, alpha: float, s2_kind: str, s1_of_class: Tensor | None,
                labels: Tensor | None = None, teacher_out: Tensor | None = None,
                temperature: float = 4.0) -> dict[str, Tensor]:
    """``{"s1": α·L_S1, "s2": (1−α)·L_S2}`` (``{"s2": L_S2}`` for a monolithic model)."""
    if s1_logits is None:
        return {"s2": s2_term(s2_kind, s2_out, labels, teacher_out, temperature)}
    cls = labels if s2_kind in ("hinge", "ce") else teacher_decision(teacher_out)
    l1 = ce(s1_logits, s1_of_class.to(cls.device)[cls])
    l2 = s2_term(s2_kind, s2_out, labels, teacher_out, temperature)
    return {"s1": alpha * l1, "s2": (1 - alpha) * l2}


def joint_loss(*, alpha: float, s2_kind: str, s1_of_class: Tensor | None, temperature: float = 4.0):
    """The loss callback of :func:`surgery.train.loop.train` for a cascade (two outputs: S1's
    logits, S2's output) or a monolithic model (one output)."""

    def loss(s, t, batch) -> dict[str, Tensor]:
        outs = output_tensors(s.output)
        t_out = output_tensors(t.output)[0].flatten(1) if t is not None else None
        s1 = outs[0] if len(outs) == 2 else None
        return joint_terms(s1, outs[-1] if s1 is not None else outs[0].flatten(1), alpha=alpha, s2_kind=s2_kind,
                           s1_of_class=s1_of_class if s1 is not None else None, labels=batch.labels,
                           teacher_out=t_out, temperature=temperature)

    return loss
