"""S1-classes: which coarse class S1 learns for each class of the application (OnionNet §3.2–3.3).

S1 is trained with cross-entropy over its own set of S1-classes ``K`` and its thresholds are
chosen per S1-class. Three ways to get the map *class → S1-class*:

- ``binary`` (default): the first class of the folder (sorted names, as ImageFolder:
  ``neg`` of the patch pairs, ``background`` of a detector) is S1-class 0, every other class
  S1-class 1 — the paper's P and D (2 S1-classes: reject / pass on);
- a JSON file ``{"class name": s1_class, ...}`` covering every class of the folder;
- ``kmeans``: k-means (scikit-learn ``KMeans``, k = the cascade's S1-classes) over the
  teacher's class-averaged output activations (softmax), the paper's R (1000 classes → 7).

The map travels in the checkpoint's metadata (``onion_s1_classes``) so calibration uses the
map training used. The S1-classes *of interest* (§3.3: an example passes S1 if it beats the
threshold of any of them) default to ``{1}`` for a binary map and to all S1-classes otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from surgery.core.errors import SurgeryError

META_KEY = "onion_s1_classes"
KINDS = ("binary", "map", "kmeans")


@dataclass(frozen=True)
class S1Map:
    kind: str  # binary | map | kmeans
    classes: tuple[str, ...]  # the application's classes (folder order)
    of_class: tuple[int, ...]  # S1-class of each class
    k: int  # number of S1-classes

    def tensor(self, device=None) -> Tensor:
        return torch.tensor(self.of_class, dtype=torch.long, device=device)

    def default_interest(self) -> tuple[int, ...]:
        return (1,) if self.kind == "binary" else tuple(range(self.k))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "classes": list(self.classes), "of_class": list(self.of_class), "k": self.k}

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "S1Map":
        try:
            return cls(str(d["kind"]), tuple(str(c) for c in d["classes"]), tuple(int(v) for v in d["of_class"]),
                       int(d["k"]))
        except (KeyError, TypeError, ValueError):
            raise SurgeryError(f"{where}: malformed {META_KEY} metadata; train the cascade again with "
                               "`surgery onion train`") from None


def _need_two(k: int, what: str) -> None:
    if k < 2:
        raise SurgeryError(f"{what}: the cascade has {k} S1-class; joint training and calibration need at least 2 "
                           "(split it with --s1-classes 2)")


def binary(classes: Sequence[str], k: int) -> S1Map:
    _need_two(k, "binary S1-classes")
    if k != 2:
        raise SurgeryError(f"binary S1-classes need a cascade with 2 S1-classes; this one has {k} "
                           "(give a JSON class map or --s1-classes kmeans)")
    if len(classes) < 2:
        raise SurgeryError(f"the data has {len(classes)} class; binary S1-classes need at least 2")
    return S1Map("binary", tuple(classes), tuple(0 if i == 0 else 1 for i in range(len(classes))), 2)


def from_json(path: str | Path, classes: Sequence[str], k: int) -> S1Map:
    p = Path(path)
    _need_two(k, str(p))
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise SurgeryError(f"S1-class map {str(p)!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise SurgeryError(f"S1-class map {str(p)!r} is not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SurgeryError(f"S1-class map {str(p)!r} must be a JSON object {{\"class name\": s1_class, ...}}")
    unknown = sorted(set(map(str, raw)) - set(classes))
    if unknown:
        raise SurgeryError(f"S1-class map {str(p)!r} names class {unknown[0]!r}, which the data folder lacks "
                           f"(it has {', '.join(classes[:8])}{'...' if len(classes) > 8 else ''})")
    missing = [c for c in classes if c not in raw]
    if missing:
        raise SurgeryError(f"S1-class map {str(p)!r} leaves class {missing[0]!r} out; map every class")
    out = []
    for c in classes:
        v = raw[c]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < k:
            raise SurgeryError(f"S1-class map {str(p)!r}: class {c!r} -> {v!r}; give an S1-class 0..{k - 1}")
        out.append(v)
    return S1Map("map", tuple(classes), tuple(out), k)


def kmeans(class_means: Tensor, classes: Sequence[str], k: int, *, seed: int = 0) -> S1Map:
    """k-means over the (C, D) class-averaged activations; S1-classes renumbered in order of
    their first class so that the map does not depend on KMeans' label order."""
    from sklearn.cluster import KMeans

    _need_two(k, "kmeans S1-classes")
    c = class_means.shape[0]
    if c < k:
        raise SurgeryError(f"kmeans S1-classes: {c} classes cannot form {k} S1-classes; use fewer S1-classes")
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(class_means.double().numpy())
    order = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return S1Map("kmeans", tuple(classes), tuple(order[int(lab)] for lab in labels), k)


def stored(metadata: Mapping, where: str) -> S1Map | None:
    d = (metadata or {}).get(META_KEY)
    return None if d is None else S1Map.from_dict(d, where)


def check_interest(values: Sequence[int] | None, s1: S1Map) -> tuple[int, ...]:
    """The S1-classes of interest, checked against ``s1`` (None or empty: the default of the
    module docstring); sorted, without repeats."""
    if not values:
        return s1.default_interest()
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise SurgeryError(f"S1-classes of interest {list(values)!r}: give integer indices like (1,) or (0, 2)")
    vals = sorted(set(values))
    bad = [v for v in vals if not 0 <= v < s1.k]
    if bad:
        raise SurgeryError(f"S1-class {bad[0]} of interest is not one of 0..{s1.k - 1}")
    return tuple(vals)
