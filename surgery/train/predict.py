"""Model outputs over an image folder — the project's one evaluation loop — and the held-out
figures of training and ``surgery eval``.

:func:`predict` runs a model (and a teacher) in eval mode over a folder, decoded and
normalised as evaluation feeds it (no augmentation), and returns a *table*: one row per image,
the columns a ``take(outputs, teacher_outputs, sample)`` callback keeps (per-image values: a
score, a KL, whether the top-1 agrees), in folder order. Under torchrun each process takes every
world-th image from its rank and the tables are gathered, so every process holds the whole
table and the figures computed from it equal the one-process ones. Only per-image values travel,
never whole outputs (a detector's head maps would not fit).

:func:`evaluate` is the classification/distillation measure every training command reports
(heal, ``surgery train``, ``surgery eval``); OnionNet's is :func:`surgery.onion.train.heldout`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from surgery.core.graph import output_tensors
from surgery.train import dist
from surgery.train.data import FolderDataset, ImageFolder, TrainData, prepare

# (model outputs, teacher outputs or None, the collated sample) -> per-image columns (first dim = batch)
Take = Callable[[tuple[Tensor, ...], "tuple[Tensor, ...] | None", Mapping], Mapping[str, Tensor]]
# (model, teacher or None, the run's processes) -> held-out figures: what a run reports before,
# after every epoch and after (every process calls it; every process gets the same figures)
Measure = Callable[[nn.Module, "nn.Module | None", dist.Dist], Mapping[str, Any]]


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s weights live (CPU for a module without any)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def batches(folder, data: TrainData, *, batch: int = 256, device=None,
            d: dist.Dist = dist.SINGLE) -> Iterator[tuple[Tensor, Mapping, Tensor]]:
    """``(inputs, sample, positions)`` over ``d``'s share of ``folder`` (every world-th image from
    its rank; all of it for one process): decoded at the model's size, not augmented, normalised
    (a task — detection — feeds its own way); ``positions`` are the images' places in the folder."""
    device = device if device is not None else "cpu"
    task = data.task
    ds = task.dataset(folder, data.shape, train=False) if task is not None else FolderDataset(folder, data.shape,
                                                                                              train=False)
    mine = range(d.rank, len(ds), d.world)
    loader = DataLoader(Subset(ds, mine) if d.distributed else ds, batch_size=batch, shuffle=False, num_workers=0)
    done = 0
    for sample in loader:
        if task is not None:
            x = task.batch(sample, data, train=False, device=device).images
        else:
            x = prepare(sample, data.norm, data.shape[1:], train=False, device=device)
        n = x.shape[0]
        yield x, sample, torch.tensor(mine[done:done + n], dtype=torch.long)
        done += n


def outputs_of(s, t, sample) -> dict[str, Tensor]:
    """The default ``take``: every output tensor (``output0``, ...) and the teacher's (``teacher0``...)."""
    row = {f"output{i}": o for i, o in enumerate(s)}
    row.update({f"teacher{i}": o for i, o in enumerate(t or ())})
    return row


@torch.no_grad()
def predict(model: nn.Module, folder, data: TrainData, *, teacher: nn.Module | None = None, take: Take = outputs_of,
            batch: int = 256, device=None, d: dist.Dist = dist.SINGLE) -> dict[str, Tensor]:
    """The per-image table of ``model`` (and ``teacher``) over ``folder`` (see the module
    docstring): the columns ``take`` returns, on CPU, plus ``position`` (the image's place in the
    folder) and ``index`` (the sample it was read from), rows in folder order. A column some batch
    or process lacks is left out. ``device``: where the inputs go (default: the model's)."""
    device = device if device is not None else device_of(model)
    modes = [(m, m.training) for m in (model, teacher) if m is not None]
    for m, _ in modes:
        m.eval()
    parts = []
    try:
        for x, sample, pos in batches(folder, data, batch=batch, device=device, d=d):
            s = output_tensors(model(x))
            t = output_tensors(teacher(x.to(device_of(teacher)))) if teacher is not None else None
            row = {k: v.detach().cpu() for k, v in take(s, t, sample).items()}
            row.update(position=pos, index=torch.as_tensor(sample["index"]).long())
            parts.append(row)
    finally:
        for m, was in modes:
            m.train(was)
    return _merge(dist.gather(_cat(parts), d))


