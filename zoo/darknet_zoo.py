"""Darknet zoo: Darknet-53, YOLOv3 and YOLOv3-tiny, generated as cfg text and built by
:func:`zoo.darknet.build_darknet`, so the layer table has Darknet's indices (YOLOv3: 0..106).

With default arguments the generated layer sections equal those of pjreddie's
``darknet53.cfg``, ``yolov3.cfg`` and ``yolov3-tiny.cfg`` (tests/test_darknet.py checks it
against ../shared/data/darknet/). Parameter counts are ``sum(p.numel() for p in
model.parameters())``: BatchNorm running mean/var are buffers, not counted.
"""

from __future__ import annotations

from surgery.core.errors import SurgeryError
from zoo.darknet import DarknetNet, build_darknet, write_cfg
from zoo.registry import register

YOLOV3_ANCHORS = "10,13,16,30,33,23,30,61,62,45,59,119,116,90,156,198,373,326"
YOLOV3_TINY_ANCHORS = "10,14,23,27,37,58,81,82,135,169,344,319"

# [net] training options as in the pjreddie cfgs (irrelevant to the network's function).
_DETECTOR_TRAINING = dict(momentum=0.9, decay=0.0005, angle=0, saturation=1.5, exposure=1.5, hue=".1",
                          learning_rate=0.001, burn_in=1000, max_batches=500200, policy="steps",
                          steps="400000,450000", scales=".1,.1")


def _detector_net(batch: int, subdivisions: int, width: int, height: int) -> dict:
    return {"type": "net", "batch": batch, "subdivisions": subdivisions, "width": width, "height": height,
            "channels": 3, **_DETECTOR_TRAINING}


def _conv(filters: int, size: int, stride: int = 1, bn: bool = True, act: str = "leaky") -> dict:
    block = {"type": "convolutional"}
    if bn:
        block["batch_normalize"] = 1
    block.update(filters=filters, size=size, stride=stride, pad=1, activation=act)
    return block


