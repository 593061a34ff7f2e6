"""The base of every Darknet section's module (:class:`DarknetLayer`, :class:`PassLayer`), the
build context a section's constructor reads its options and Darknet's shapes from
(:class:`Ctx`), and which sections leave no C x H x W image behind (:func:`no_image_reason`).

The sections themselves, by family: :mod:`zoo.darknet.conv_layers` (convolutional, connected,
local, pooling), :mod:`zoo.darknet.route_layers` (route, shortcut, upsample, reorg, crop and the
per-element passes), :mod:`zoo.darknet.head_layers` (yolo, region, detection, softmax and the
tree/map files), :mod:`zoo.darknet.norm_layers`, :mod:`zoo.darknet.seg_layers`,
:mod:`zoo.darknet.recurrent`; :mod:`zoo.darknet.net` builds a network from all of them.
"""

from __future__ import annotations

import math
import re

from torch import nn

from surgery.core.errors import SurgeryError
from zoo.darknet.cfg import Shape


def identity_forward(self, x):
    return x


class DarknetLayer(nn.Module):
    """One Darknet layer. ``index`` is Darknet's layer index, ``inputs`` the absolute
    indices of the layers whose outputs ``forward`` receives (in argument order)."""

    surgery_leaf = True  # torch.fx: a unit of surgery and of cost attribution
    section = "?"

    def __init__(self, ctx: "Ctx", inputs: tuple[int, ...], out_shape: Shape):
        super().__init__()
        self.index: int = ctx.index
        self.options: dict = dict(ctx.opts)
        self.inputs: tuple[int, ...] = tuple(inputs)
        self.in_shapes: tuple[Shape, ...] = tuple(ctx.shape(j) for j in inputs)
        self.out_shape: Shape = tuple(int(v) for v in out_shape)
        if min(self.out_shape) <= 0:
            raise ctx.error(f"output shape {self.out_shape} is empty (input {self.in_shapes}); check size/stride/padding")
        # parse_network_cfg reads these for every section; they steer .weights I/O only (weights.py):
        # load_weights_upto skips a dontload layer, save_weights_upto a dontsave one, numload= makes
        # load_convolutional_weights read only the first filters, dontloadscales= skips BN statistics.
        # The other per-section options it reads (truth, onlyforward, stopbackward, learning_rate, smooth)
        # and [convolutional] dot= only steer training: accepted and ignored, like any option a section
        # does not read.
        self.dontload, self.dontsave = bool(ctx.int("dontload", 0)), bool(ctx.int("dontsave", 0))
        self.dontloadscales, self.numload = bool(ctx.int("dontloadscales", 0)), ctx.int("numload", 0)

    @property
    def in_shape(self) -> Shape:
        return self.in_shapes[0]

    def extra_repr(self) -> str:
        return f"index={self.index}, inputs={self.inputs}, out_shape={self.out_shape}"


class PassLayer(DarknetLayer):
    """Shape-preserving layers."""

    def __init__(self, ctx: "Ctx"):
        super().__init__(ctx, (ctx.index - 1,), ctx.in_shape)


# What parse_network_cfg passes on as the next layer's h, w, c (the previous layer's out_h,
# out_w, out_c): these sections never set them (0), these copy their input's, the rest make an
# image (or need one: need_image).
NO_IMAGE_SECTIONS = ("rnn", "gru", "lstm", "softmax", "cost", "detection")
IMAGE_PASSING_SECTIONS = ("dropout", "activation", "logistic", "l2norm", "batchnorm", "normalization", "iseg")


def no_image_reason(layer: "DarknetLayer", images: list[str | None]) -> str | None:
    """None when Darknet gives ``layer``'s output a C x H x W, else why not; ``images`` holds the
    entries of the layers before it, ``images[0]`` the network input's (index j + 1 for layer j)."""
    if layer.section in NO_IMAGE_SECTIONS:
        return f"layer {layer.index} [{layer.section}] gives only a vector of {math.prod(layer.out_shape)} outputs"
    if layer.section in IMAGE_PASSING_SECTIONS or layer.section == "route":  # route: its first input's size
        return images[layer.inputs[0] + 1]
    return None


INT_PREFIX = re.compile(r"\s*[+-]?\d+")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def cdiv(a: int, b: int) -> int:
    return int(a / b)  # C integer division truncates toward zero, as in Darknet's size formulas


