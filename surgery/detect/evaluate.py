"""``surgery eval MODEL... --data DIR`` on a YOLO-format folder: mAP@0.5 and mAP@0.5:0.95 of
each detector on ``DIR/val`` (or all of DIR), with the letterbox, detection thresholds, NMS
and COCO evaluator of training's held-out evaluation (:meth:`surgery.detect.task.DetectionTask.
evaluate`), so the figures are the ones ``surgery train`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from surgery.core.errors import SurgeryError
from surgery.core.net import Net
from surgery.detect.data import Augment
from surgery.detect.heads import net_hw
from surgery.detect.labels import eval_split
from surgery.detect.task import CONF_THRESH, NMS_IOU, DetectionTask
from surgery.detect.shared import is_shared
from surgery.detect.train import darknet_normalization, detector_heads


@dataclass(frozen=True)
class DetectorEval:
    model: str
    input_shape: tuple[int, ...]
    classes: int
    head: int | None  # the head of a shared model measured (None: the whole detector)
    map50: float | None  # None: the folder has no box
    map: float | None  # mAP@0.5:0.95
    detections: int


@dataclass(frozen=True)
class DetectionEvalReport:
    data: str  # the folder measured (DIR/val of a split folder)
    images: int
    boxes: int
    skipped_images: int
    conf_thresh: float
    nms_iou: float
    models: tuple[DetectorEval, ...]

    def to_json(self) -> dict:
        return {"data": self.data, "images": self.images, "boxes": self.boxes, "skipped_images": self.skipped_images,
                "conf_thresh": self.conf_thresh, "nms_iou": self.nms_iou,
                "models": [{"model": m.model, "head": m.head, "input_shape": list(m.input_shape), "classes": m.classes,
                            "map50": m.map50, "map": m.map, "detections": m.detections} for m in self.models]}


def evaluate_detectors(models: Sequence[Net], data: str | Path, *, batch: int = 16, device: str = "cpu",
                       head: int | None = None, progress=None) -> DetectionEvalReport:
    """mAP of every detector of ``models`` on the YOLO folder ``data``; ``head``: of a shared
    multi-head model (:mod:`surgery.detect.shared`), measure head N alone (its outputs, the
    folder's classes against its own) — models that are not shared are measured whole;
    ``progress(done, total, label)`` before each model (library code never prints)."""
    from surgery.train.loop import TrainData

    if not models:
        raise SurgeryError("give at least one model to evaluate")
    if batch < 1:
        raise SurgeryError(f"--batch {batch} must be at least 1")
    plans = []
    if head is not None and not any(is_shared(n) for n in models):
        raise SurgeryError(f"--head {head} picks a head of a shared model (`surgery share`); none of the models is one")
    for net in models:  # every model checked before any image is decoded
        heads, picked = detector_heads(net, data, head if is_shared(net) else None)
        folder = eval_split(data, classes=heads[0].classes)
        shape = tuple(net.input_shape)
        task = DetectionTask(heads, net_hw(net.module, shape), Augment(), max_boxes=max(folder.max_boxes, 1),
                             outputs=picked.outputs if picked is not None else None)
        norm = darknet_normalization(net.metadata, shape[0])
        plans.append((net, picked.index if picked is not None else None, folder,
                      TrainData(folder, folder, shape, norm, task=task)))
    rows = []
    for i, (net, index, folder, td) in enumerate(plans):
        if progress:
            progress(i, len(plans), f"evaluating {net.source}")
        m = net.module.to(device).eval()
        r = td.task.evaluate(m, folder, td, batch=batch, device=device)
        rows.append(DetectorEval(net.source, tuple(net.input_shape), td.task.classes, index, r["map50"], r["map"],
                                 r["detections"]))
    if progress:
        progress(len(plans), len(plans), "evaluated")
    folder = plans[0][2]
    return DetectionEvalReport(str(folder.root.parent), len(folder), folder.num_boxes, len(folder.skipped),
                               CONF_THRESH, NMS_IOU, tuple(rows))
