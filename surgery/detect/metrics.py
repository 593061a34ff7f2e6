"""COCO-style mAP through pycocotools (the COCO API's own evaluator, maintained on PyPI).

``mAP@0.5`` is COCO's AP at IoU 0.5 (``stats[1]``), ``mAP@0.5:0.95`` the mean over IoU
0.50, 0.55, .., 0.95 (``stats[0]``): 101-point interpolated precision, at most 100 detections an
image, every box area, averaged over the classes that have ground-truth boxes (COCO's rule: a
class without any is left out of the mean).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAX_DETS = 100


@dataclass(frozen=True)
class MapResult:
    map50: float | None  # None: no ground-truth box to find
    map: float | None  # mAP@0.5:0.95
    images: int
    boxes: int  # ground-truth boxes
    detections: int

    def to_dict(self) -> dict:
        return {"map50": self.map50, "map": self.map, "images": self.images, "boxes": self.boxes,
                "detections": self.detections}


def coco_map(truths: Sequence[np.ndarray], detections: Sequence[np.ndarray], classes: int) -> MapResult:
    """``truths[i]``: (n, 5) rows ``class, x1, y1, x2, y2`` of image i (pixels);
    ``detections[i]``: (k, 6) rows ``x1, y1, x2, y2, score, class``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (t, d) in enumerate(zip(truths, detections)):
        images.append({"id": i + 1})
        for c, x1, y1, x2, y2 in np.asarray(t, dtype=np.float64).reshape(-1, 5):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": 0})
        for x1, y1, x2, y2, s, c in np.asarray(d, dtype=np.float64).reshape(-1, 6):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(s)})
    n_img = len(images)
    if not anns:
        return MapResult(None, None, n_img, 0, len(dets))
    if not dets:
        return MapResult(0.0, 0.0, n_img, len(anns), 0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress; the library never prints
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(classes)]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, MAX_DETS]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return MapResult(max(float(stats[1]), 0.0), max(float(stats[0]), 0.0), n_img, len(anns), len(dets))
