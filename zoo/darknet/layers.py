"""Darknet layers as modules: activations, one ``DarknetLayer`` subclass per section, and the
build context (``_Ctx``) that computes Darknet's output shapes."""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.errors import SurgeryError, suggest
from surgery.core.graph import ABSORB, PASS, ChannelOp, channel_op
from zoo.darknet.cfg import BN_EPS, BN_MOMENTUM, Shape


def _stair(x):
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


# Formulas from Darknet's activations.h (pjreddie + AlexeyAB additions), constants as there.
_CUSTOM_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "loggy": lambda x: 2.0 / (1.0 + torch.exp(-x)) - 1.0,
    "relie": lambda x: torch.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "plse": lambda x: torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "stair": _stair,
    "hardtan": lambda x: torch.clamp(x, -1.0, 1.0),
    "lhtan": lambda x: torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "selu": lambda x: torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (torch.exp(x) - 1)),
    "gelu": lambda x: 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x.pow(3))),
    "hard_mish": lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x))),
}
# Exact torch equivalents (kept as standard modules so other tools recognise them).
_TORCH_ACTS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "logistic": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu6": nn.ReLU6,
    "mish": nn.Mish,
    "swish": nn.SiLU,
}
ACTIVATIONS = tuple(sorted({*_TORCH_ACTS, *_CUSTOM_ACTS}))


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.graph)
class DarknetActivation(nn.Module):
    """A Darknet activation with no exact torch module (formula from activations.h)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        return _CUSTOM_ACTS[self.name](x)

    def extra_repr(self) -> str:
        return self.name


def make_activation(name: str, where: str = "") -> nn.Module:
    if name in _TORCH_ACTS:
        return _TORCH_ACTS[name]()
    if name in _CUSTOM_ACTS:
        return DarknetActivation(name)
    raise SurgeryError(f"{where}activation={name!r} is not supported{suggest(name, ACTIVATIONS)}; use one of: {', '.join(ACTIVATIONS)}")


# ------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------


def _identity(self, x):
    return x


class DarknetLayer(nn.Module):
    """One Darknet layer. ``index`` is Darknet's layer index, ``inputs`` the absolute
    indices of the layers whose outputs ``forward`` receives (in argument order)."""

    surgery_leaf = True  # torch.fx: a unit of surgery and of cost attribution
    section = "?"

    def __init__(self, ctx: "_Ctx", inputs: tuple[int, ...], out_shape: Shape):
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


@channel_op(ChannelOp(ABSORB, weight="conv", norm="bn"))  # conv → bn → act: takes permutations
class ConvolutionalLayer(DarknetLayer):
    section = "convolutional"

    def __init__(self, ctx: "_Ctx"):
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
        out = (filters, _cdiv(h + 2 * padding - size, sy) + 1, _cdiv(w + 2 * padding - size, sx) + 1)
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


def check_numload(ctx: "_Ctx", filters: int) -> None:
    """``numload=N`` makes load_convolutional_weights read N filters' tensors (l.n = numload); more
    than the layer has would read past its arrays, a negative count makes fread fail."""
    if not 0 <= ctx.int("numload", 0) <= filters:
        raise ctx.error(f"numload={ctx.opts['numload']} must be between 0 and filters={filters} "
                        f"(the filters load_convolutional_weights reads from the .weights)")


class ConnectedLayer(DarknetLayer):
    section = "connected"

    def __init__(self, ctx: "_Ctx"):
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

    def __init__(self, ctx: "_Ctx"):
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


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.graph)
class MaxpoolLayer(DarknetLayer):
    """Darknet max pooling: out = (w + padding - size)/stride + 1, window origin -padding/2."""

    section = "maxpool"

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.need_image()
        ctx.refuse("maxpool_depth", "antialiasing")
        stride = ctx.int("stride", 1)
        self.sy, self.sx = ctx.int("stride_y", stride), ctx.int("stride_x", stride)
        self.size = ctx.int("size", stride)
        self.padding = ctx.int("padding", self.size - 1)
        ctx.positive(size=self.size, stride=min(self.sy, self.sx))
        out = (c, _cdiv(h + self.padding - self.size, self.sy) + 1, _cdiv(w + self.padding - self.size, self.sx) + 1)
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


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.graph)
class AvgpoolLayer(DarknetLayer):
    section = "avgpool"  # global average pool

    def __init__(self, ctx: "_Ctx"):
        c, _, _ = ctx.need_image()
        super().__init__(ctx, (ctx.index - 1,), (c, 1, 1))

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1)


@channel_op(ChannelOp(PASS, when=lambda m: len(m.inputs) == 1 and m.groups == 1))  # one whole input: a copy
class RouteLayer(DarknetLayer):
    """Concatenate the outputs of ``layers=`` along channels (``groups``/``group_id``:
    take channel slice ``group_id`` of each, as in AlexeyAB's darknet)."""

    section = "route"

    def __init__(self, ctx: "_Ctx"):
        raw = ctx.opts.get("layers")
        if not raw:
            raise ctx.error("no layers=; a route layer must list the layers it reads, e.g. layers=-1,61")
        idx = tuple(ctx.resolve(v, "layers") for v in ctx.ints("layers"))
        self.groups, self.group_id = ctx.int("groups", 1), ctx.int("group_id", 0)
        if self.groups < 1 or not 0 <= self.group_id < self.groups:
            raise ctx.error(f"groups={self.groups} group_id={self.group_id}: need groups >= 1 and 0 <= group_id < groups")
        shapes = [ctx.shape(j) for j in idx]
        _, h, w = shapes[0]
        for j, (cj, hj, wj) in zip(idx, shapes):
            if (hj, wj) != (h, w):
                raise ctx.error(
                    f"layers={raw}: layer {j} is {hj}x{wj} but layer {idx[0]} is {h}x{w}; routed layers must have equal height and width"
                )
            if cj % self.groups:
                raise ctx.error(f"groups={self.groups} does not divide the {cj} channels of layer {j}")
        super().__init__(ctx, idx, (sum(s[0] for s in shapes) // self.groups, h, w))

    def forward(self, *xs):
        if self.groups > 1:
            xs = [x.chunk(self.groups, dim=1)[self.group_id] for x in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)


class ShortcutLayer(DarknetLayer):
    """``out = act(alpha * x + beta * from)``, Darknet's shortcut_cpu: over the first
    min(C) channels, sampling the larger map with stride w1/w2 and writing the smaller one's
    positions (``forward(x, from_x)``; x is the previous layer's output)."""

    section = "shortcut"

    def __init__(self, ctx: "_Ctx"):
        raw = ctx.opts.get("from")
        if raw is None:
            raise ctx.error("no from=; a shortcut layer names the layer it adds, e.g. from=-3")
        froms = ctx.ints("from")
        if len(froms) != 1:
            raise ctx.error(f"from={raw}: only a single from= layer is supported")
        ctx.refuse("weights_type", "weights_normalization")
        src = ctx.resolve(froms[0], "from")
        c1, h1, w1 = ctx.shape(src)
        out = ctx.in_shape
        c2, h2, w2 = out
        if not (h1 and w1 and h2 and w2) or w1 // w2 != h1 // h2 or w2 // w1 != h2 // h1:
            raise ctx.error(f"from={raw}: layer {src} is {c1}x{h1}x{w1}, the input is {c2}x{h2}x{w2}; their height and width ratios must agree")
        super().__init__(ctx, (ctx.index - 1, src), out)
        self.alpha, self.beta = ctx.float("alpha", 1.0), ctx.float("beta", 1.0)
        self.act = make_activation(ctx.str("activation", "linear"), ctx.where)

    def forward(self, x, from_x):
        a, b = self.alpha, self.beta
        if x.shape == from_x.shape:
            out = (x if a == 1 else a * x) + (from_x if b == 1 else b * from_x)
        else:
            (c1, h1, w1), (c2, h2, w2) = from_x.shape[1:], x.shape[1:]
            stride, sample = max(1, w1 // w2), max(1, w2 // w1)
            mc, mh, mw = min(c1, c2), min(h1, h2), min(w1, w2)
            add = from_x[:, :mc, ::stride, ::stride][:, :, :mh, :mw]
            out = x.clone()
            region = (slice(None), slice(0, mc), slice(0, mh * sample, sample), slice(0, mw * sample, sample))
            out[region] = a * out[region] + b * add
        return self.act(out)


class UpsampleLayer(DarknetLayer):
    """Nearest-neighbour upsampling times ``scale``; a negative stride sums stride x stride
    blocks instead (Darknet's reverse upsample)."""

    section = "upsample"

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.need_image()
        stride = ctx.int("stride", 2)
        self.reverse, self.stride = stride < 0, abs(stride)
        if self.stride == 0:
            raise ctx.error("stride=0; use a positive (upsample) or negative (downsample) stride")
        if self.reverse and (h % self.stride or w % self.stride):
            raise ctx.error(f"stride={stride} does not divide the {h}x{w} input")
        self.scale = ctx.float("scale", 1.0)
        out = (c, h // self.stride, w // self.stride) if self.reverse else (c, h * self.stride, w * self.stride)
        super().__init__(ctx, (ctx.index - 1,), out)

    def forward(self, x):
        s = self.stride
        if self.reverse:
            y = F.avg_pool2d(x, s) * (s * s)
        elif s & (s - 1) == 0:  # power of two: interpolate's index arithmetic is exact
            y = F.interpolate(x, scale_factor=s, mode="nearest")
        else:
            b, c, h, w = x.shape
            y = x[:, :, :, None, :, None].expand(b, c, h, s, w, s).reshape(b, c, h * s, w * s)
        return y if self.scale == 1 else y * self.scale


class ReorgLayer(DarknetLayer):
    """pjreddie's reorg (YOLOv2's passthrough layer), bit-exact including its well-known
    quirk: reorg_cpu(forward=0) reads the C x H x W input as C/s^2 x Hs x Ws.

    reorg_layer.c's two other modes, checked in this order by ``forward_reorg_layer``:
    ``flatten=1`` transposes the C x (H*W) input to (H*W) x C (``reverse=1``: back) into the
    reorg's output buffer; ``extra=N`` copies the input as a flat vector and appends N values
    that stay 0 (the calloc'd buffer). Darknet gives an ``extra`` reorg no C/H/W, only
    ``outputs = inputs + N``: here its shape is (inputs + N) x 1 x 1, which is what the
    ``[connected]`` layer that follows it in Darknet reads."""

    section = "reorg"

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.need_image()
        s = self.stride = ctx.int("stride", 1)
        self.reverse = bool(ctx.int("reverse", 0))
        self.flatten = bool(ctx.int("flatten", 0))
        self.extra = ctx.int("extra", 0)
        if self.extra < 0:
            raise ctx.error(f"extra={self.extra} must be at least 0")
        if self.flatten and self.extra:  # forward_reorg_layer's flatten branch would copy past the input
            raise ctx.error("flatten=1 with extra= reads past the input in Darknet; use one of them")
        if self.extra:
            super().__init__(ctx, (ctx.index - 1,), (c * h * w + self.extra, 1, 1))
            return
        if s < 1 or c % (s * s) or (not self.reverse and (h % s or w % s)):
            raise ctx.error(f"stride={s} must divide the input ({c}x{h}x{w}): channels by stride^2, height and width by stride")
        out = (c // (s * s), h * s, w * s) if self.reverse else (c * s * s, h // s, w // s)
        super().__init__(ctx, (ctx.index - 1,), out)

    def forward(self, x):
        b, c, h, w = x.shape
        if self.extra:  # the input as a vector, then `extra` zeros
            flat = x.reshape(b, c * h * w)
            return torch.cat([flat, flat.new_zeros(b, self.extra)], 1).reshape(b, -1, 1, 1)
        if self.flatten:  # blas.c flatten(): forward=1 (not reverse) writes out[i*C + k] = in[k*HW + i]
            y = x.reshape(b, h * w, c) if self.reverse else x.reshape(b, c, h * w)
            return y.transpose(1, 2).reshape(b, *self.out_shape)
        s, oc = self.stride, c // (self.stride * self.stride)
        if self.reverse:  # out[c2, j*s+dy, i*s+dx] = in[(dy*s+dx)*oc + c2, j, i]
            y = x.reshape(b, s, s, oc, h, w).permute(0, 3, 4, 1, 5, 2)
            return y.reshape(b, oc, h * s, w * s)
        # buffer out[k, j, i] (k = (dy*s+dx)*oc + c2) = in viewed as (oc, h*s, w*s)[c2, j*s+dy, i*s+dx]
        y = x.reshape(b, oc, h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(b, c * s * s, h // s, w // s)


class YoloLayer(DarknetLayer):
    """Identity in forward (raw predictions); :meth:`decode` turns them into boxes."""

    section = "yolo"

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.need_image()
        self.classes, self.num = ctx.int("classes", 20), ctx.int("num", 1)
        self.mask = tuple(ctx.ints("mask")) if "mask" in ctx.opts else tuple(range(self.num))
        anchors = ctx.floats("anchors") if "anchors" in ctx.opts else [0.5] * (2 * self.num)
        if len(anchors) != 2 * self.num:
            raise ctx.error(f"{len(anchors)} anchor values for num={self.num}; give num pairs w,h")
        if any(not 0 <= m < self.num for m in self.mask):
            raise ctx.error(f"mask={ctx.opts.get('mask')} refers to anchors outside 0..{self.num - 1}")
        want = len(self.mask) * (self.classes + 5)
        if c != want:
            raise ctx.error(f"input has {c} channels but {len(self.mask)} masks x ({self.classes} classes + 5) = {want}; set the previous filters={want}")
        super().__init__(ctx, (ctx.index - 1,), (want, h, w))
        self.anchors = tuple((anchors[2 * m], anchors[2 * m + 1]) for m in self.mask)
        self.net_hw = ctx.net_hw

    forward = _identity

    def decode(self, p: torch.Tensor, net_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, masks*H*W, 5+classes): x, y, w, h relative to the network input (0..1),
        objectness and class scores after the logistic, as Darknet's get_yolo_box."""
        nh, nw = net_hw or self.net_hw
        b, _, h, w = p.shape
        p = p.reshape(b, len(self.mask), self.classes + 5, h, w).permute(0, 1, 3, 4, 2)
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
        anchors = torch.tensor(self.anchors, dtype=p.dtype, device=p.device).view(1, -1, 1, 1, 2)
        xy = (torch.sigmoid(p[..., :2]) + torch.stack((gx, gy), -1)) / torch.tensor([w, h], dtype=p.dtype, device=p.device)
        wh = torch.exp(p[..., 2:4]) * anchors / torch.tensor([nw, nh], dtype=p.dtype, device=p.device)
        out = torch.cat((xy, wh, torch.sigmoid(p[..., 4:])), -1)
        return out.reshape(b, -1, self.classes + 5)


class RegionLayer(DarknetLayer):
    """YOLOv2 detection head; identity in forward (raw predictions).

    YOLO9000's ``tree=FILE`` (a hierarchical softmax over the classes) and ``map=FILE`` (dataset
    class -> tree node, used by Darknet's loss and detection decoding) change no tensor here. Both
    files are read as parse_region reads them, next to the cfg, then in the working directory:
    the tree must have one node per class, the map name classes that exist. Their contents are
    inlined into the cfg text (``surgery_tree_groups=``, ``surgery_map=``) so a checkpoint
    rebuilds without the files; a Darknet export writes the ``tree=``/``map=`` lines as they were."""

    section = "region"

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.need_image()
        self.classes, self.coords, self.num = ctx.int("classes", 20), ctx.int("coords", 4), ctx.int("num", 1)
        want = self.num * (self.classes + self.coords + 1)
        if c != want:
            raise ctx.error(f"input has {c} channels but num x (classes + coords + 1) = {want}; set the previous filters={want}")
        super().__init__(ctx, (ctx.index - 1,), (want, h, w))
        self.anchors = tuple(ctx.floats("anchors"))
        self.tree: tuple[int, ...] | None = None
        self.map: tuple[int, ...] | None = None
        self.inline_options: dict[str, str] = {}
        if "tree" in ctx.opts:
            sizes, inline = tree_option(ctx)
            if sum(sizes) != self.classes:  # forward_region_layer's softmax_tree walks tree nodes as class entries
                raise ctx.error(f"tree={ctx.opts['tree']} has {sum(sizes)} nodes but classes={self.classes}; "
                                f"a region tree needs one node per class")
            self.tree, self.inline_options = tuple(sizes), {**self.inline_options, **inline}
        if "map" in ctx.opts:
            entries, inline = map_option(ctx)
            bad = next((v for v in entries if not 0 <= v < self.classes), None)
            if bad is not None:
                raise ctx.error(f"map={ctx.opts['map']} maps a class to {bad}, outside the {self.classes} classes "
                                f"(Darknet would read another anchor's values)")
            self.map, self.inline_options = tuple(entries), {**self.inline_options, **inline}

    forward = _identity


class DetectionLayer(DarknetLayer):
    section = "detection"  # YOLOv1 head; identity in forward (raw predictions)

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.in_shape
        coords, classes, num, side = ctx.int("coords", 1), ctx.int("classes", 1), ctx.int("num", 1), ctx.int("side", 7)
        want = side * side * ((1 + coords) * num + classes)
        if c * h * w != want:
            raise ctx.error(f"input has {c * h * w} values but side^2 x ((1+coords) x num + classes) = {want}")
        super().__init__(ctx, (ctx.index - 1,), (c, h, w))

    forward = _identity


class _PassLayer(DarknetLayer):
    """Shape-preserving layers."""

    def __init__(self, ctx: "_Ctx"):
        super().__init__(ctx, (ctx.index - 1,), ctx.in_shape)


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.graph)
class DropoutLayer(_PassLayer):
    section = "dropout"

    def __init__(self, ctx: "_Ctx"):
        super().__init__(ctx)
        self.drop = nn.Dropout(ctx.float("probability", 0.5))  # Darknet scales by 1/(1-p) too

    def forward(self, x):
        return self.drop(x)


TREE_GROUPS_OPTION = "surgery_tree_groups"  # a [softmax]/[region] tree's group sizes, inlined so the cfg text is self-contained


def tree_group_sizes(text: str) -> list[int]:
    """The group sizes of a Darknet tree file (``9k.tree``), exactly as tree.c ``read_tree``
    forms them: one node a line (``name parent_index``, read with ``sscanf("%s %d")``; a line
    without a parent has parent -1), consecutive nodes with the same parent form a group.
    A first node whose parent is not -1 opens with an empty group, as in Darknet."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # fgetl: no line after the final newline
    sizes, size, last = [], 0, -1
    for line in lines:
        m = _TREE_LINE.match(line.split("\x00", 1)[0])
        parent = int(m.group(1)) if m and m.group(1) is not None else -1
        if parent != last:
            sizes.append(size)
            size, last = 0, parent
        size += 1
    sizes.append(size)
    return sizes


_TREE_LINE = re.compile(r"\s*\S+(?:\s+([+-]?\d+))?")
MAP_OPTION = "surgery_map"  # a [region] map file's entries, inlined like the tree's groups


def map_entries(text: str) -> list[int]:
    """The entries of a Darknet class map file (``coco9k.map``) as utils.c ``read_map`` reads them:
    one ``atoi`` per line (a line without a leading integer reads 0)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # fgetl: no line after the final newline
    return [int(m.group(0)) if (m := _INT.match(line)) else 0 for line in lines]


def _side_file(ctx: "_Ctx", key: str, what: str) -> str:
    """The text of the file an option names (``tree=``, ``map=``), looked up next to the cfg, then
    in the working directory (Darknet opens it relative to where it runs)."""
    from pathlib import Path

    name = ctx.opts[key]
    src = Path(ctx.source)
    candidates = ([src.parent / name] if ctx.source and not ctx.source.startswith("<") else []) + [Path(name)]
    for path in candidates:
        if path.is_file():
            try:
                return path.read_bytes().decode("latin-1")
            except OSError as e:
                raise ctx.error(f"{key}={name}: cannot read {path} ({e.strerror or e})") from None
    where = " or ".join(dict.fromkeys(str(p) for p in candidates))
    raise ctx.error(f"{key}={name}: no such {key} file (looked for {where}); put the {what} there")


def _inlined(ctx: "_Ctx", option: str, what: str) -> list[int]:
    """The integers a checkpoint's cfg text carries in place of a file (``surgery_...=``)."""
    values = ctx.ints(option)
    if not values or min(values) < 0:
        raise ctx.error(f"{option}= must list the {what} (integers >= 0)")
    return values


def tree_option(ctx: "_Ctx") -> tuple[list[int], dict[str, str]]:
    """(group sizes of the ``tree=`` file, the options that inline them into the cfg text); a cfg
    text that already carries them (a checkpoint) needs no file."""
    if TREE_GROUPS_OPTION in ctx.opts:
        return _inlined(ctx, TREE_GROUPS_OPTION, "tree's group sizes"), {}
    sizes = tree_group_sizes(_side_file(ctx, "tree", "hierarchical-softmax tree file (e.g. 9k.tree)"))
    return sizes, {TREE_GROUPS_OPTION: ",".join(map(str, sizes))}


def map_option(ctx: "_Ctx") -> tuple[list[int], dict[str, str]]:
    """(entries of the ``map=`` file, the options that inline them), as :func:`tree_option`."""
    if MAP_OPTION in ctx.opts:
        return _inlined(ctx, MAP_OPTION, "map's class indices"), {}
    entries = map_entries(_side_file(ctx, "map", "class map file (e.g. coco9k.map)"))
    if not entries:
        raise ctx.error(f"map={ctx.opts['map']}: the map file is empty; it lists one class index a line")
    return entries, {MAP_OPTION: ",".join(map(str, entries))}


class SoftmaxLayer(_PassLayer):
    """Softmax over ``groups`` contiguous chunks of the flattened C*H*W input (``spatial=1``:
    over channels at each position). Darknet itself gives this layer no C/H/W (only
    outputs = inputs); ``out_shape`` repeats the input shape.

    ``tree=FILE`` (YOLO9000's hierarchical softmax, Darknet's ``softmax_tree``): a softmax
    within each group of the tree file (see :func:`tree_group_sizes`), consecutive in the
    flattened input; ``groups``/``spatial`` are then ignored, as in Darknet, and inputs past
    the tree's nodes are 0 (Darknet never writes them). The file is looked up next to the
    cfg, then in the working directory; its group sizes are inlined into the cfg text as
    ``surgery_tree_groups=`` (``inline_options``) so a checkpoint rebuilds without the file."""

    section = "softmax"

    def __init__(self, ctx: "_Ctx"):
        super().__init__(ctx)
        self.groups, self.temperature = ctx.int("groups", 1), ctx.float("temperature", 1.0)
        self.spatial = bool(ctx.float("spatial", 0.0))
        n = math.prod(ctx.in_shape)
        self.tree: tuple[int, ...] | None = None
        self.inline_options: dict[str, str] = {}
        if "tree" in ctx.opts:
            sizes, self.inline_options = tree_option(ctx)
            self.tree = tuple(sizes)
            if sum(self.tree) > n:
                raise ctx.error(f"tree={ctx.opts['tree']} has {sum(self.tree)} nodes but the layer has only {n} inputs")
            return
        if self.groups < 1 or n % self.groups:
            raise ctx.error(f"groups={self.groups} does not divide the {n} inputs")

    def forward(self, x):
        t = x if self.temperature == 1 else x / self.temperature
        if self.tree is not None:
            return self._tree_softmax(t).reshape(x.shape)
        if self.spatial:
            return F.softmax(t, dim=1)
        return F.softmax(t.reshape(x.shape[0], self.groups, -1), dim=-1).reshape(x.shape)

    def _tree_softmax(self, t):
        """Darknet's softmax_tree: a softmax within each contiguous group (segment max, sum)."""
        b = t.shape[0]
        flat = t.reshape(b, -1)
        n = sum(self.tree)
        seg = torch.repeat_interleave(torch.arange(len(self.tree), device=t.device),
                                      torch.tensor(self.tree, device=t.device), output_size=n)
        idx = seg.expand(b, n)
        v = flat[:, :n]
        top = v.new_full((b, len(self.tree)), float("-inf")).scatter_reduce(1, idx, v, "amax")
        e = torch.exp(v - top.gather(1, idx))
        total = v.new_zeros((b, len(self.tree))).scatter_add(1, idx, e)
        out = e / total.gather(1, idx)
        if n < flat.shape[1]:
            out = torch.cat([out, flat.new_zeros((b, flat.shape[1] - n))], dim=1)
        return out

    def extra_repr(self) -> str:
        return f"tree={len(self.tree)} groups" if self.tree is not None else ""


class CropLayer(DarknetLayer):
    """Inference crop: the centre crop_height x crop_width window, scaled 2x-1 unless noadjust=1."""

    section = "crop"

    def __init__(self, ctx: "_Ctx"):
        c, h, w = ctx.need_image()
        self.ch, self.cw = ctx.int("crop_height", 1), ctx.int("crop_width", 1)
        if self.ch > h or self.cw > w:
            raise ctx.error(f"crop {self.ch}x{self.cw} is larger than the {h}x{w} input")
        self.noadjust = bool(ctx.int("noadjust", 0))
        super().__init__(ctx, (ctx.index - 1,), (c, self.ch, self.cw))

    def forward(self, x):
        dh, dw = (x.shape[-2] - self.ch) // 2, (x.shape[-1] - self.cw) // 2
        y = x[..., dh:dh + self.ch, dw:dw + self.cw]
        return y if self.noadjust else y * 2 - 1


class CostLayer(_PassLayer):
    section = "cost"  # a training loss; identity at inference
    forward = _identity


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.graph)
class ActivationLayer(_PassLayer):
    section = "activation"

    def __init__(self, ctx: "_Ctx"):
        super().__init__(ctx)
        self.act = make_activation(ctx.str("activation", "linear"), ctx.where)

    def forward(self, x):
        return self.act(x)


_LAYERS: dict[str, type[DarknetLayer]] = {
    cls.section: cls
    for cls in (ConvolutionalLayer, ConnectedLayer, LocalLayer, MaxpoolLayer, AvgpoolLayer, RouteLayer,
                ShortcutLayer, UpsampleLayer, ReorgLayer, YoloLayer, RegionLayer, DetectionLayer,
                DropoutLayer, SoftmaxLayer, CropLayer, CostLayer, ActivationLayer)
}

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


_INT = re.compile(r"\s*[+-]?\d+")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _cdiv(a: int, b: int) -> int:
    return int(a / b)  # C integer division truncates toward zero, as in Darknet's size formulas


class _Ctx:
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
        return default if key not in self.opts else self._num(key, self.opts[key], _INT, int)

    def float(self, key: str, default: float) -> float:
        return default if key not in self.opts else self._num(key, self.opts[key], _FLOAT, float)

    def str(self, key: str, default: str) -> str:
        return self.opts.get(key, default)

    def ints(self, key: str) -> list[int]:
        return [self._num(key, p, _INT, int) for p in self.opts.get(key, "").split(",") if p]

    def floats(self, key: str) -> list[float]:
        return [self._num(key, p, _FLOAT, float) for p in self.opts.get(key, "").split(",") if p]


# ------------------------------------------------------------------------------------
