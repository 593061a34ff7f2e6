"""Loss terms for healing: ``kd``, ``at``, ``feat``, ``ce``.

- ``kd`` (Hinton et al. 2015): KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged
  over the batch, times T² (so gradients keep their size as T changes), as
  ``utils.distillation`` of github.com/szagoruyko/attention-transfer. For outputs that are not
  (B, classes) logits — Darknet detectors' raw head outputs — it is the mean squared error of
  every output tensor instead (a softmax over box coordinates means nothing).
- ``at`` (Zagoruyko & Komodakis 2017; weight-parameterizations thesis §6.3.1, eq. 6.1):
  attention map Q = vec(F²_sum(A)) / C, l2-normalised per sample, and
  β · Σ_j mean over batch and positions of (Q_S^j − Q_T^j)². This is their public code's
  ``at``/``at_loss`` (``at(x) = normalize(x.pow(2).mean(1).view(B, -1))``, loss
  ``(at(x) - at(y)).pow(2).mean()``, total ``β · Σ at_loss`` with β = 1e3): the mean is the
  thesis' "β = 10³ divided by the number of elements in the attention map and batch size".
  Student maps of another spatial size are bilinearly resized to the teacher's first (the
  thesis: "attention maps can be interpolated to match their shapes").
- ``feat``: mean squared error of matched feature maps (FitNets-style, no adaptor: the
  shapes must agree), averaged over pairs.
- ``ce``: cross entropy with the folder labels.

:func:`distillation` turns a :class:`LossSpec` into the loss callback of
:func:`surgery.train.loop.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from surgery.core.errors import SurgeryError
from surgery.core.graph import output_tensors

KINDS = ("kd", "at", "feat", "ce")


def kd(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's distillation term for (B, K) logits (see the module docstring)."""
    t = float(temperature)
    log_p = F.log_softmax(student / t, dim=1)
    log_q = F.log_softmax(teacher / t, dim=1)
    # KL(q || p) = Σ q (log q − log p), summed over classes and averaged over the batch
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def raw_mse(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Mean over output tensors of their mean squared error (detector heads)."""
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher)]).mean()


def attention_map(a: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W): mean over channels of a², l2-normalised per sample."""
    return F.normalize(a.pow(2).mean(1).flatten(1), dim=1)


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


def feat(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    return torch.stack([F.mse_loss(s, t) for s, t in zip(student, teacher)]).mean()


def ce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)


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
            raise SurgeryError(f"empty loss list {text!r}; choose from {', '.join(KINDS)}, e.g. kd,at")
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise SurgeryError(f"unknown loss {bad[0]!r}; choose from {', '.join(KINDS)}, e.g. kd,at")
        spec = cls(kinds=kinds, **weights)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.temperature <= 0:
            raise SurgeryError(f"temperature {self.temperature} must be positive")
        for name in ("kd_weight", "beta", "feat_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise SurgeryError(f"{name.replace('_', '-')} {getattr(self, name)} must not be negative")

    @property
    def needs_teacher(self) -> bool:
        return any(k in self.kinds for k in ("kd", "at", "feat"))

    @property
    def needs_labels(self) -> bool:
        return "ce" in self.kinds

    @property
    def needs_features(self) -> bool:
        return "at" in self.kinds or "feat" in self.kinds

    def weights(self) -> dict:
        w = {"kd": {"weight": self.kd_weight, "temperature": self.temperature}, "at": {"beta": self.beta},
             "feat": {"weight": self.feat_weight}, "ce": {"weight": self.ce_weight}}
        return {k: w[k] for k in self.kinds}


def logits_of(output) -> Tensor:
    """The classifier logits of a model output: its first tensor."""
    return output_tensors(output)[0]


def distillation(spec: LossSpec):
    """The loss callback (student Forward, teacher Forward, Batch) -> named weighted terms."""

    def loss(s, t, batch) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        if "kd" in spec.kinds:
            so, to = output_tensors(s.output), output_tensors(t.output)
            if so[0].ndim == 2 and len(so) == 1:
                terms["kd"] = spec.kd_weight * kd(so[0], to[0], spec.temperature)
            else:
                terms["kd"] = spec.kd_weight * raw_mse(so, to)
        if "at" in spec.kinds:
            terms["at"] = at(s.features, t.features, spec.beta)
        if "feat" in spec.kinds:
            terms["feat"] = spec.feat_weight * feat(s.features, t.features)
        if "ce" in spec.kinds:
            terms["ce"] = spec.ce_weight * ce(logits_of(s.output), batch.labels)
        return terms

    return loss
