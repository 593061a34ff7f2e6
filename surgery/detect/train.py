"""``surgery train MODEL --data DIR`` for detectors: Darknet ``[yolo]`` heads trained on a
YOLO-format folder with Darknet's loss (:mod:`surgery.detect.loss`), through the one loop
(:func:`surgery.train.run.run`) — optimizer, schedule, ``--freeze`` (weights and BatchNorm
statistics of the frozen layers kept exactly), run directories, resume and torchrun as for
every other training — and held-out mAP before, after every epoch and after
(:mod:`surgery.detect.metrics`; under torchrun every process detects on its share of the
held-out images and all compute the mAP of all of them).

The result is a normal checkpoint whose recipe gains a ``train`` step (as ``surgery train`` on a
classifier), recording the folder's digest, the heads' loss settings and the frozen layers.
Images are fed as Darknet feeds them — RGB in 0..1, no mean or standard deviation — unless the
checkpoint records a normalisation (then that one, as for every model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from surgery.core.errors import SurgeryError
from surgery.core.net import Net, Step
from surgery.detect.data import Augment
from surgery.detect.heads import YoloHead, net_hw, yolo_heads
from surgery.detect.shared import SharedHead, head_frozen, pick_head
from surgery.detect.labels import is_yolo_folder, yolo_folders
from surgery.detect import labels as dlabels
from surgery.detect.task import DetectionTask
from surgery.heal import HealConfig, HealReport, frozen_selection
from surgery.train import data as tdata
from surgery.train.loop import Hooks, TrainData
from surgery.train.run import run


def wants_detection(student: Net, data: str | Path | None) -> bool:
    """Whether ``surgery train STUDENT --data DATA`` is detection training: a detector, or a
    YOLO-format folder (then :func:`train_detector` says what does not fit)."""
    return bool(yolo_heads(student.module)) or (data is not None and is_yolo_folder(data))


def darknet_normalization(meta: Mapping | None, channels: int) -> tdata.Normalization:
    n = (meta or {}).get("normalization")
    if isinstance(n, dict):
        return tdata.Normalization.from_metadata(meta, channels)
    return tdata.Normalization((0.0,) * channels, (1.0,) * channels)


def detector_heads(student: Net, data, head: int | None = None) -> tuple[tuple[YoloHead, ...], SharedHead | None]:
    """(the [yolo] heads to train or evaluate, the shared model's head they are or None)."""
    picked = pick_head(student, head)
    heads = picked.yolo if picked is not None else yolo_heads(student.module)
    if not heads:
        what = f"head {picked.describe()}" if picked is not None else student.source
        raise SurgeryError(f"{data} is a YOLO-format detection folder (images/ + labels/) but {what} has no "
                           "Darknet [yolo] heads to train on it; give a YOLO detector (a Darknet cfg with [yolo] "
                           "layers, zoo:yolov3, zoo:yolov3_tiny, or one retargeted from them)")
    if not is_yolo_folder(data):
        raise SurgeryError(f"{student.source} is a detector ([yolo] heads at layers "
                           f"{', '.join(str(h.index) for h in heads)}): --data needs a YOLO-format folder "
                           f"(images/*.jpg + labels/*.txt, or train/ and val/ of them), not {data}; "
                           "`surgery data synth-text DIR` writes one")
    if len({h.classes for h in heads}) > 1:
        raise SurgeryError(f"{student.source} has [yolo] heads for different class counts "
                           f"({', '.join(f'layer {h.index}: {h.classes}' for h in heads)}), a shared multi-task "
                           "net; train each task's own model, then `surgery share` them")
    return heads, picked


def _plan(student: Net, cfg: HealConfig, head: int | None = None):
    heads, picked = detector_heads(student, cfg.data, head)
    student.require_editable("train")
    cfg.train.validate()
    shape = tuple(student.input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise SurgeryError(f"{student.source} takes {list(shape)}; detection training needs an image model "
                           "(1 or 3 x H x W)")
    if cfg.losses.kinds != ("ce",):
        raise SurgeryError(f"--loss {','.join(cfg.losses.kinds)}: a detector trains with Darknet's [yolo] loss; "
                           "drop --loss")
    if cfg.match:
        raise SurgeryError("--match pairs layers for distillation; detection training has no teacher")
    train_f, val_f = yolo_folders(cfg.data, cfg.val, classes=heads[0].classes)
    if train_f.num_boxes == 0:
        raise SurgeryError(f"{train_f.root.parent}: none of its {len(train_f)} label files holds a box; nothing to "
                           "learn (labels/<name>.txt: one 'class cx cy w h' line per box)")
    frozen_names, frozen_layers, frozen_params = frozen_selection(student.module, cfg.freeze)
    if picked is not None:  # one head of a shared model: the backbone and the other heads kept exactly
        names, layers, _ = head_frozen(student, picked)
        frozen_names = tuple(dict.fromkeys(frozen_names + names))
        frozen_layers = tuple(sorted(set(frozen_layers) | set(layers)))
        frozen_params = sum(p.numel() for n in frozen_names for p in student.module.get_submodule(n).parameters())
    task = DetectionTask(heads, net_hw(student.module, shape), Augment(flip=cfg.flip),
                         max_boxes=max(train_f.max_boxes, val_f.max_boxes, 1),
                         outputs=picked.outputs if picked is not None else None)
    norm = darknet_normalization(student.metadata, shape[0])
    data = TrainData(train_f, val_f, shape, norm, task=task)
    data.validate()
    return data, task, frozen_names, frozen_layers, frozen_params, picked


def loss_settings(heads) -> dict[str, Any]:
    h = heads[0]
    return {"yolo": {"heads": len(heads), "ignore_thresh": h.ignore_thresh, "truth_thresh": h.truth_thresh,
                     "scale_x_y": h.scale_x_y}}


def train_detector(student: Net, cfg: HealConfig, *, run_dir: str | Path | None = None,
                   run_config: Mapping[str, Any] | None = None, resume: bool = False, force: bool = False,
                   hooks: Hooks | None = None, interrupt=None, head: int | None = None) -> tuple[Net, HealReport]:
    """Train ``student``'s [yolo] heads on the YOLO folder ``cfg.data`` (see the module
    docstring); ``student`` is not mutated. Run directories as :func:`surgery.heal.heal`.
    ``head``: train head N of a shared multi-head model (:mod:`surgery.detect.shared`) alone —
    every other layer (the shared backbone, the other heads) kept exactly."""
    data, task, frozen_names, frozen_layers, frozen_params, picked = _plan(student, cfg, head)
    digest = dlabels.digest(data.train, data.val)
    ran = run(student.module, task.loss, data, cfg.train, frozen=frozen_names, run_dir=run_dir, run_config=run_config,
              inputs=[cfg.data, cfg.val, student.source], resume=resume, force=force, hooks=hooks, interrupt=interrupt)
    result, before, after = ran.result, dict(ran.before), dict(ran.after)
    losses = loss_settings(task.heads)
    step = Step("train", {
        "teacher": None, "data": str(cfg.data), "data_sha256": digest, "train_images": len(data.train),
        "losses": losses, "pairs": [], "frozen_layers": list(frozen_layers), **result.recipe_fields(cfg.train),
        **({"head": picked.index} if picked is not None else {}),
    })
    meta = {**dict(student.metadata), "normalization": data.norm.to_dict()}
    out = student.evolve(result.module, step, metadata=meta)
    skipped = data.train.skipped + data.val.skipped + result.undecodable
    rep = HealReport(
        model=student.source, teacher=None, op="train", data=str(cfg.data), data_sha256=digest,
        train_images=len(data.train), val_images=len(data.val), skipped_images=len(set(skipped)),
        skipped=tuple(sorted(set(skipped)))[:5], losses=losses, pairs=(), frozen_layers=frozen_layers,
        frozen_params=frozen_params, before=before, after=after, teacher_eval={},
        **result.report_fields(cfg.train, run_dir))
    return out, rep
