"""NMS against a brute-force definition; mAP from pycocotools against answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery.detect.boxes import batched_nms, box_iou, nms
from surgery.detect.metrics import coco_map


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force_nms(boxes, scores, classes, t):
    """The definition: in order of decreasing score (lower index first on ties), a box is kept
    unless a kept box of its class overlaps it by IoU > t."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(classes[k] != classes[i] or _iou(boxes[k], boxes[i]) <= t for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_batched_nms_equals_brute_force(seed, t):
    g = np.random.default_rng(seed)
    n = int(g.integers(1, 120))
    xy = g.uniform(0, 200, (n, 2))
    wh = g.uniform(5, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = np.round(g.uniform(0, 1, n), 2)  # rounded: ties occur
    classes = g.integers(0, 3, n)
    got = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), t).tolist()
    assert got == brute_force_nms(boxes.tolist(), scores.tolist(), classes.tolist(), t)


def test_nms_threshold_is_strict_and_classes_never_suppress_each_other():
    a = [0.0, 0.0, 10.0, 10.0]
    b = [0.0, 0.0, 10.0, 5.0]  # IoU exactly 0.5 with a
    boxes = torch.tensor([a, b])
    assert box_iou(boxes[:1], boxes[1:]).item() == 0.5
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]  # 0.5 is not > 0.5
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]
    assert batched_nms(boxes, torch.tensor([0.8, 0.9]), torch.tensor([0, 1]), 0.1).tolist() == [1, 0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def box(x, y, w, h):
    return [x, y, x + w, y + h]


def test_map_of_a_perfect_detection_is_one():
    r = coco_map([np.array([[0, *box(10, 10, 40, 20)]])], [np.array([[*box(10, 10, 40, 20), 0.9, 0]])], 1)
    assert (r.map50, r.map) == (pytest.approx(1.0), pytest.approx(1.0)) and (r.boxes, r.detections) == (1, 1)


def test_map_at_iou_072_counts_five_of_ten_thresholds():
    # a detection shifted so that IoU = 0.72: a match at 0.50, 0.55, 0.60, 0.65, 0.70, none above
    gt = box(0, 0, 100, 100)
    d = box(0, 0, 100, 72)  # inter 7200 / union 10000
    r = coco_map([np.array([[0, *gt]])], [np.array([[*d, 0.8, 0]])], 1)
    assert r.map50 == pytest.approx(1.0) and r.map == pytest.approx(0.5)


def test_map_false_positive_ranked_first_halves_precision():
    # one truth; a confident false positive, then the true positive: precision 1/2 at recall 1,
    # so the 101-point interpolated precision is 0.5 at every recall level
    gt = [np.array([[0, *box(0, 0, 50, 50)]])]
    dets = [np.array([[*box(100, 100, 50, 50), 0.9, 0], [*box(0, 0, 50, 50), 0.5, 0]])]
    r = coco_map(gt, dets, 1)
    assert r.map50 == pytest.approx(0.5) and r.map == pytest.approx(0.5)
    # ranked the other way round the false positive comes after recall 1: AP 1
    dets = [np.array([[*box(100, 100, 50, 50), 0.4, 0], [*box(0, 0, 50, 50), 0.5, 0]])]
    assert coco_map(gt, dets, 1).map50 == pytest.approx(1.0)


def test_map_averages_over_classes_with_truths_and_counts_misses():
    gt = [np.array([[0, *box(0, 0, 50, 50)], [1, *box(60, 60, 30, 30)]]),
          np.array([[1, *box(0, 0, 40, 40)]])]
    dets = [np.array([[*box(0, 0, 50, 50), 0.9, 0], [*box(60, 60, 30, 30), 0.8, 1]]),
            np.zeros((0, 6))]  # image 2's class-1 box is missed: class 1 recall 1/2 -> AP 0.5 (101-point: 51/101)
    r = coco_map(gt, dets, 3)  # class 2 has no truth: left out of the mean
    want_1 = 51 / 101
    assert r.map50 == pytest.approx((1.0 + want_1) / 2)
    assert coco_map(gt, [np.zeros((0, 6)), np.zeros((0, 6))], 2).map50 == 0.0
    assert coco_map([np.zeros((0, 5))], [np.zeros((0, 6))], 1).map50 is None  # nothing to find
