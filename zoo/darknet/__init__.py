"""Darknet ``.cfg`` / ``.weights``: parser, module builder, weights I/O and cfg writer.

The semantics are Darknet's own (pjreddie/darknet ``parser.c`` and ``*_layer.c``), so a
layer table built here has Darknet's layer indices and Darknet's printed shapes:

- ``parse_cfg`` reads sections the way ``read_cfg`` does (all whitespace stripped from a
  line; ``#``/``;`` lines are comments), ``write_cfg`` is its inverse.
- ``build_darknet`` makes a :class:`DarknetNet`: ``layers[i]`` is Darknet layer ``i``, a
  :class:`DarknetLayer` with ``index``, ``section``, ``options``, ``inputs`` (absolute indices
  it reads, ``-1`` = the network input), ``in_shapes`` and ``out_shape`` (C, H, W).
  Route/shortcut layers take the tensors they read as forward arguments, so a torch.fx trace
  that keeps ``DarknetLayer`` as leaves (``surgery_leaf = True``) has the true data flow.
- ``read_weights`` / ``write_weights`` speak the ``.weights`` format byte for byte (the
  header is kept on ``net.weights_header``, so read → write reproduces the file).

Forward is inference-exact except for BatchNorm: see :data:`BN_EPS`.
"""

from zoo.darknet.cfg import BN_EPS, OUTPUT_SECTIONS, SECTIONS, TYPE_OPTION, parse_cfg, write_cfg
from zoo.darknet.files import load_darknet, save_darknet
from zoo.darknet.activations import ACTIVATIONS, DarknetActivation, make_activation
from zoo.darknet.layers import DarknetLayer
from zoo.darknet.conv_layers import AvgpoolLayer, ConnectedLayer, ConvolutionalLayer, LocalLayer, MaxpoolLayer
from zoo.darknet.route_layers import (ActivationLayer, CostLayer, CropLayer, DropoutLayer, ReorgLayer, RouteLayer,
                                      ShortcutLayer, UpsampleLayer)
from zoo.darknet.head_layers import DetectionLayer, RegionLayer, SoftmaxLayer, YoloLayer
from zoo.darknet.norm_layers import BatchnormLayer, L2normLayer, NormalizationLayer
from zoo.darknet.seg_layers import DeconvolutionalLayer, IsegLayer, LogisticLayer
from zoo.darknet.net import DarknetNet, build_darknet
from zoo.darknet.weights import WeightsHeader, read_weights, weights_nbytes, write_weights

__all__ = [
    "ACTIVATIONS",
    "BN_EPS",
    "OUTPUT_SECTIONS",
    "SECTIONS",
    "TYPE_OPTION",
    "DarknetNet",
    "WeightsHeader",
    "build_darknet",
    "load_darknet",
    "make_activation",
    "parse_cfg",
    "read_weights",
    "save_darknet",
    "weights_nbytes",
    "write_cfg",
    "write_weights",
    "DarknetActivation",
    "DarknetLayer",
    "ConvolutionalLayer",
    "ConnectedLayer",
    "LocalLayer",
    "MaxpoolLayer",
    "AvgpoolLayer",
    "RouteLayer",
    "ShortcutLayer",
    "UpsampleLayer",
    "ReorgLayer",
    "YoloLayer",
    "RegionLayer",
    "DetectionLayer",
    "DropoutLayer",
    "SoftmaxLayer",
    "CropLayer",
    "CostLayer",
    "ActivationLayer",
    "NormalizationLayer",
    "L2normLayer",
    "BatchnormLayer",
    "DeconvolutionalLayer",
    "LogisticLayer",
    "IsegLayer",
]
