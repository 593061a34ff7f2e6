"""Darknet's [yolo] loss: gradients equal Darknet's deltas, worked out by hand for small heads
(pjreddie/darknet src/yolo_layer.c forward_yolo_layer / delta_yolo_box / delta_yolo_class)."""

from __future__ import annotations

import math

import pytest
import torch

from surgery.detect.heads import YoloHead
from surgery.detect.loss import anchor_assignment, detection_loss, yolo_loss

NET = (64, 64)  # (h, w)
ANCHORS = ((10.0, 10.0), (20.0, 40.0), (40.0, 20.0), (80.0, 80.0))
C = 2  # classes


def head(ignore=0.5, scale_x_y=1.0, truth_thresh=1.0, mask=(1, 2)) -> YoloHead:
    return YoloHead(index=0, classes=C, anchors=ANCHORS, mask=mask, ignore_thresh=ignore, truth_thresh=truth_thresh,
                    scale_x_y=scale_x_y)


def ch(a: int, k: int) -> int:
    """Channel of entry k (0..3 box, 4 obj, 5.. classes) of masked anchor a."""
    return a * (5 + C) + k


def grads(h: YoloHead, p: torch.Tensor, targets) -> torch.Tensor:
    p = p.clone().requires_grad_(True)
    terms = yolo_loss(h, p, torch.tensor(targets, dtype=torch.float32), NET)
    sum(terms.values()).backward()
    return p.grad


# one truth: class 1, centre (0.4, 0.7), 16 x 32 px of the 64 x 64 input
TRUTH = [[[1, 0.4, 0.7, 0.25, 0.5]]]


def test_anchor_by_shape_iou_over_all_anchors():
    # shape IoU with the anchors centred at 0: 10x10 100/512, 20x40 512/800, 40x20 320/992, 80x80 512/6400
    wh = torch.tensor([[0.25, 0.5], [80 / 64, 80 / 64], [10 / 64, 10 / 64], [40 / 64, 19 / 64]])
    assert anchor_assignment(head(), wh, NET).tolist() == [1, 3, 0, 2]


def test_single_box_assigned_cell_anchor_and_deltas():
    h = head(ignore=0.5)
    p = torch.zeros(1, 2 * (5 + C), 4, 4)  # 4x4 grid: stride 16
    g = grads(h, p, TRUTH)
    # best anchor 20x40 = anchor 1 = mask position 0; cell i = int(0.4*4) = 1, j = int(0.7*4) = 2
    a, j, i = 0, 2, 1
    # objectness: delta 1 - sigmoid(0) -> gradient -0.5
    assert g[0, ch(a, 4), j, i].item() == pytest.approx(-0.5)
    # classes: delta [0 - .5, 1 - .5]
    assert g[0, ch(a, 5), j, i].item() == pytest.approx(0.5)
    assert g[0, ch(a, 6), j, i].item() == pytest.approx(-0.5)
    # box: scale = 2 - w*h = 1.875; tx = 0.4*4 - 1 = 0.6, ty = 0.7*4 - 2 = 0.8 against x' = y' = 0.5;
    # tw = log(16/20), th = log(32/40) against raw 0
    scale = 2 - 0.25 * 0.5
    assert g[0, ch(a, 0), j, i].item() == pytest.approx(-scale * (0.6 - 0.5))
    assert g[0, ch(a, 1), j, i].item() == pytest.approx(-scale * (0.8 - 0.5))
    assert g[0, ch(a, 2), j, i].item() == pytest.approx(-scale * math.log(16 / 20), rel=1e-5)
    assert g[0, ch(a, 3), j, i].item() == pytest.approx(-scale * math.log(32 / 40), rel=1e-5)
    # no other position has box or class deltas
    box_cls = [ch(m, k) for m in range(2) for k in (0, 1, 2, 3, 5, 6)]
    mask = torch.ones_like(g, dtype=torch.bool)
    mask[0, :, j, i] = False
    assert torch.count_nonzero(g[0, box_cls][mask[0, box_cls]]) == 0


def _iou(a, b):
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


@pytest.mark.parametrize("ignore", [0.3, 0.5, 0.7])
def test_ignore_thresh_silences_objectness_of_overlapping_predictions(ignore):
    h = head(ignore=ignore)
    g = grads(h, torch.zeros(1, 2 * (5 + C), 4, 4), TRUTH)
    truth = (0.4 * 64, 0.7 * 64, 16, 32)
    ignored = 0
    for a, anchor in enumerate((ANCHORS[1], ANCHORS[2])):
        for j in range(4):
            for i in range(4):
                if (a, j, i) == (0, 2, 1):
                    continue  # the assigned one
                pred = ((i + 0.5) * 16, (j + 0.5) * 16, anchor[0], anchor[1])  # raw 0: cell centre, anchor size
                want = 0.0 if _iou(pred, truth) > ignore else 0.5  # delta 0 - sigmoid(0) unless ignored
                ignored += want == 0.0
                assert g[0, ch(a, 4), j, i].item() == pytest.approx(want), (a, j, i)
    # the 40x20 anchor at the truth's cell overlaps it by 320/992 = 0.32: ignored at 0.3 only
    assert g[0, ch(1, 4), 2, 1].item() == pytest.approx(0.0 if ignore == 0.3 else 0.5)
    assert (ignored > 0) == (ignore == 0.3)  # at 0.5 and 0.7 no raw-0 prediction overlaps that much