def _cat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if not parts:
        return {}
    keys = set.intersection(*(set(p) for p in parts))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k in keys}


def _merge(tables: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Every process's rows in one table, in folder order."""
    tables = [t for t in tables if t]
    if not tables:
        return {"position": torch.zeros(0, dtype=torch.long), "index": torch.zeros(0, dtype=torch.long)}
    keys = set.intersection(*(set(t) for t in tables))
    cat = {k: torch.cat([t[k] for t in tables]) for k in tables[0] if k in keys}
    order = torch.argsort(cat["position"], stable=True)
    return {k: v[order] for k, v in cat.items()}


# ----------------------------------------------------------------------------- the classification measure


@torch.no_grad()
def evaluate(model: nn.Module, teacher: nn.Module | None, data: TrainData, folder: ImageFolder | None = None, *,
             batch: int = 256, device=None, d: dist.Dist = dist.SINGLE) -> dict[str, Any]:
    """Held-out figures: ``kl_to_teacher`` (mean KL(teacher || model) of softmax outputs, nats),
    ``top1_agreement`` with the teacher, and ``accuracy`` when the folder is labelled (and the
    model has an output per class); for outputs that are not (B, classes) logits,
    ``mse_to_teacher`` instead. ``folder``: default the data's held-out folder. A task (detection)
    measures itself (:meth:`surgery.detect.task.DetectionTask.evaluate`, every process its share)."""
    folder = folder if folder is not None else data.val
    if folder is None:
        return {}
    if data.task is not None:
        return data.task.evaluate(model, folder, data, batch=batch, device=device, d=d)
    classes = len(folder.classes) if folder.labels is not None else None

    def take(s, t, sample) -> dict[str, Tensor]:
        logits, row = s[0], {}
        if logits.ndim == 2 and len(s) == 1:  # class logits
            pred = logits.argmax(1)
            row["classifier"] = torch.ones_like(pred, dtype=torch.bool)
            if classes is not None and logits.shape[1] >= classes:
                row["correct"] = pred.cpu() == sample["label"]
            if t is not None:
                row["kl"] = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(t[0], 1), reduction="none",
                                     log_target=True).sum(1)
                row["agree"] = pred == t[0].argmax(1)
        elif t is not None:  # e.g. a detector's raw heads: mean over outputs of each image's MSE
            row["mse"] = torch.stack([(a - b).pow(2).flatten(1).mean(1) for a, b in zip(s, t)]).mean(0)
        return row

    tab = predict(model, folder, data, teacher=teacher, take=take, batch=batch, device=device, d=d)
    n = len(tab["position"])
    out: dict[str, Any] = {"images": n}
    if n == 0:
        return out
    if "classifier" in tab:
        if teacher is not None:
            out["kl_to_teacher"] = float(tab["kl"].double().sum()) / n
            out["top1_agreement"] = int(tab["agree"].sum()) / n
        if "correct" in tab:
            out["accuracy"] = int(tab["correct"].sum()) / n
    elif teacher is not None:
        out["mse_to_teacher"] = float(tab["mse"].double().sum()) / n
    return out


def score(ev: Mapping[str, Any]) -> tuple[str, float] | None:
    """The held-out figure a run is judged by, higher = better, with its name: KL to the teacher
    (negated) when there is one, else accuracy, else MSE to the teacher (negated), else a detector's
    mAP@0.5 (:mod:`surgery.detect.metrics`)."""
    for key, sign in (("kl_to_teacher", -1.0), ("accuracy", 1.0), ("mse_to_teacher", -1.0), ("map50", 1.0)):
        if ev.get(key) is not None:
            return key, sign * float(ev[key])
    return None