def _darknet53_backbone() -> list[dict]:
    """Layers 0..74: conv 32, then five stages of (downsample conv, n residual blocks)."""
    blocks = [_conv(32, 3)]
    for filters, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        blocks.append(_conv(filters, 3, 2))
        for _ in range(n):
            blocks += [_conv(filters // 2, 1), _conv(filters, 3), {"type": "shortcut", "from": -3, "activation": "linear"}]
    return blocks


def _anchors(text: str, num: int, entry: str) -> str:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        [float(p) for p in parts]
    except ValueError:
        raise SurgeryError(f"zoo:{entry}: anchors={text!r} must be comma-separated numbers") from None
    if len(parts) != 2 * num:
        raise SurgeryError(f"zoo:{entry}: anchors has {len(parts)} values; give {num} w,h pairs ({2 * num} numbers)")
    return ",".join(parts)


def _check(entry: str, classes: int, width: int, height: int, multiple: int) -> None:
    if classes < 1:
        raise SurgeryError(f"zoo:{entry}: classes={classes} must be at least 1")
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise SurgeryError(f"zoo:{entry}: width={width} height={height} must be positive multiples of {multiple}")


def _yolo(mask: str, anchors: str, classes: int, num: int) -> dict:
    return {"type": "yolo", "mask": mask, "anchors": anchors, "classes": classes, "num": num, "jitter": ".3",
            "ignore_thresh": ".7", "truth_thresh": 1, "random": 1}


def darknet53_cfg(classes: int = 1000, width: int = 256, height: int = 256) -> str:
    net = {"type": "net", "batch": 1, "subdivisions": 1, "height": height, "width": width, "channels": 3,
           "min_crop": 128, "max_crop": 448, "burn_in": 1000, "learning_rate": 0.1, "policy": "poly",
           "power": 4, "max_batches": 800000, "momentum": 0.9, "decay": 0.0005, "angle": 7, "hue": ".1",
           "saturation": ".75", "exposure": ".75", "aspect": ".75"}
    head = [{"type": "avgpool"}, _conv(classes, 1, bn=False, act="linear"), {"type": "softmax", "groups": 1}]
    return write_cfg([net, *_darknet53_backbone(), *head])


def yolov3_cfg(classes: int = 80, anchors: str = YOLOV3_ANCHORS, width: int = 416, height: int = 416) -> str:
    _check("yolov3", classes, width, height, 32)
    anchors = _anchors(anchors, 9, "yolov3")
    out = 3 * (classes + 5)
    blocks = [_detector_net(64, 16, width, height), *_darknet53_backbone()]  # 0..74
    for mask, filters, route in (("6,7,8", 512, None), ("3,4,5", 256, 61), ("0,1,2", 128, 36)):
        if route is not None:  # 83/95: back to the head's 1x1 conv, then upsample and concat
            blocks += [{"type": "route", "layers": -4}, _conv(filters, 1), {"type": "upsample", "stride": 2},
                       {"type": "route", "layers": f"-1,{route}"}]
        for _ in range(3):
            blocks += [_conv(filters, 1), _conv(2 * filters, 3)]
        blocks += [_conv(out, 1, bn=False, act="linear"), _yolo(mask, anchors, classes, 9)]
    return write_cfg(blocks)


def yolov3_tiny_cfg(classes: int = 80, anchors: str = YOLOV3_TINY_ANCHORS, width: int = 416,
                    height: int = 416) -> str:
    _check("yolov3_tiny", classes, width, height, 32)
    anchors = _anchors(anchors, 6, "yolov3_tiny")
    out = 3 * (classes + 5)
    blocks = [_detector_net(1, 1, width, height)]
    for i, filters in enumerate((16, 32, 64, 128, 256, 512)):
        blocks += [_conv(filters, 3), {"type": "maxpool", "size": 2, "stride": 1 if i == 5 else 2}]
    blocks += [_conv(1024, 3), _conv(256, 1), _conv(512, 3), _conv(out, 1, bn=False, act="linear"),
               _yolo("3,4,5", anchors, classes, 6),
               {"type": "route", "layers": -4}, _conv(128, 1), {"type": "upsample", "stride": 2},
               {"type": "route", "layers": "-1,8"}, _conv(256, 3), _conv(out, 1, bn=False, act="linear"),
               _yolo("0,1,2", anchors, classes, 6)]
    return write_cfg(blocks)


def _hw(kw: dict) -> tuple[int, int, int]:
    return (3, kw["height"], kw["width"])


# Darknet-53 (Redmon & Farhadi 2018, Table 2 lists 18.7 Bn ops at 256x256; Darknet's own
# count of this cfg is 18.57 BFLOPs): 41,609,928 parameters as the cfg gives them (conv
# weights + BN gamma/beta + the 1000-way conv's bias), the 41.6 M usually quoted.
@register("darknet53", family="darknet", input_shape=_hw, published_params=41_600_000, params_rtol=0.005,
          source="darknet53.cfg (YOLOv3 paper, Table 2); 41.6 M as commonly quoted",
          description="Darknet-53 ImageNet classifier (darknet53.cfg), 3x256x256; classes, width, height")
def darknet53(classes: int = 1000, width: int = 256, height: int = 256) -> DarknetNet:
    """Darknet-53 ImageNet classifier (darknet53.cfg)."""
    _check("darknet53", classes, width, height, 32)
    return build_darknet(darknet53_cfg(classes, width, height), source="zoo:darknet53")


# 62,001,757 is the count Keras ports of YOLOv3 print for 80 classes; it includes the 52,608
# BatchNorm moving means/variances (2 x 26,304 BN channels), which PyTorch keeps as buffers:
# parameters() gives 61,949,149 (0.085 % less), within params_rtol.
@register("yolov3", family="darknet", input_shape=_hw, published_params=62_001_757, params_rtol=0.002,
          source="yolov3.cfg, 80 classes (62,001,757 incl. 52,608 BN running stats; parameters() 61,949,149)",
          description="YOLOv3 (yolov3.cfg layers 0..106), 3x416x416; classes, anchors, width, height")
def yolov3(classes: int = 80, anchors: str = YOLOV3_ANCHORS, width: int = 416, height: int = 416) -> DarknetNet:
    """YOLOv3 detector (yolov3.cfg)."""
    return build_darknet(yolov3_cfg(classes, anchors, width, height), source="zoo:yolov3")


# 8.86 M (8,858,734 in Keras ports, incl. 6,368 BN running stats; parameters() 8,852,366).
@register("yolov3_tiny", family="darknet", input_shape=_hw, published_params=8_858_734, params_rtol=0.002,
          source="yolov3-tiny.cfg, 80 classes (8,858,734 incl. 6,368 BN running stats; parameters() 8,852,366)",
          description="YOLOv3-tiny (yolov3-tiny.cfg), 3x416x416; classes, anchors, width, height")
def yolov3_tiny(classes: int = 80, anchors: str = YOLOV3_TINY_ANCHORS, width: int = 416,
                height: int = 416) -> DarknetNet:
    """YOLOv3-tiny detector (yolov3-tiny.cfg)."""
    return build_darknet(yolov3_tiny_cfg(classes, anchors, width, height), source="zoo:yolov3_tiny")
