"""What a Darknet ``[yolo]`` layer says about training and decoding, read from the built
network (:class:`zoo.darknet.layers.YoloLayer` keeps the section's options), and the decoding
of its raw output into boxes.

Options read, with Darknet's defaults (pjreddie/darknet ``parser.c`` ``parse_yolo``):
``classes`` (20), ``num`` and ``anchors`` (all of the net's anchors: assignment picks the best
of *all* of them), ``mask``, ``ignore_thresh`` (.5), ``truth_thresh`` (1), and AlexeyAB's
``scale_x_y`` (1). Options that change the loss into one this module does not compute
(``iou_loss`` other than mse, ``focal_loss``, ``label_smooth_eps``, ``iou_thresh`` < 1,
``new_coords``, normalisers other than 1) are refused with the layer named, rather than
silently trained with another loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError

# option -> the value at which it leaves the loss as computed here (AlexeyAB's defaults differ for
# the normalisers: a cfg that sets none of them trains as pjreddie's yolo_layer.c does)
_UNSUPPORTED = {"iou_loss": "mse", "focal_loss": "0", "label_smooth_eps": "0", "iou_thresh": "1", "new_coords": "0",
                "iou_normalizer": "1", "cls_normalizer": "1", "obj_normalizer": "1"}


@dataclass(frozen=True)
class YoloHead:
    """One ``[yolo]`` layer: ``anchors`` are all of the layer's anchors in input pixels (w, h);
    ``mask`` the ones this layer predicts with, in output channel order."""

    index: int  # Darknet layer index
    classes: int
    anchors: tuple[tuple[float, float], ...]
    mask: tuple[int, ...]
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    scale_x_y: float = 1.0

    @property
    def masked_anchors(self) -> tuple[tuple[float, float], ...]:
        return tuple(self.anchors[m] for m in self.mask)

    def split(self, p: Tensor) -> Tensor:
        """Raw output (B, masks*(5+classes), H, W) -> (B, masks, H, W, 5+classes)."""
        b, c, h, w = p.shape
        if c != len(self.mask) * (self.classes + 5):
            raise SurgeryError(f"yolo layer {self.index}: output has {c} channels, not {len(self.mask)} x "
                               f"({self.classes} + 5)")
        return p.reshape(b, len(self.mask), self.classes + 5, h, w).permute(0, 1, 3, 4, 2)

    def xy(self, z: Tensor) -> Tensor:
        """Cell offsets from raw x/y: logistic, then AlexeyAB's scale_x_y (forward_yolo_layer's
        ``scal_add_cpu(..., scale_x_y, -0.5*(scale_x_y - 1), ...)``)."""
        s = self.scale_x_y
        return torch.sigmoid(z) * s - 0.5 * (s - 1)

    def boxes(self, q: Tensor, net_hw: tuple[int, int]) -> Tensor:
        """Boxes (B, masks, H, W, 4) as cx, cy, w, h relative to the network input (0..1), from the
        split raw output ``q`` — Darknet's get_yolo_box: x = (i + x') / lw, w = exp(tw) anchor_w / net_w."""
        _, a, h, w, _ = q.shape
        nh, nw = net_hw
        gy, gx = torch.meshgrid(torch.arange(h, device=q.device, dtype=q.dtype),
                                torch.arange(w, device=q.device, dtype=q.dtype), indexing="ij")
        anchors = torch.tensor(self.masked_anchors, dtype=q.dtype, device=q.device).view(1, a, 1, 1, 2)
        xy = self.xy(q[..., :2])
        cx = (xy[..., 0] + gx) / w
        cy = (xy[..., 1] + gy) / h
        wh = torch.exp(q[..., 2:4]) * anchors / torch.tensor([nw, nh], dtype=q.dtype, device=q.device)
        return torch.stack((cx, cy, wh[..., 0], wh[..., 1]), -1)

    def decode(self, p: Tensor, net_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """(boxes (B, N, 4) cxcywh relative to the input, objectness (B, N), class probabilities
        (B, N, classes)) with N = masks*H*W, after the logistic (get_yolo_detections)."""
        q = self.split(p)
        b = q.shape[0]
        boxes = self.boxes(q, net_hw).reshape(b, -1, 4)
        obj = torch.sigmoid(q[..., 4]).reshape(b, -1)
        cls = torch.sigmoid(q[..., 5:]).reshape(b, -1, self.classes)
        return boxes, obj, cls


def _floats(value, where: str) -> list[float]:
    try:
        return [float(v) for v in str(value).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise SurgeryError(f"{where}: {value!r} is not a list of numbers") from None


def yolo_heads(module: nn.Module) -> tuple[YoloHead, ...]:
    """The ``[yolo]`` heads of a Darknet network in output order; () for anything else (a
    classifier, a net with ``[region]``/``[detection]`` outputs)."""
    from surgery.core.graph import is_darknet

    if not is_darknet(module):
        return ()
    outputs = [l for l in module.layers if l.section in ("yolo", "region", "detection")]
    if not outputs or any(l.section != "yolo" for l in outputs):
        return ()
    return tuple(yolo_head(l, l.index, getattr(module, "source", "model")) for l in outputs)


def yolo_head(layer: nn.Module, index: int, source: str = "model") -> YoloHead:
    """The :class:`YoloHead` of one built ``[yolo]`` layer (``index``: its layer index, as the
    messages name it; ``source``: the model's name)."""
    where = f"{source}: yolo layer {index}"
    opts = layer.options
    for k, neutral in _UNSUPPORTED.items():
        if k in opts and str(opts[k]).strip() != neutral and _num(opts[k]) != _num(neutral):
            raise SurgeryError(f"{where} sets {k}={opts[k]}; training implements Darknet's mse box loss without "
                               f"it (remove the option or set {k}={neutral})")
    flat = _floats(opts["anchors"], where) if "anchors" in opts else [0.5] * (2 * layer.num)
    anchors = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(layer.num))
    return YoloHead(index, layer.classes, anchors, tuple(layer.mask), float(opts.get("ignore_thresh", 0.5)),
                    float(opts.get("truth_thresh", 1.0)), float(opts.get("scale_x_y", 1.0)))


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def net_hw(module: nn.Module, input_shape) -> tuple[int, int]:
    """The (height, width) the heads' anchors are relative to: the network input."""
    return int(input_shape[1]), int(input_shape[2])
