"""Box arithmetic: IoU and non-maximum suppression (torchvision is unavailable here).

Boxes are ``(x1, y1, x2, y2)`` corners unless a name says ``cxcywh``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (..., N, 4) with every box of ``b`` (..., M, 4), xyxy -> (..., N, M).
    Empty boxes have IoU 0 with everything (no division by zero)."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes, highest score first. A box is dropped when its IoU
    with a kept box of higher score is *greater than* ``iou_threshold`` (Darknet's do_nms_sort and
    torchvision.ops.nms both use ``>``). Ties in score keep the lower index first (stable sort)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order]).cpu().numpy()
    n = len(order)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):  # O(n) rows of one vector op each; the IoU matrix is computed once
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category ``idxs`` (as torchvision.ops.batched_nms): boxes of different
    categories never suppress each other. Each category is suppressed on its own (its IoU matrix
    alone: 10 classes x 240 candidates is 10x less work than one 2400 x 2400 matrix), and the kept
    boxes are returned in the order one pass over all of them would keep them: highest score
    first, ties by lower index."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    kept = [members[nms(boxes[members], scores[members], iou_threshold)]
            for members in (torch.nonzero(idxs == c).flatten() for c in torch.unique(idxs))]
    keep = torch.cat(kept)
    return keep[torch.argsort(rank[keep])]
