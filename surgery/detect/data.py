"""Detection samples: Pillow decoding, Darknet's letterbox, box-aware augmentation by kornia.

**Letterbox** (Darknet's ``letterbox_image``): the image is scaled by ``min(W/w, H/h)`` to fit
the network input without changing its aspect, centred, the rest filled with grey 0.5; boxes
follow. Evaluation maps predictions back through the same scale and offset.

**Augmentation** (training only), drawn per sample from a generator seeded by (seed, epoch,
sample index) — as :mod:`surgery.train.data` draws its crops, so a sample is augmented the same
way however the data is split between processes and after a resume — and applied to whole
batches by kornia on the training device: an affine warp (``kornia.geometry.transform.
warp_affine``; scale jitter ``1 ± scale_jitter`` about the centre, a shift of up to
``translate`` of the side, a horizontal flip with probability 1/2) with grey fill, and Darknet's
colour distortion (``random_distort_image``: hue shifted by up to ±``hue`` of a turn, saturation
and exposure scaled by ``rand_scale``: 1..s or its inverse) through ``kornia.color``'s HSV. The
boxes are moved by the same affine here, clipped to the image, and dropped when less than
:data:`MIN_VISIBLE` of a box (or under a pixel of width or height) is left.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from surgery.core.errors import SurgeryError
from surgery.detect.labels import DetectionFolder
from surgery.train.data import first_decodable, read_image

MIN_VISIBLE = 0.3
GREY = 0.5


@dataclass(frozen=True)
class Augment:
    flip: bool = True
    scale_jitter: float = 0.25  # Darknet's yolov3 cfgs: jitter=.3 (of the crop); here the scale range
    translate: float = 0.1
    hue: float = 0.1  # yolov3.cfg [net] hue=.1
    saturation: float = 1.5  # saturation=1.5
    exposure: float = 1.5  # exposure=1.5

    def validate(self) -> None:
        if not 0 <= self.scale_jitter < 1:
            raise SurgeryError(f"scale jitter {self.scale_jitter} must be in [0, 1)")
        if not 0 <= self.translate < 1:
            raise SurgeryError(f"translate {self.translate} must be in [0, 1)")


def _rand_scale(rng: random.Random, s: float) -> float:
    v = rng.uniform(1.0, s)
    return v if rng.random() < 0.5 else 1.0 / v


def letterbox_params(ih: int, iw: int, h: int, w: int) -> tuple[float, int, int, int, int]:
    """(scale, new width, new height, x offset, y offset) of Darknet's letterbox."""
    r = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * r)), max(1, round(ih * r))
    return r, nw, nh, (w - nw) // 2, (h - nh) // 2


