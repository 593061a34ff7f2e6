"""Darknet's recurrent sections ``[rnn]``, ``[gru]``, ``[lstm]`` and ``[crnn]`` (pjreddie/darknet
``rnn_layer.c``, ``gru_layer.c``, ``lstm_layer.c``, ``crnn_layer.c``; options as ``parser.c``
``parse_rnn``/``parse_gru``/``parse_lstm``/``parse_crnn``).

Time in Darknet: ``[net] time_steps=T`` makes the network batch ``batch x T`` rows, and a
recurrent layer reads them as T consecutive steps of ``b = rows / T`` sequences each: rows
``t*b .. t*b+b-1`` are step ``t``, for the input and the output alike. Every other layer
treats the rows as independent samples, as in Darknet. The sublayers are Darknet
``[connected]`` layers (rnn/gru/lstm) or 3x3 stride-1 pad-1 ``[convolutional]`` layers (crnn),
each with its own ``batch_normalize`` (BatchNorm with this builder's eps, see
``zoo.darknet.cfg.BN_EPS``); the forward is Darknet's inference forward (``net.train = 0``).

Deviation from Darknet: Darknet keeps a recurrent layer's hidden state (and the LSTM cell)
from one forward call to the next at inference. Here every forward call starts from a zero
state, which is Darknet's state on the first call after loading, so a forward is a pure
function of its input. With ``time_steps=1`` (the default) each row is one step from a zero
state.

Shapes: Darknet gives ``[rnn]``/``[gru]``/``[lstm]`` no C/H/W, only ``outputs = output``; their
``out_shape`` is ``(output, 1, 1)`` (what a following ``[connected]`` reads). ``[crnn]`` keeps
the input's size with height and width swapped, as Darknet's parser does: ``(output_filters, W, H)``.
"""

from __future__ import annotations

import torch
from torch import nn

from surgery.core.errors import SurgeryError
from zoo.darknet.cfg import BN_EPS, BN_MOMENTUM
from zoo.darknet.activations import make_activation
from zoo.darknet.layers import Ctx, DarknetLayer


# ------------------------------------------------------------------------------------
# sublayers: Darknet's connected / convolutional layers as the recurrent layers build them
# ------------------------------------------------------------------------------------


class _Connected(nn.Module):
    """connected_layer.c ``forward_connected_layer``: ``act(W x + bias)``, or with
    ``batch_normalize`` ``act(scale * (W x - mean) / sqrt(var + eps) + bias)``."""

    def __init__(self, n_in: int, n_out: int, activation: str, batch_normalize: bool, where: str):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out, bias=not batch_normalize)
        self.bn = nn.BatchNorm1d(n_out, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_normalize else None
        self.act = make_activation(activation, where)

    def forward(self, x):  # (b, n_in) -> (b, n_out)
        y = self.fc(x)
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)

    def darknet_tensors(self, transpose: bool) -> list[tuple[torch.Tensor, tuple[int, int] | None]]:
        """parser.c ``load_connected_weights`` order: biases, weights (stored inputs x outputs
        when the header says ``transpose``), then scales, rolling mean, rolling variance. The
        sublayers' own ``dontloadscales`` is always 0 in Darknet, so the scales are always there."""
        bias = self.bn.bias if self.bn is not None else self.fc.bias
        rc = (self.fc.in_features, self.fc.out_features) if transpose else None
        out = [(bias, None), (self.fc.weight, rc)]
        if self.bn is not None:
            out += [(self.bn.weight, None), (self.bn.running_mean, None), (self.bn.running_var, None)]
        return out


class _Conv(nn.Module):
    """The convolutional sublayer of crnn_layer.c: ``make_convolutional_layer(..., groups=1,
    size=3, stride=1, padding=1, ...)``, so the output keeps H x W."""

    def __init__(self, c_in: int, c_out: int, activation: str, batch_normalize: bool, where: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=not batch_normalize)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_normalize else None
        self.act = make_activation(activation, where)

    def forward(self, x):  # (b, c_in, h, w) -> (b, c_out, h, w)
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)

    def darknet_tensors(self, transpose: bool) -> list[tuple[torch.Tensor, tuple[int, int] | None]]:
        """parser.c ``load_convolutional_weights`` order: biases, [scales, rolling mean,
        rolling variance], weights. Never transposed (the sublayers are not ``flipped``)."""
        bias = self.bn.bias if self.bn is not None else self.conv.bias
        out = [(bias, None)]
        if self.bn is not None:
            out += [(self.bn.weight, None), (self.bn.running_mean, None), (self.bn.running_var, None)]
        return out + [(self.conv.weight, None)]


