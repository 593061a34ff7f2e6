"""A small Darknet YOLO (tests/data/detect/text-yolo-64.cfg) overfits a handful of synth-text
images through the one training loop: mAP@0.5 above 0.9 on them (Darknet's loss, decoding,
NMS and the COCO evaluator working together)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surgery.core import io as sio
from surgery.datasets.synth_text import write_synth_text
from surgery.detect.data import Augment
from surgery.detect.heads import net_hw, yolo_heads
from surgery.detect.labels import yolo_folders
from surgery.detect.task import DetectionTask
from surgery.detect.train import darknet_normalization
from surgery.train.loop import TrainConfig, TrainData, train

CFG = Path(__file__).parent / "data" / "detect" / "text-yolo-64.cfg"
NO_AUGMENT = Augment(flip=False, scale_jitter=0.0, translate=0.0, hue=0.0, saturation=1.0, exposure=1.0)


@pytest.mark.slow
def test_small_yolo_overfits_eight_images(tmp_path):
    write_synth_text(tmp_path / "t", n_train=8, n_val=1, size=64, seed=0, max_words=3)
    net = sio.load(str(CFG))
    heads = yolo_heads(net.module)
    assert [(h.index, h.classes, h.mask) for h in heads] == [(8, 1, (0, 1, 2))]
    images, _ = yolo_folders(tmp_path / "t", classes=1)
    task = DetectionTask(heads, net_hw(net.module, net.input_shape), NO_AUGMENT, max_boxes=images.max_boxes)
    norm = darknet_normalization(None, 3)
    data = TrainData(images, None, tuple(net.input_shape), norm, task=task)  # no per-epoch evaluation
    before = task.evaluate(net.module, images, data)
    result = train(net.module, task.loss, data, TrainConfig(batch=8, steps=300, lr=3e-3, schedule="cosine"))
    after = task.evaluate(result.module, images, data)
    assert before["map50"] < 0.1
    assert after["map50"] > 0.9 and after["map"] > 0.5, after
    assert after["boxes"] == images.num_boxes and after["images"] == 8
    assert torch.equal(next(net.module.parameters()), next(sio.load(str(CFG)).module.parameters()))  # not mutated
