"""The sections of pjreddie's segmentation nets: ``[deconvolutional]``/``[deconv]`` (a
transposed convolution), ``[logistic]`` (the logistic cross-entropy cost layer: a sigmoid at
inference) and ``[iseg]`` (instance segmentation: class maps and embeddings)."""

from __future__ import annotations

import torch
from torch import nn

from zoo.darknet.cfg import BN_EPS, BN_MOMENTUM
from zoo.darknet.activations import make_activation
from zoo.darknet.conv_layers import check_numload
from zoo.darknet.layers import Ctx, DarknetLayer, PassLayer


class DeconvolutionalLayer(DarknetLayer):
    """deconvolutional_layer.c: a transposed convolution (gemm of the weights' transpose, then
    col2im), then BatchNorm or bias, then the activation. Output
    ``(h - 1) * stride + size - 2 * padding``; ``pad=1`` sets padding = size/2 (parse_deconvolutional).
    The weights are stored c x filters x size x size, ConvTranspose2d's layout, and read and
    written in load_convolutional_weights order (biases, [scales, mean, variance], weights).

    Deviation: pjreddie's load_convolutional_weights divides by ``l.groups``, which
    make_deconvolutional_layer leaves 0, so its ``load_weights`` stops with a floating point
    exception on a deconv layer (pjreddie/darknet#1515); we read the c*filters*size*size weights
    that save_convolutional_weights writes (``l.nweights``)."""

    section = "deconvolutional"

    def __init__(self, ctx: Ctx):
        c, h, w = ctx.need_image()
        n, size, stride = ctx.int("filters", 1), ctx.int("size", 1), ctx.int("stride", 1)
        padding = ctx.int("padding", 0)
        if ctx.int("pad", 0):
            padding = size // 2
        ctx.positive(filters=n, size=size, stride=stride)
        if padding < 0:
            raise ctx.error(f"padding={padding} must be at least 0")
        out = (n, (h - 1) * stride + size - 2 * padding, (w - 1) * stride + size - 2 * padding)
        super().__init__(ctx, (ctx.index - 1,), out)
        check_numload(ctx, n)
        self.batch_normalize = bool(ctx.int("batch_normalize", 0))
        self.conv = nn.ConvTranspose2d(c, n, size, stride, padding, bias=not self.batch_normalize)
        self.bn = nn.BatchNorm2d(n, eps=BN_EPS, momentum=BN_MOMENTUM) if self.batch_normalize else None
        self.act = make_activation(ctx.str("activation", "logistic"), ctx.where)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class LogisticLayer(PassLayer):
    """logistic_layer.c: the logistic activation of the whole input (the cross-entropy against
    the truth is training only)."""

    section = "logistic"

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(x)


class IsegLayer(PassLayer):
    """iseg_layer.c's output: the logistic of the first ``classes`` channels (per-class masks),
    the ``ids`` embedding channels after them unchanged. Everything else forward_iseg_layer does
    is its loss (and it reads the truth even at inference, where Darknet has none)."""

    section = "iseg"

    def __init__(self, ctx: Ctx):
        ctx.need_image()  # parse_iseg builds from params.w/h: nothing after a layer without C x H x W
        super().__init__(ctx)
        self.classes, self.ids = ctx.int("classes", 20), ctx.int("ids", 32)
        if self.classes < 0 or self.ids < 0:
            raise ctx.error(f"classes={self.classes} and ids={self.ids} must be at least 0")
        c = self.in_shape[0]
        if c != self.classes + self.ids:  # parse_iseg: assert(l.outputs == params.inputs)
            raise ctx.error(f"input has {c} channels but classes + ids = {self.classes + self.ids}; "
                            f"set the previous filters={self.classes + self.ids}")

    def forward(self, x):
        k = self.classes
        return torch.cat([torch.sigmoid(x[:, :k]), x[:, k:]], dim=1)


SEG_LAYERS: dict[str, type[DarknetLayer]] = {
    cls.section: cls for cls in (DeconvolutionalLayer, LogisticLayer, IsegLayer)
}