def test_truth_of_another_layers_anchor_is_not_learned_here():
    h = head()
    big = [[[0, 0.5, 0.5, 80 / 64 * 0.99, 80 / 64 * 0.99]]]  # best anchor 80x80: not in mask (1, 2)
    big[0][0][3] = big[0][0][4] = 0.9
    g = grads(h, torch.zeros(1, 2 * (5 + C), 4, 4), big)
    assert torch.count_nonzero(g[0, [ch(m, k) for m in range(2) for k in (0, 1, 2, 3, 5, 6)]]) == 0
    assert (g[0, [ch(0, 4), ch(1, 4)]] >= 0).all()  # objectness only pushed down (or ignored)


def test_scale_x_y_shifts_the_logistic_before_the_delta():
    # AlexeyAB: x' = s*sigmoid(z) - (s-1)/2; delta = scale*(tx - x'), applied to z unchanged
    for s in (1.0, 2.0):
        h = head(scale_x_y=s)
        p = torch.zeros(1, 2 * (5 + C), 4, 4)
        p[0, ch(0, 0), 2, 1] = 1.0
        g = grads(h, p, TRUTH)
        xp = s * torch.sigmoid(torch.tensor(1.0)).item() - (s - 1) / 2
        assert g[0, ch(0, 0), 2, 1].item() == pytest.approx(-(2 - 0.125) * (0.6 - xp), rel=1e-5)


def test_two_truths_in_one_cell_and_anchor_union_of_classes_last_box():
    h = head()
    t = [[[0, 0.40, 0.70, 0.25, 0.5], [1, 0.45, 0.72, 0.26, 0.52]]]  # same cell (1, 2), same anchor
    g = grads(h, torch.zeros(1, 2 * (5 + C), 4, 4), t)
    assert g[0, ch(0, 5), 2, 1].item() == pytest.approx(-0.5)  # class 0 target 1
    assert g[0, ch(0, 6), 2, 1].item() == pytest.approx(-0.5)  # class 1 target 1 (delta_yolo_class union)
    scale = 2 - 0.26 * 0.52
    assert g[0, ch(0, 0), 2, 1].item() == pytest.approx(-scale * (0.45 * 4 - 1 - 0.5), rel=1e-5)  # the last truth's box


def test_truth_thresh_makes_overlapping_predictions_positive():
    h = head(truth_thresh=0.6)  # the assigned anchor's own prediction overlaps by 0.614; others less
    p = torch.zeros(1, 2 * (5 + C), 4, 4)
    g = grads(h, p, TRUTH)
    positives = (g[:, [ch(0, 4), ch(1, 4)]] < 0).sum().item()
    assert positives == 1
    h = head(truth_thresh=0.4)  # now 20x40 at cell (1, 3) overlaps by 0.43 too: a positive with a class delta
    g = grads(h, p, TRUTH)
    assert g[0, ch(0, 4), 3, 1].item() == pytest.approx(-0.5)
    assert g[0, ch(0, 6), 3, 1].item() == pytest.approx(-0.5)


def test_padding_rows_and_empty_images_push_every_objectness_down():
    h = head()
    p = torch.zeros(2, 2 * (5 + C), 4, 4)
    t = torch.full((2, 3, 5), -1.0)
    terms = detection_loss([h], [p], t, NET)
    # per image: 2 anchors x 16 cells of BCE(0, 0) = log 2, and nothing else
    assert terms["obj"].item() == pytest.approx(32 * math.log(2), rel=1e-6)
    assert terms["box"].item() == 0 and terms["cls"].item() == 0


def test_batch_mean_and_heads_summed():
    h1, h2 = head(mask=(1, 2)), head(mask=(0, 3))
    p1 = torch.randn(3, 2 * (5 + C), 4, 4, generator=torch.Generator().manual_seed(0))
    p2 = torch.randn(3, 2 * (5 + C), 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([[[1, 0.4, 0.7, 0.25, 0.5], [0, 0.2, 0.2, 0.1, 0.1]]] * 3)
    both = detection_loss([h1, h2], [p1, p2], t, NET)
    one = {k: v / 3 for k, v in yolo_loss(h1, p1, t, NET).items()}
    two = {k: v / 3 for k, v in yolo_loss(h2, p2, t, NET).items()}
    for k in both:
        assert both[k].item() == pytest.approx((one[k] + two[k]).item(), rel=1e-6)
    assert two["box"].item() > 0  # the 10x10-ish truth (6.4 px) goes to anchor 0, in h2's mask