class Ctx:
    """What a layer constructor sees: its options, the shapes so far, error helpers."""

    def __init__(self, index: int, block: dict, source: str, shapes: list[Shape], input_shape: Shape, net_hw,
                 images: list[str | None] | None = None):
        self.index, self.source, self.shapes, self.input_shape, self.net_hw = index, source, shapes, input_shape, net_hw
        # images[j + 1]: None when Darknet gives layer j's output a C x H x W, else why not
        # (no_image_reason); images[0]: the [net] input's
        self.images = images if images is not None else []
        self.section = block["type"]
        self.opts = {k: v for k, v in block.items() if k != "type"}
        self.where = f"{source}: layer {index} [{self.section}]: "

    def error(self, msg: str) -> SurgeryError:
        return SurgeryError(self.where + msg)

    def shape(self, j: int) -> Shape:
        return self.input_shape if j < 0 else self.shapes[j]

    @property
    def in_shape(self) -> Shape:
        return self.shape(self.index - 1)

    def need_image(self) -> Shape:
        c, h, w = self.in_shape
        if not (c > 0 and h > 0 and w > 0):
            raise self.error(f"needs an image input (C x H x W), got {c}x{h}x{w}")
        why = self.images[self.index] if self.index < len(self.images) else None  # images[index]: layer index-1
        if why:
            raise self.error(f"needs an image input, but {why}: Darknet leaves its C x H x W at 0 and would build "
                             f"an empty [{self.section}] here; feed it from a layer with an image output")
        return c, h, w

    def resolve(self, v: int, key: str) -> int:
        j = self.index + v if v < 0 else v
        if not 0 <= j < self.index:
            raise self.error(
                f"{key}={self.opts.get(key)} refers to layer {j}, which is not an earlier layer; "
                f"use 0..{self.index - 1} or -1..-{self.index}" if self.index else
                f"{key}={self.opts.get(key)}: layer 0 has no earlier layer to refer to"
            )
        return j

    def positive(self, **values: int) -> None:
        for k, v in values.items():
            if v < 1:
                raise self.error(f"{k}={v} must be at least 1")

    def refuse(self, *keys: str) -> None:
        defaults = {"dilation": "1"}
        for k in keys:
            v = self.opts.get(k)
            if v not in (None, "0", defaults.get(k, "0")):
                raise self.error(f"option {k}={v} is not supported; remove it or convert the model another way")

    def _num(self, key: str, v: str, pattern, conv):
        m = pattern.match(v)
        if not m:
            kind = "an integer" if conv is int else "a number"
            raise self.error(f"{key}={v!r} is not {kind}")
        return conv(m.group(0))  # a numeric prefix, like C's atoi/atof

    def int(self, key: str, default: int) -> int:
        return default if key not in self.opts else self._num(key, self.opts[key], INT_PREFIX, int)

    def float(self, key: str, default: float) -> float:
        return default if key not in self.opts else self._num(key, self.opts[key], _FLOAT, float)

    def str(self, key: str, default: str) -> str:
        return self.opts.get(key, default)

    def ints(self, key: str) -> list[int]:
        return [self._num(key, p, INT_PREFIX, int) for p in self.opts.get(key, "").split(",") if p]

    def floats(self, key: str) -> list[float]:
        return [self._num(key, p, _FLOAT, float) for p in self.opts.get(key, "").split(",") if p]


_MOVED = {  # section classes that lived here before the split by family, by the module they live in now
    "zoo.darknet.activations": ("DarknetActivation",),
    "zoo.darknet.conv_layers": ("ConvolutionalLayer", "ConnectedLayer", "LocalLayer", "MaxpoolLayer", "AvgpoolLayer"),
    "zoo.darknet.route_layers": ("RouteLayer", "ShortcutLayer", "UpsampleLayer", "ReorgLayer", "DropoutLayer",
                                 "CropLayer", "CostLayer", "ActivationLayer"),
    "zoo.darknet.head_layers": ("YoloLayer", "RegionLayer", "DetectionLayer", "SoftmaxLayer"),
}


def __getattr__(name: str):
    """A whole DarknetNet pickled before the split names its layers' classes as
    ``zoo.darknet.layers.<Class>``: resolved from their modules now, so such a pickle still loads."""
    from importlib import import_module

    for module, names in _MOVED.items():
        if name in names:
            return getattr(import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
