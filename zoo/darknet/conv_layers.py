"""Darknet's sections with weights over an image and its pools: ``[convolutional]`` (binary and
XNOR included), ``[connected]``, ``[local]``, ``[maxpool]``, ``[avgpool]``. The conv and the
pools register their channel ops with :mod:`surgery.core.channel_ops` on import."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.channel_ops import ABSORB, PASS, ChannelOp, channel_op
from zoo.darknet.activations import make_activation
from zoo.darknet.cfg import BN_EPS, BN_MOMENTUM
from zoo.darknet.layers import Ctx, DarknetLayer, cdiv


@channel_op(ChannelOp(ABSORB, weight="conv", norm="bn"))  # conv → bn → act: takes permutations
class ConvolutionalLayer(DarknetLayer):
    section = "convolutional"

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.need_image()
        ctx.refuse("antialiasing", "share_index", "deform", "dilation", "coordconv")  # AlexeyAB-only
        filters, size = ctx.int("filters", 1), ctx.int("size", 1)
        stride = ctx.int("stride", 1)
        sy, sx = ctx.int("stride_y", stride), ctx.int("stride_x", stride)
        padding = ctx.int("padding", 0)
        if ctx.int("pad", 0):
            padding = size // 2
        groups = ctx.int("groups", 1)
        ctx.positive(filters=filters, size=size, stride=min(sy, sx), groups=groups)
        if c % groups or filters % groups:
            raise ctx.error(f"groups={groups} must divide the input channels ({c}) and filters ({filters})")
        out = (filters, cdiv(h + 2 * padding - size, sy) + 1, cdiv(w + 2 * padding - size, sx) + 1)
        super().__init__(ctx, (ctx.index - 1,), out)
        self.batch_normalize = bool(ctx.int("batch_normalize", 0))
        self.flipped = bool(ctx.int("flipped", 0))
        if self.flipped and groups != 1:
            raise ctx.error("flipped=1 with groups>1 is not supported")
        check_numload(ctx, filters)
        self.binary, self.xnor = bool(ctx.int("binary", 0)), bool(ctx.int("xnor", 0))
        self.bn_foldable = not (self.binary or self.xnor)  # folding a BN would change the weights it binarizes
        self.conv = nn.Conv2d(c, filters, size, (sy, sx), padding, groups=groups, bias=not self.batch_normalize)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS, momentum=BN_MOMENTUM) if self.batch_normalize else None
        self.act = make_activation(ctx.str("activation", "logistic"), ctx.where)

    def forward(self, x):
        if self.binary or self.xnor:
            x = self._binary_conv(x)
        else:
            x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def _binary_conv(self, x):
        """``binary=1``: the convolution with :func:`binarize_weights`; ``xnor=1``: also with the
        input binarized to +1 where it is > 0 and -1 elsewhere (convolutional_layer.c binarize_cpu).
        The stored weights stay real-valued, as Darknet keeps and saves them.

        Deviation: pjreddie's CPU forward_convolutional_layer binarizes the weights only for
        xnor=1 and leaves binary=1 a plain convolution; its GPU forward, which trains and runs
        these nets, binarizes them for binary=1 too. We follow the GPU forward there, and the CPU
        for the input sign (the GPU's binarize_kernel sends an exact 0 to +1, the CPU to -1)."""
        if self.xnor:
            x = (x > 0).to(x.dtype) * 2 - 1
        return self.conv._conv_forward(x, binarize_weights(self.conv.weight), self.conv.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", xnor=1" if self.xnor else ", binary=1" if self.binary else "")


def binarize_weights(w: torch.Tensor) -> torch.Tensor:
    """convolutional_layer.c ``binarize_weights``: each filter becomes sign(w) times the mean |w|
    over its c/groups x size x size values (a weight <= 0 gets -mean)."""
    mean = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)  # (n, 1, 1, 1)
    return torch.where(w > 0, mean, -mean)


def check_numload(ctx: "Ctx", filters: int) -> None:
    """``numload=N`` makes load_convolutional_weights read N filters' tensors (l.n = numload); more
    than the layer has would read past its arrays, a negative count makes fread fail."""
    if not 0 <= ctx.int("numload", 0) <= filters:
        raise ctx.error(f"numload={ctx.opts['numload']} must be between 0 and filters={filters} "
                        f"(the filters load_convolutional_weights reads from the .weights)")