# ------------------------------------------------------------------------------------
# the recurrent layers
# ------------------------------------------------------------------------------------


class _Recurrent(DarknetLayer):
    """Shared by the four sections: ``steps`` from ``[net] time_steps``, the split of the input
    rows into steps, and the ``.weights`` tensors of the sublayers in file order."""

    FILE_ORDER: tuple[str, ...] = ()  # sublayer attribute names in parser.c's load/save order

    def __init__(self, ctx: Ctx, inputs: tuple[int, ...], out_shape):
        super().__init__(ctx, inputs, out_shape)
        self.steps = time_steps(ctx)
        self.batch_unit = self.steps  # surgery.core.net.batch_unit: a forward takes whole sequences of rows
        self.where = ctx.where
        # every sublayer has a BatchNorm when set (DarknetNet.fuse folds them into their units)
        self.batch_normalize = bool(ctx.int("batch_normalize", 0))

    def darknet_tensors(self, transpose: bool) -> list[tuple[torch.Tensor, tuple[int, int] | None]]:
        """Every tensor this layer stores in a ``.weights`` file, in file order, each with the
        (rows, cols) it is stored as when that is the transpose of the in-memory matrix."""
        return [t for name in self.FILE_ORDER for t in getattr(self, name).darknet_tensors(transpose)]

    def _per_step(self, x: torch.Tensor) -> torch.Tensor:
        """The input rows as (steps, b, ...): step t is rows t*b .. t*b+b-1 (Darknet advances
        ``net.input`` by ``inputs * batch`` per step)."""
        rows = x.shape[0]
        if rows % self.steps:
            raise SurgeryError(
                f"{self.where}the input batch {rows} is not a multiple of [net] time_steps={self.steps}; "
                f"Darknet feeds a recurrent net batch x time_steps rows (step t in rows t*b..t*b+b-1), "
                f"so run it on a multiple of {self.steps} rows"
            )
        return x.reshape(self.steps, rows // self.steps, *x.shape[1:])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", steps={self.steps}"


def time_steps(ctx: Ctx) -> int:
    """``[net] time_steps`` (default 1), as parse_net_options reads it. ``ctx.net`` is the
    ``[net]`` block's context, which DarknetNet hands every layer."""
    net = getattr(ctx, "net", None)
    if net is None:
        return 1
    steps = net.int("time_steps", 1)
    if steps < 1:
        raise net.error(f"time_steps={steps} must be at least 1 (the steps a recurrent layer unrolls)")
    return steps


def _zeros(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """The zero initial state (torch.zeros, not ``like.new_zeros``: the cost counter would
    count the latter as a read of ``like``)."""
    return torch.zeros(shape, dtype=like.dtype, device=like.device)


def _join(outs: list[torch.Tensor]) -> torch.Tensor:
    """The per-step outputs as one step-major batch (no copy for a single step)."""
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _flat_inputs(ctx: Ctx) -> int:
    c, h, w = ctx.in_shape
    if c * h * w <= 0:
        raise ctx.error(f"needs a non-empty input, got {c}x{h}x{w}")
    return c * h * w


class RnnLayer(_Recurrent):
    """rnn_layer.c: per step ``s = [s +] act(U x) + act(W s)`` (``shortcut=1`` keeps the old
    state in the sum), ``y = act(V s)``; U, W, V are connected layers (input_layer,
    self_layer, output_layer) with the section's activation and batch_normalize. The state
    has ``output`` units: pjreddie's parse_rnn has no separate hidden size. ``shortcut=1``
    follows the CPU forward (rnn_layer.c keeps the state there; its GPU forward zeroes it first,
    so on a GPU Darknet's shortcut=1 acts as shortcut=0)."""

    section = "rnn"
    FILE_ORDER = ("input_layer", "self_layer", "output_layer")

    def __init__(self, ctx: Ctx):
        n_in = _flat_inputs(ctx)
        output = ctx.int("output", 1)
        ctx.positive(output=output)
        if "hidden" in ctx.opts and ctx.int("hidden", output) != output:
            raise ctx.error(f"hidden={ctx.opts['hidden']} differs from output={output}: pjreddie's darknet ignores "
                            f"hidden= (the state has output units), AlexeyAB's uses it; surgery reads pjreddie's "
                            f"[rnn], so set hidden={output} or remove it")
        ctx.refuse("logistic")  # AlexeyAB only
        super().__init__(ctx, (ctx.index - 1,), (output, 1, 1))
        act, bn = ctx.str("activation", "logistic"), self.batch_normalize
        self.shortcut = bool(ctx.int("shortcut", 0))
        self.input_layer = _Connected(n_in, output, act, bn, ctx.where)
        self.self_layer = _Connected(output, output, act, bn, ctx.where)
        self.output_layer = _Connected(output, output, act, bn, ctx.where)

    def forward(self, x):
        xs = self._per_step(x.flatten(1))  # (steps, b, inputs)
        state = _zeros(xs, xs.shape[1], self.out_shape[0])  # (b, output): zero state per call
        outs = []
        for x_t in xs:
            u, w = self.input_layer(x_t), self.self_layer(state)
            state = state + u + w if self.shortcut else u + w
            outs.append(self.output_layer(state))
        return _join(outs)[:, :, None, None]  # (steps*b, output, 1, 1), step-major


class _Gated(_Recurrent):
    """[gru] and [lstm]: per gate g a linear connected sublayer ``u<g>`` (input -> gate) and
    ``w<g>`` (state -> gate), ``output`` units each, built in that order (all U, then all W)."""

    GATES: tuple[str, ...] = ()

    def __init__(self, ctx: Ctx):
        n_in = _flat_inputs(ctx)
        output = ctx.int("output", 1)
        ctx.positive(output=output)
        super().__init__(ctx, (ctx.index - 1,), (output, 1, 1))
        for prefix, n in (("u", n_in), ("w", output)):
            for gate in self.GATES:
                setattr(self, prefix + gate, _Connected(n, output, "linear", self.batch_normalize, ctx.where))


class GruLayer(_Gated):
    """gru_layer.c: per step ``z = σ(Uz x + Wz h)``, ``r = σ(Ur x + Wr h)``,
    ``h~ = act(Uh x + Wh (r*h))`` with act = logistic (``tanh=1``: tanh), output and new state
    ``h = z*h + (1-z)*h~`` (blas.c weighted_sum). The six connected sublayers are linear."""

    section = "gru"
    FILE_ORDER = ("wz", "wr", "wh", "uz", "ur", "uh")
    GATES = ("z", "r", "h")

    def __init__(self, ctx: Ctx):
        super().__init__(ctx)
        self.tanh = bool(ctx.int("tanh", 0))

    def forward(self, x):
        xs = self._per_step(x.flatten(1))  # (steps, b, inputs)
        h = _zeros(xs, xs.shape[1], self.out_shape[0])  # (b, output)
        outs = []
        for x_t in xs:
            z = torch.sigmoid(self.uz(x_t) + self.wz(h))
            r = torch.sigmoid(self.ur(x_t) + self.wr(h))
            pre = self.uh(x_t) + self.wh(h * r)
            cand = torch.tanh(pre) if self.tanh else torch.sigmoid(pre)
            h = z * h + (1 - z) * cand
            outs.append(h)
        return _join(outs)[:, :, None, None]


class LstmLayer(_Gated):
    """lstm_layer.c: per step ``f = σ(Wf h + Uf x)``, ``i = σ(Wi h + Ui x)``,
    ``g = tanh(Wg h + Ug x)``, ``o = σ(Wo h + Uo x)``, ``c = f*c + i*g``, ``h = o*tanh(c)``;
    the output is h. The eight connected sublayers are linear."""

    section = "lstm"
    FILE_ORDER = ("wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug")
    GATES = ("f", "i", "g", "o")

    def forward(self, x):
        xs = self._per_step(x.flatten(1))  # (steps, b, inputs)
        h = _zeros(xs, xs.shape[1], self.out_shape[0])  # (b, output)
        c = h
        outs = []
        for x_t in xs:
            f = torch.sigmoid(self.wf(h) + self.uf(x_t))
            i = torch.sigmoid(self.wi(h) + self.ui(x_t))
            g = torch.tanh(self.wg(h) + self.ug(x_t))
            o = torch.sigmoid(self.wo(h) + self.uo(x_t))
            c = f * c + i * g
            h = torch.tanh(c) * o
            outs.append(h)
        return _join(outs)[:, :, None, None]


# parse_crnn reads none of these; AlexeyAB's [crnn] does (output=/hidden= instead of
# output_filters=/hidden_filters=, a configurable kernel). Refused so such a cfg is not
# silently read as 1-filter 3x3 layers.
_CRNN_FIXED = {"size": 3, "stride": 1, "dilation": 1, "groups": 1, "xnor": 0}


class CrnnLayer(_Recurrent):
    """crnn_layer.c: rnn_layer.c's recurrence with 3x3 stride-1 pad-1 convolutions:
    ``s = [s +] act(conv_in x) + act(conv_self s)`` with ``hidden_filters`` state channels,
    ``y = act(conv_out s)`` with ``output_filters`` channels.

    Height and width are swapped, as in Darknet: parse_crnn calls ``make_crnn_layer(batch,
    params.w, params.h, ...)`` against the signature ``(batch, h, w, ...)``, so each C x H x W
    input plane is read as a W x H grid (the same memory, reshaped, not transposed) and the
    output is ``output_filters x W x H``. For a square input this changes nothing."""

    section = "crnn"
    FILE_ORDER = ("input_layer", "self_layer", "output_layer")

    def __init__(self, ctx: Ctx):
        c, h, w = ctx.need_image()
        for key in ("output", "hidden"):
            if key in ctx.opts:
                raise ctx.error(f"{key}= is AlexeyAB's [crnn] option; pjreddie's parse_crnn reads {key}_filters=, "
                                f"write {key}_filters={ctx.opts[key]}")
        for key, fixed in _CRNN_FIXED.items():
            if key in ctx.opts and ctx.int(key, fixed) != fixed:
                raise ctx.error(f"{key}={ctx.opts[key]}: pjreddie's [crnn] always uses size=3 stride=1 pad=1 "
                                f"convolutions; remove {key}= (AlexeyAB's [crnn] is not supported)")
        out_f, hid_f = ctx.int("output_filters", 1), ctx.int("hidden_filters", 1)
        ctx.positive(output_filters=out_f, hidden_filters=hid_f)
        super().__init__(ctx, (ctx.index - 1,), (out_f, w, h))  # Darknet's swap: see the class docstring
        act, bn = ctx.str("activation", "logistic"), self.batch_normalize
        self.hidden_filters = hid_f
        self.shortcut = bool(ctx.int("shortcut", 0))
        self.input_layer = _Conv(c, hid_f, act, bn, ctx.where)
        self.self_layer = _Conv(hid_f, hid_f, act, bn, ctx.where)
        self.output_layer = _Conv(hid_f, out_f, act, bn, ctx.where)

    def forward(self, x):
        xs = self._per_step(x)  # (steps, b, c, h, w)
        steps, b, c, h, w = xs.shape
        xs = xs.reshape(steps, b, c, w, h)  # Darknet reads the H x W plane as a W x H grid
        state = _zeros(xs, b, self.hidden_filters, w, h)
        outs = []
        for x_t in xs:
            u, v = self.input_layer(x_t), self.self_layer(state)
            state = state + u + v if self.shortcut else u + v
            outs.append(self.output_layer(state))
        return _join(outs)  # (steps*b, output_filters, w, h), step-major


RECURRENT_LAYERS: dict[str, type[DarknetLayer]] = {cls.section: cls for cls in (RnnLayer, GruLayer, LstmLayer, CrnnLayer)}
