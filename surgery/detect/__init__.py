"""Object detection for Darknet ``[yolo]`` heads: YOLO-format label folders, Darknet's
``[yolo]`` training loss, decoding, NMS and COCO-style mAP.

The modules, bottom up: :mod:`~surgery.detect.boxes` (IoU, NMS), :mod:`~surgery.detect.heads`
(what a ``[yolo]`` layer says: anchors, mask, thresholds; decoding), :mod:`~surgery.detect.loss`
(the layer's loss, as Darknet computes it), :mod:`~surgery.detect.labels` (reading a YOLO folder),
:mod:`~surgery.detect.data` (letterbox, box-aware augmentation), :mod:`~surgery.detect.metrics`
(mAP through pycocotools), :mod:`~surgery.detect.task` (what plugs into the one training loop,
:mod:`surgery.train.loop`), :mod:`~surgery.detect.shared` (the heads of a shared multi-head
detector: their outputs and own layers), :mod:`~surgery.detect.train` (``surgery train`` on a
detector, or on one head of a shared one).
"""