class ConnectedLayer(DarknetLayer):
    section = "connected"

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.in_shape
        if c * h * w <= 0:
            raise ctx.error(f"needs a non-empty input, got {c}x{h}x{w}")
        output = ctx.int("output", 1)
        ctx.positive(output=output)
        super().__init__(ctx, (ctx.index - 1,), (output, 1, 1))
        self.batch_normalize = bool(ctx.int("batch_normalize", 0))
        self.fc = nn.Linear(c * h * w, output, bias=not self.batch_normalize)
        self.bn = nn.BatchNorm1d(output, eps=BN_EPS, momentum=BN_MOMENTUM) if self.batch_normalize else None
        self.act = make_activation(ctx.str("activation", "logistic"), ctx.where)

    def forward(self, x):
        x = self.fc(x.flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)[:, :, None, None]


class LocalLayer(DarknetLayer):
    """Locally connected: a different filter bank per output position (local_layer.c)."""

    section = "local"

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.need_image()
        n, size, stride, pad = ctx.int("filters", 1), ctx.int("size", 1), ctx.int("stride", 1), ctx.int("pad", 0)
        ctx.positive(filters=n, size=size, stride=stride)
        oh = (h - (1 if pad else size)) // stride + 1  # local_out_height
        ow = (w - (1 if pad else size)) // stride + 1
        # forward runs im2col with padding `pad`; the two agree only when 2*pad == size-1.
        if pad and 2 * pad != size - 1:
            raise ctx.error(f"pad={pad} with size={size}: Darknet's output size and its im2col disagree; use pad=(size-1)/2")
        super().__init__(ctx, (ctx.index - 1,), (n, oh, ow))
        self.size, self.stride, self.pad = size, stride, pad
        k = c * size * size
        scale = math.sqrt(2.0 / k)
        self.weight = nn.Parameter(torch.empty(oh * ow, n, k).uniform_(-scale, scale))  # (locations, n, c*k*k)
        self.bias = nn.Parameter(torch.zeros(n, oh, ow))
        self.act = make_activation(ctx.str("activation", "logistic"), ctx.where)

    def forward(self, x):
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # (B, c*k*k, L)
        y = torch.einsum("bkl,lnk->bnl", cols, self.weight)
        return self.act(y.reshape(x.shape[0], *self.bias.shape) + self.bias)


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.channel_ops)
class MaxpoolLayer(DarknetLayer):
    """Darknet max pooling: out = (w + padding - size)/stride + 1, window origin -padding/2."""

    section = "maxpool"

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.need_image()
        ctx.refuse("maxpool_depth", "antialiasing")
        stride = ctx.int("stride", 1)
        self.sy, self.sx = ctx.int("stride_y", stride), ctx.int("stride_x", stride)
        self.size = ctx.int("size", stride)
        self.padding = ctx.int("padding", self.size - 1)
        ctx.positive(size=self.size, stride=min(self.sy, self.sx))
        out = (c, cdiv(h + self.padding - self.size, self.sy) + 1, cdiv(w + self.padding - self.size, self.sx) + 1)
        super().__init__(ctx, (ctx.index - 1,), out)

    def forward(self, x):
        h, w = x.shape[-2:]
        oh = (h + self.padding - self.size) // self.sy + 1
        ow = (w + self.padding - self.size) // self.sx + 1
        lo = self.padding // 2
        right = max(0, (ow - 1) * self.sx + self.size - w - lo)
        bottom = max(0, (oh - 1) * self.sy + self.size - h - lo)
        if lo or right or bottom:  # out-of-image taps read -FLT_MAX, as in Darknet
            x = F.pad(x, (lo, right, lo, bottom), value=float(torch.finfo(x.dtype).min))
        return F.max_pool2d(x, self.size, (self.sy, self.sx))[..., :oh, :ow]


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.channel_ops)
class AvgpoolLayer(DarknetLayer):
    section = "avgpool"  # global average pool

    def __init__(self, ctx: "Ctx"):
        c, _, _ = ctx.need_image()
        super().__init__(ctx, (ctx.index - 1,), (c, 1, 1))

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1)


CONV_LAYERS: dict[str, type[DarknetLayer]] = {
    cls.section: cls for cls in (ConvolutionalLayer, ConnectedLayer, LocalLayer, MaxpoolLayer, AvgpoolLayer)
}