class DetectionDataset(Dataset):
    """Letterboxed samples of a :class:`DetectionFolder` at the model's C x H x W (uint8).

    Keys: ``(index, epoch)`` (:class:`surgery.train.data.EpochSampler`) or plain indices. A
    sample: ``image`` (uint8 C x H x W, letterboxed), ``targets`` (max_boxes x 5: class, cx, cy,
    w, h relative to the input after augmentation; class -1 pads), ``affine`` (2 x 3, pixel
    centres, source -> destination; the identity when not training), ``hsv`` (hue shift in
    turns, saturation and exposure factors), ``letterbox`` (scale, x offset, y offset),
    ``size`` (original h, w), ``index``, ``undecodable`` (as FolderDataset), ``label`` (-1)."""

    def __init__(self, folder: DetectionFolder, shape: tuple[int, int, int], *, train: bool, seed: int = 0,
                 augment: Augment | None = None, max_boxes: int | None = None):
        self.folder, self.shape, self.train, self.seed = folder, tuple(shape), train, seed
        self.augment = augment or Augment()
        self.max_boxes = max(1, max_boxes if max_boxes is not None else folder.max_boxes)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        c, h, w = self.shape
        im, index, bad = first_decodable(self.folder, index, lambda path: read_image(path, c))
        from PIL import Image

        iw, ih = im.size
        r, nw, nh, dx, dy = letterbox_params(ih, iw, h, w)
        canvas = Image.new(im.mode, (w, h), (128,) * len(im.getbands()) if len(im.getbands()) > 1 else 128)
        canvas.paste(im.resize((nw, nh), Image.BILINEAR), (dx, dy))
        arr = np.asarray(canvas, dtype=np.uint8)
        image = torch.from_numpy(arr.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        boxes = self.folder.boxes[index].astype(np.float64).copy()  # class, cx, cy, w, h (image-relative)
        # to input pixels (edges), letterboxed
        xyxy = np.stack([(boxes[:, 1] - boxes[:, 3] / 2) * iw * r + dx, (boxes[:, 2] - boxes[:, 4] / 2) * ih * r + dy,
                         (boxes[:, 1] + boxes[:, 3] / 2) * iw * r + dx, (boxes[:, 2] + boxes[:, 4] / 2) * ih * r + dy],
                        -1) if len(boxes) else np.zeros((0, 4))
        a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # edge-space affine: x' = a @ (x, y, 1)
        hsv = np.array([0.0, 1.0, 1.0])
        if self.train:
            rng = random.Random(f"{self.seed}:{epoch}:{index}")
            aug = self.augment
            s = rng.uniform(1 - aug.scale_jitter, 1 + aug.scale_jitter)
            tx, ty = rng.uniform(-aug.translate, aug.translate) * w, rng.uniform(-aug.translate, aug.translate) * h
            flip = aug.flip and rng.random() < 0.5
            sx = -s if flip else s
            a = np.array([[sx, 0.0, w / 2 - sx * w / 2 + tx], [0.0, s, h / 2 - s * h / 2 + ty]])
            hsv = np.array([rng.uniform(-aug.hue, aug.hue), _rand_scale(rng, aug.saturation),
                            _rand_scale(rng, aug.exposure)])
        keep_cls, keep_xyxy = boxes[:, 0], xyxy
        if self.train and len(boxes):
            x1, x2 = a[0, 0] * xyxy[:, 0] + a[0, 2], a[0, 0] * xyxy[:, 2] + a[0, 2]
            y1, y2 = a[1, 1] * xyxy[:, 1] + a[1, 2], a[1, 1] * xyxy[:, 3] + a[1, 2]
            moved = np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], -1)
            clipped = np.stack([moved[:, 0].clip(0, w), moved[:, 1].clip(0, h), moved[:, 2].clip(0, w),
                                moved[:, 3].clip(0, h)], -1)
            area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
            cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
            ok = (cw >= 1) & (ch >= 1) & (cw * ch >= MIN_VISIBLE * area)
            keep_cls, keep_xyxy = boxes[ok, 0], clipped[ok]
        targets = np.full((self.max_boxes, 5), -1.0, dtype=np.float32)
        n = min(len(keep_cls), self.max_boxes)
        if n:
            k = keep_xyxy[:n]
            targets[:n, 0] = keep_cls[:n]
            targets[:n, 1] = (k[:, 0] + k[:, 2]) / 2 / w
            targets[:n, 2] = (k[:, 1] + k[:, 3]) / 2 / h
            targets[:n, 3] = (k[:, 2] - k[:, 0]) / w
            targets[:n, 4] = (k[:, 3] - k[:, 1]) / h
        # warp_affine works on pixel centres: u = x - 1/2, so u' = A u + (b + A 1/2 - 1/2)
        centre = a.copy()
        centre[:, 2] = a[:, 2] + a[:, :2].sum(1) * 0.5 - 0.5
        return {"image": image, "targets": torch.from_numpy(targets),
                "affine": torch.from_numpy(centre.astype(np.float32)),
                "hsv": torch.from_numpy(hsv.astype(np.float32)),
                "letterbox": torch.tensor([r, dx, dy], dtype=torch.float64),
                "size": torch.tensor([ih, iw]), "index": index, "undecodable": bad, "label": -1}


def prepare(sample: dict, norm, *, train: bool, device) -> torch.Tensor:
    """A collated batch -> float images on ``device``: warped and colour-distorted (training),
    then normalised with ``norm``."""
    from kornia.enhance import normalize

    x = sample["image"].to(device, non_blocking=True).float().div_(255.0)  # (B, C, H, W)
    if train:
        from kornia.geometry.transform import warp_affine

        b, c, h, w = x.shape
        fill = torch.full((c,), GREY, device=device)
        x = warp_affine(x, sample["affine"].to(device), (h, w), padding_mode="fill", fill_value=fill)
        if c == 3:
            x = _distort(x, sample["hsv"].to(device))
    mean = torch.tensor(norm.mean, device=device)
    std = torch.tensor(norm.std, device=device)
    return normalize(x, mean, std)


def _distort(x: torch.Tensor, hsv: torch.Tensor) -> torch.Tensor:
    """Darknet's distort_image: hue + dhue (turns, wrapped), saturation * s, value * e."""
    import math

    from kornia.color import hsv_to_rgb, rgb_to_hsv

    y = rgb_to_hsv(x.clamp(0, 1))  # hue in radians 0..2pi
    two_pi = 2 * math.pi
    hue = torch.remainder(y[:, 0] + hsv[:, 0, None, None] * two_pi, two_pi)
    sat = (y[:, 1] * hsv[:, 1, None, None]).clamp(0, 1)
    val = (y[:, 2] * hsv[:, 2, None, None]).clamp(0, 1)
    return hsv_to_rgb(torch.stack((hue, sat, val), 1))
