"""Darknet's sections that route, add, resample or pass tensors: ``[route]``, ``[shortcut]``,
``[upsample]``, ``[reorg]``, ``[crop]``, ``[dropout]``, ``[cost]``, ``[activation]``. The
per-channel ones register their channel ops with :mod:`surgery.core.channel_ops` on import."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from surgery.core.channel_ops import PASS, ChannelOp, channel_op
from zoo.darknet.activations import make_activation
from zoo.darknet.layers import Ctx, DarknetLayer, PassLayer, identity_forward


@channel_op(ChannelOp(PASS, when=lambda m: len(m.inputs) == 1 and m.groups == 1))  # one whole input: a copy
class RouteLayer(DarknetLayer):
    """Concatenate the outputs of ``layers=`` along channels (``groups``/``group_id``:
    take channel slice ``group_id`` of each, as in AlexeyAB's darknet)."""

    section = "route"

    def __init__(self, ctx: "Ctx"):
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

    def __init__(self, ctx: "Ctx"):
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

    def __init__(self, ctx: "Ctx"):
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

    def __init__(self, ctx: "Ctx"):
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


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.channel_ops)
class DropoutLayer(PassLayer):
    section = "dropout"

    def __init__(self, ctx: "Ctx"):
        super().__init__(ctx)
        self.drop = nn.Dropout(ctx.float("probability", 0.5))  # Darknet scales by 1/(1-p) too

    def forward(self, x):
        return self.drop(x)


class CropLayer(DarknetLayer):
    """Inference crop: the centre crop_height x crop_width window, scaled 2x-1 unless noadjust=1."""

    section = "crop"

    def __init__(self, ctx: "Ctx"):
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


class CostLayer(PassLayer):
    section = "cost"  # a training loss; identity at inference
    forward = identity_forward


@channel_op(ChannelOp(PASS))  # per channel: a permutation passes through (surgery.core.channel_ops)
class ActivationLayer(PassLayer):
    section = "activation"

    def __init__(self, ctx: "Ctx"):
        super().__init__(ctx)
        self.act = make_activation(ctx.str("activation", "linear"), ctx.where)

    def forward(self, x):
        return self.act(x)


ROUTE_LAYERS: dict[str, type[DarknetLayer]] = {
    cls.section: cls for cls in (RouteLayer, ShortcutLayer, UpsampleLayer, ReorgLayer, DropoutLayer, CropLayer,
                                 CostLayer, ActivationLayer)
}
