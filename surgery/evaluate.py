"""Measure models on data: ``surgery eval`` and the image probes of every ``--data DIR``.

**Which images.** ``DIR`` holding ``train/`` and ``val/`` (what ``surgery data digits``
writes, what heal splits on): its ``val/`` — the held-out images heal reports on. Any other
folder: every image in it, at any depth. Labels follow heal's rule (class = first sub-folder,
torchvision's ImageFolder); a folder with loose images is unlabelled and has no accuracy.
Images are decoded and resized to each model's C x H x W and normalised with the
normalisation its checkpoint records (heal and train store it), as heal evaluates.

**Metrics** (:func:`surgery.train.predict.evaluate` over the project's one evaluation loop,
:func:`surgery.train.predict.predict`, so the figures are the ones heal prints after each epoch): ``accuracy`` (labelled folder, a
classifier with at least as many outputs as classes), ``top1_agreement`` with a teacher and
``kl_to_teacher`` (mean KL(teacher ‖ model) of the softmax outputs, nats); for outputs that
are not (batch, classes) logits, ``mse_to_teacher``.

**Probes.** :func:`image_probe` turns the same folder into a :class:`~surgery.core.probe.Probe`
for the commands that judge a model on probe inputs (regroup, fold, share, export, onion
split/run, diff): ``images`` of them spread evenly over the sorted listing (so every class of a
sorted class-folder layout is in), in batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from surgery.core.errors import SurgeryError
from surgery.core.net import Net
from surgery.core.probe import IMAGES, Probe
from surgery.train import data as tdata
from surgery.train.data import TrainData
from surgery.train.predict import batches
from surgery.train.predict import evaluate as measure

PROBE_IMAGES = 64
PROBE_BATCH = 16


def eval_folder(data: str | Path) -> tdata.ImageFolder:
    """The images ``--data DIR`` stands for (see the module docstring), labelled when every
    image sits in a class sub-folder."""
    root = Path(data)
    if (root / "train").is_dir() and (root / "val").is_dir():
        root = root / "val"
    try:
        return tdata.scan(root, labels=True)
    except SurgeryError as e:
        if "class sub-folder" not in str(e):
            raise
        return tdata.scan(root, labels=False)


@dataclass(frozen=True)
class ModelEval:
    model: str
    input_shape: tuple[int, ...]
    accuracy: float | None  # labelled folders
    top1_agreement: float | None  # with a teacher
    kl_to_teacher: float | None  # nats
    mse_to_teacher: float | None  # outputs that are not class logits


@dataclass(frozen=True)
class EvalReport:
    data: str  # the folder the images came from (DIR/val for a train/val folder)
    images: int
    classes: tuple[str, ...]  # empty when unlabelled
    skipped_images: int  # unreadable files
    teacher: ModelEval | None
    models: tuple[ModelEval, ...]

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def to_json(self) -> dict:
        def row(m: ModelEval) -> dict:
            return {"model": m.model, "input_shape": list(m.input_shape), "accuracy": m.accuracy,
                    "top1_agreement": m.top1_agreement, "kl_to_teacher": m.kl_to_teacher,
                    "mse_to_teacher": m.mse_to_teacher}

        return {"data": self.data, "images": self.images, "labelled": self.labelled, "classes": list(self.classes),
                "skipped_images": self.skipped_images, "teacher": row(self.teacher) if self.teacher else None,
                "models": [row(m) for m in self.models]}


def _train_data(folder: tdata.ImageFolder, net: Net) -> TrainData:
    if len(net.input_shape) != 3:
        raise SurgeryError(f"{net.source} takes {list(net.input_shape)}; evaluating on images needs an image model "
                           "(input C x H x W)")
    norm = tdata.Normalization.from_metadata(net.metadata, net.input_shape[0])
    return TrainData(folder, folder, tuple(net.input_shape), norm)


def _row(net: Net, metrics: Mapping[str, Any]) -> ModelEval:
    return ModelEval(net.source, tuple(net.input_shape), metrics.get("accuracy"), metrics.get("top1_agreement"),
                     metrics.get("kl_to_teacher"), metrics.get("mse_to_teacher"))


def evaluate(models: Sequence[Net], data: str | Path | tdata.ImageFolder, *, teacher: Net | None = None,
             batch: int = 256, device: str = "cpu", progress=None) -> EvalReport:
    """Every model of ``models`` on the images of ``data`` (a folder, or :func:`eval_folder`'s
    result) and against ``teacher``.

    ``progress(done, total, label)`` is called before each model (library code never prints)."""
    if not models:
        raise SurgeryError("give at least one model to evaluate")
    if batch < 1:
        raise SurgeryError(f"--batch {batch} must be at least 1")
    folder = data if isinstance(data, tdata.ImageFolder) else eval_folder(data)
    for net in models:
        if teacher is not None and tuple(teacher.input_shape) != tuple(net.input_shape):
            raise SurgeryError(f"teacher {teacher.source} takes {'x'.join(map(str, teacher.input_shape))} but "
                               f"{net.source} takes {'x'.join(map(str, net.input_shape))}; they must see the same "
                               "images")
        _train_data(folder, net)  # an image model: refused before any image is decoded
    total = len(models) + (teacher is not None)
    t_row = None
    t_mod = None
    if teacher is not None:
        if progress:
            progress(0, total, f"evaluating {teacher.source}")
        t_mod = teacher.module.to(device).eval()
        t_row = _row(teacher, measure(t_mod, None, _train_data(folder, teacher), folder, batch=batch, device=device))
    rows = []
    for i, net in enumerate(models):
        if progress:
            progress(i + (teacher is not None), total, f"evaluating {net.source}")
        m = net.module.to(device).eval()
        rows.append(_row(net, measure(m, t_mod, _train_data(folder, net), folder, batch=batch, device=device)))
    if progress:
        progress(total, total, "evaluated")
    return EvalReport(str(folder.root), len(folder), tuple(folder.classes), len(folder.skipped), t_row, tuple(rows))


# ----------------------------------------------------------------------------- probes


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted({(i * n) // k for i in range(k)})


def image_probe(data: str | Path, net: Net, *, images: int = PROBE_IMAGES, batch: int = PROBE_BATCH) -> Probe:
    """``images`` real images of ``--data DIR`` (spread over the folder) for ``net``'s input."""
    if images < 1:
        raise SurgeryError(f"probe images {images}: give at least 1")
    folder = eval_folder(data)
    folder = folder.subset(spread(len(folder), images))
    shape = tuple(net.input_shape)
    if len(shape) != 3:
        raise SurgeryError(f"--data feeds images; this model takes {list(shape)} (not C x H x W)")
    norm = tdata.Normalization.from_metadata(net.metadata, shape[0])
    with torch.no_grad():
        xs = tuple(x for x, _, _ in batches(folder, TrainData(folder, None, shape, norm), batch=batch))
    return Probe(xs, IMAGES, f"{len(folder)} images from {folder.root}", str(folder.root))


def probe_for(data: str | Path | None, net: Net, **kw) -> Probe | None:
    """``image_probe`` for ``--data DIR``; None (random probes) without it."""
    return image_probe(data, net, **kw) if data else None
