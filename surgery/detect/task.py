"""Detection in the one training loop: what :class:`surgery.train.loop.TrainData` carries as its
``task`` so the loop reads YOLO folders, feeds targets to Darknet's loss and evaluates mAP —
the loop itself stays the same loop (optimizer, schedule, freezing, run directories, DDP).

The loop calls three methods: ``dataset(folder, shape, train=, seed=)`` (a torch Dataset whose
samples collate), ``batch(sample, data, train=, device=)`` (a :class:`~surgery.train.loop.Batch`
with ``targets``) and ``evaluate(model, folder, data, batch=, device=)`` (held-out metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from surgery.core.graph import output_tensors
from surgery.detect.boxes import batched_nms, cxcywh_to_xyxy
from surgery.detect.data import Augment, DetectionDataset, prepare
from surgery.detect.heads import YoloHead
from surgery.detect.labels import DetectionFolder
from surgery.detect.loss import detection_loss
from surgery.detect.metrics import MAX_DETS, coco_map
from surgery.train import dist
from surgery.train.loop import Batch
from surgery.train.predict import predict

CONF_THRESH = 0.005  # Darknet's validate_detector_map / detector map: thresh .005
NMS_IOU = 0.45  # do_nms_sort nms=.45
EVAL_BATCH = 16  # images a held-out forward pass takes at most (a YOLOv3 at 416 is large)
PRE_NMS = 3000  # candidates an image keeps before NMS (the best by score): bounds its IoU matrix


@dataclass(frozen=True)
class DetectionTask:
    heads: tuple[YoloHead, ...]
    net_hw: tuple[int, int]
    augment: Augment = field(default_factory=Augment)
    max_boxes: int = 1  # targets per image the samples are padded to (the folders' most)
    conf_thresh: float = CONF_THRESH
    nms_iou: float = NMS_IOU
    outputs: tuple[int, int] | None = None  # a shared model: [start, stop) of its outputs that are these heads'

    @property
    def classes(self) -> int:
        return self.heads[0].classes

    def head_outputs(self, out) -> list[Tensor]:
        """The model's output tensors that belong to :attr:`heads` (all, unless :attr:`outputs`)."""
        t = output_tensors(out)
        return t if self.outputs is None else t[self.outputs[0]:self.outputs[1]]

    # -- what the loop calls
    def dataset(self, folder: DetectionFolder, shape, *, train: bool, seed: int = 0) -> DetectionDataset:
        return DetectionDataset(folder, shape, train=train, seed=seed, augment=self.augment, max_boxes=self.max_boxes)

    def batch(self, sample: dict, data, *, train: bool, device):
        x = prepare(sample, data.norm, train=train, device=device)
        return Batch(x, None, sample["index"], targets=sample["targets"].to(device))

    def loss(self, student, teacher, batch) -> dict[str, Tensor]:
        return detection_loss(self.heads, self.head_outputs(student.output), batch.targets, self.net_hw)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, folder: DetectionFolder | None, data, *, batch: int = 16,
                 device=None, d: dist.Dist = dist.SINGLE) -> dict[str, Any]:
        """mAP@0.5 and mAP@0.5:0.95 on ``folder`` (letterboxed, no augmentation), boxes compared in
        the original image's pixels. Under torchrun every process detects on its share of the images
        (:func:`surgery.train.predict.predict`: each image's detections, padded to ``MAX_DETS`` rows,
        and their count) and computes the mAP of all of them — the one-process figures."""
        if folder is None:
            return {}

        def take(s, t, sample) -> dict[str, Tensor]:
            found = self.detect(self.head_outputs(s))
            dets = torch.zeros(len(found), MAX_DETS, 6, dtype=torch.float64)
            for k, det in enumerate(found):
                r, dx, dy = (float(v) for v in sample["letterbox"][k])
                ih, iw = (int(v) for v in sample["size"][k])
                det = det.cpu().double()
                det[:, [0, 2]] = ((det[:, [0, 2]] - dx) / r).clip(0, iw)
                det[:, [1, 3]] = ((det[:, [1, 3]] - dy) / r).clip(0, ih)
                dets[k, :len(det)] = det
            return {"dets": dets, "count": torch.tensor([len(det) for det in found]), "size": sample["size"]}

        tab = predict(model, folder, data, take=take, batch=min(batch, EVAL_BATCH), device=device, d=d)
        truths, dets = [], []
        rows = zip(tab["index"].tolist(), tab["size"].tolist(), tab["dets"], tab["count"].tolist()) if "dets" in tab \
            else ()
        for index, (ih, iw), found, n in rows:
            dets.append(found[:n].numpy())
            b = folder.boxes[index].astype(np.float64)
            truths.append(np.stack([b[:, 0], (b[:, 1] - b[:, 3] / 2) * iw, (b[:, 2] - b[:, 4] / 2) * ih,
                                    (b[:, 1] + b[:, 3] / 2) * iw, (b[:, 2] + b[:, 4] / 2) * ih], -1))
        return coco_map(truths, dets, self.classes).to_dict()

    def detect(self, outputs: Sequence[Tensor]) -> list[Tensor]:
        """Per image (k, 6): x1, y1, x2, y2 (input pixels), score, class — Darknet's detection
        (score = objectness x class probability above ``conf_thresh``, every class of a box a
        candidate), then NMS per class at ``nms_iou`` (over the ``PRE_NMS`` best candidates), the ``MAX_DETS`` best kept."""
        nh, nw = self.net_hw
        parts = [h.decode(p, self.net_hw) for h, p in zip(self.heads, outputs)]
        boxes = torch.cat([b for b, _, _ in parts], 1)
        scores = torch.cat([o[..., None] * c for _, o, c in parts], 1)  # (B, N, classes)
        scale = torch.tensor([nw, nh, nw, nh], dtype=boxes.dtype, device=boxes.device)
        out = []
        for b in range(boxes.shape[0]):
            n_i, c_i = (scores[b] > self.conf_thresh).nonzero(as_tuple=True)
            xyxy = cxcywh_to_xyxy(boxes[b, n_i]) * scale
            s = scores[b, n_i, c_i]
            if len(s) > PRE_NMS:
                top = torch.topk(s, PRE_NMS).indices
                xyxy, s, c_i = xyxy[top], s[top], c_i[top]
            keep = batched_nms(xyxy, s, c_i, self.nms_iou)[:MAX_DETS]
            out.append(torch.cat([xyxy[keep], s[keep, None], c_i[keep, None].to(xyxy.dtype)], 1))
        return out
