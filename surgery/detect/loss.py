"""Darknet's ``[yolo]`` layer loss, as a differentiable function whose gradient with respect to
the layer's raw input is exactly minus Darknet's ``l.delta`` (divided by the batch size, as
Darknet divides its learning rate by the batch: ``update_network``).

Followed: pjreddie/darknet ``src/yolo_layer.c`` — ``forward_yolo_layer``, ``get_yolo_box``,
``delta_yolo_box``, ``delta_yolo_class`` — with AlexeyAB/darknet's ``scale_x_y`` (the
logistic x/y scaled by s and shifted by -(s-1)/2 before the deltas are taken). Per image:

1. **Ignore.** Every prediction's box (get_yolo_box) is compared with every truth of the image;
   objectness delta ``0 - obj`` unless the best IoU is ``> ignore_thresh`` (delta 0: neither
   pushed up nor down). Above ``truth_thresh`` (1 by default: never) the prediction becomes a
   positive for its best truth.
2. **Assignment.** Each truth goes to the cell ``(int(x*lw), int(y*lh))`` and to the anchor,
   among *all* of the net's anchors (``l.total``), whose shape has the best IoU with the
   truth's when both are centred at 0 (first best on ties); only if that anchor is in this
   layer's ``mask`` does this layer learn it. There: objectness delta ``1 - obj``; class deltas
   ``[c == class] - p_c`` (delta_yolo_class; a second truth in the same cell and anchor only
   sets its own class to 1: pjreddie's ``if (delta[index])`` branch); box deltas
   ``scale*(tx - x')``, ``scale*(ty - y')``, ``scale*(tw - raw_w)``, ``scale*(th - raw_h)`` with
   ``tx = x*lw - i``, ``tw = log(w*net_w/anchor_w)`` and ``scale = 2 - w*h`` (truth area relative
   to the input); a later truth in the same cell and anchor overwrites the box (the loop order).

Darknet applies ``l.delta`` to the raw input unchanged (``backward_yolo_layer``), so the terms
here are the functions with that gradient: binary cross-entropy on logits for objectness and
classes (d/dz = p - t); for x/y ``scale * s * BCE(z, t')`` with ``t' = (tx + (s-1)/2) / s`` (its
gradient ``scale*(s*sigmoid(z) - (s-1)/2 - tx)`` is the negative delta), less the entropy of
``t'`` so the term is 0 at the target; for w/h ``scale/2 * (raw - t)^2``.

Not followed: Darknet stops reading a label list at a truth whose x is exactly 0 (``if
(!truth.x) break``): here every box counts. A truth at x = 1 lands in the last cell, not outside.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from surgery.detect.boxes import box_iou, cxcywh_to_xyxy
from surgery.detect.heads import YoloHead
from surgery.train.losses import register

TERMS = ("box", "obj", "cls")


def _bce(z: Tensor, t: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(z, t, reduction="none")


def _entropy(t: Tensor) -> Tensor:
    return -(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t))


def anchor_assignment(head: YoloHead, wh: Tensor, net_hw: tuple[int, int]) -> Tensor:
    """The best of *all* the head's anchors for each truth size ``wh`` (..., 2, relative to the
    input): IoU of the shapes centred at 0 (forward_yolo_layer's ``truth_shift``), first best."""
    nh, nw = net_hw
    a = torch.tensor(head.anchors, dtype=wh.dtype, device=wh.device) / torch.tensor([nw, nh], dtype=wh.dtype,
                                                                                       device=wh.device)
    inter = torch.minimum(wh[..., None, 0], a[:, 0]) * torch.minimum(wh[..., None, 1], a[:, 1])
    union = wh[..., None, 0] * wh[..., None, 1] + a[:, 0] * a[:, 1] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    return iou.argmax(-1)


def yolo_loss(head: YoloHead, p: Tensor, targets: Tensor, net_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Darknet's loss of one ``[yolo]`` layer, summed over the batch (see the module docstring).

    ``p``: the layer's raw output (B, masks*(5+classes), H, W); ``targets``: (B, M, 5) rows
    ``class, cx, cy, w, h`` relative to the network input, ``class < 0`` for padding."""
    q = head.split(p)  # (B, A, H, W, 5+C)
    bsz, na, h, w, _ = q.shape
    dev, dt = q.device, q.dtype
    valid = targets[..., 0] >= 0  # (B, M)
    tbox = targets[..., 1:5].to(dt)
    tcls = targets[..., 0].long()

    with torch.no_grad():
        pred = head.boxes(q.detach(), net_hw).reshape(bsz, -1, 4)  # (B, N, 4)
        iou = box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tbox))  # (B, N, M)
        iou = iou.masked_fill(~valid[:, None, :], -1.0)
        best_iou, best_t = iou.max(-1) if iou.shape[-1] else (torch.zeros(bsz, pred.shape[1], device=dev, dtype=dt),
                                                               torch.zeros(bsz, pred.shape[1], device=dev,
                                                                           dtype=torch.long))
        best_iou = best_iou.clamp(min=0)
        n = na * h * w
        obj_t = torch.zeros(bsz * n, device=dev, dtype=dt)
        obj_w = (best_iou <= head.ignore_thresh).to(dt).reshape(-1)  # ignored: no objectness delta
        pos = torch.zeros(bsz * n, device=dev, dtype=torch.bool)
        cls_t = torch.zeros(bsz * n, head.classes, device=dev, dtype=dt)
        box_t = torch.zeros(bsz * n, 4, device=dev, dtype=dt)  # cx, cy, w, h of the truth a positive learns
        # truth_thresh: predictions that already overlap a truth enough learn it (pass 1)
        hit = (best_iou > head.truth_thresh).reshape(-1)
        if bool(hit.any()):
            src = best_t.reshape(-1)[hit]
            bidx = torch.arange(bsz, device=dev).repeat_interleave(n)[hit]
            pos[hit] = True
            obj_t[hit], obj_w[hit] = 1.0, 1.0
            box_t[hit] = tbox[bidx, src]
            cls_t[hit] = F.one_hot(tcls[bidx, src].clamp(min=0), head.classes).to(dt)
        # assignment (pass 2): best anchor over all anchors, if it is one of this layer's
        b_i, t_i = valid.nonzero(as_tuple=True)  # row-major: image, then truth order (Darknet's loop)
        if len(b_i):
            tb = tbox[b_i, t_i]
            best_n = anchor_assignment(head, tb[:, 2:], net_hw)
            lookup = torch.full((len(head.anchors),), -1, dtype=torch.long, device=dev)
            lookup[torch.tensor(head.mask, device=dev)] = torch.arange(na, device=dev)
            a_i = lookup[best_n]
            mine = a_i >= 0
            b_i, t_i, tb, a_i = b_i[mine], t_i[mine], tb[mine], a_i[mine]
            ci = (tb[:, 0] * w).long().clamp(0, w - 1)
            cj = (tb[:, 1] * h).long().clamp(0, h - 1)
            flat = ((b_i * na + a_i) * h + cj) * w + ci
            # class: a position's classes are zero until a truth sets its own to 1, so a second truth
            # in the same cell and anchor adds its class (pjreddie's delta_yolo_class union)
            cls_t[flat, tcls[b_i, t_i]] = 1.0
            # box: the last truth of each position wins
            order = torch.arange(len(flat), device=dev)
            lasts = torch.full((bsz * n,), -1, dtype=torch.long, device=dev)
            lasts.scatter_reduce_(0, flat, order, reduce="amax")
            win = lasts[flat] == order
            box_t[flat[win]] = tb[win]
            pos[flat] = True
            obj_t[flat], obj_w[flat] = 1.0, 1.0

    q = q.reshape(bsz * n, -1)
    obj = (_bce(q[:, 4], obj_t) * obj_w).sum()
    zero = q.sum() * 0.0
    if not bool(pos.any()):
        return {"box": zero, "obj": obj, "cls": zero}
    qp, bt = q[pos], box_t[pos]
    cls = _bce(qp[:, 5:], cls_t[pos]).sum()
    # the cell of each positive (its index in the flattened B x A x H x W grid)
    idx = pos.nonzero(as_tuple=True)[0]
    ci = (idx % w).to(dt)
    cj = ((idx // w) % h).to(dt)
    ai = (idx // (w * h)) % na
    anchors = torch.tensor(head.masked_anchors, dtype=dt, device=dev)[ai]
    nh, nw = net_hw
    scale = 2.0 - bt[:, 2] * bt[:, 3]
    s = head.scale_x_y
    txy = torch.stack((bt[:, 0] * w - ci, bt[:, 1] * h - cj), -1)
    t_prime = ((txy + 0.5 * (s - 1)) / s).clamp(0.0, 1.0)
    xy = (s * (_bce(qp[:, :2], t_prime) - _entropy(t_prime))).sum(-1)
    twh = torch.log(bt[:, 2:4] * torch.tensor([nw, nh], dtype=dt, device=dev) / anchors)
    wh = 0.5 * ((qp[:, 2:4] - twh) ** 2).sum(-1)
    box = (scale * (xy + wh)).sum()
    return {"box": box, "obj": obj, "cls": cls}


@register("yolo", needs=("targets",), summary="Darknet's [yolo] layer loss (box, objectness, classes)")
def detection_loss(heads: Sequence[YoloHead], outputs: Sequence[Tensor], targets: Tensor,
                   net_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Every head's loss summed, per image of the batch (Darknet: learning rate / batch)."""
    if len(outputs) != len(heads):
        raise ValueError(f"{len(outputs)} outputs for {len(heads)} yolo heads")
    bsz = max(int(targets.shape[0]), 1)
    total = {k: outputs[0].new_zeros(()) for k in TERMS}
    for head, p in zip(heads, outputs):
        for k, v in yolo_loss(head, p, targets.to(p.device), net_hw).items():
            total[k] = total[k] + v
    return {k: v / bsz for k, v in total.items()}
