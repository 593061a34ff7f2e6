"""OnionNet cascades (Simonovsky & Komodakis, BMVC 2016, §3.1 and Table 1).

A two-stage cascade has the layer layout of a monolithic chain network: blocks, each a
convolution followed by the chain's non-parametric layers (ReLU, pooling, LRN, dropout) and
BatchNorm. Conv layer ``l`` of stage S1 has ``n1[l]`` filters over S1's layer ``l-1`` maps;
conv layer ``l`` of S2 has ``n2[l]`` filters over the concatenation ``[S1 maps, S2 maps]`` of
layer ``l-1`` (one-way dependence: S1 never reads S2). Layer 0 of both stages reads the
image. The stages are linked before every conv, including the last: S1's last conv is its
own output layer over the ``n1[-1]`` S1-classes, S2's last conv (``n2[-1]`` outputs) reads
both stages' last maps. Fully connected layers are convolutions (the paper's Table 1).

Splitting a monolithic layer of ``n_l = n1_l + n2_l`` filters this way drops exactly the
S2→S1 block, ``s_l² · n2_{l-1} · n1_l`` weights (§3.1).

``share=False`` builds the non-sharing baseline N_NS of §4: the same S1, and an S2 that is an
independent network of the monolithic widths ``n2[l]`` reading only its own maps.

A stage with ``n2[l] == 0`` has no conv at layer ``l`` (Table 1's D keeps every conv layer
in S1 and splits only the classifier). A layer that mixes channels other than through its
conv (``LocalResponseNorm``) runs per stage, over that stage's channels.

The module keeps the thresholds of the pass rule as a persistent buffer (``thresholds``, one
per S1-class, ``-inf`` = every sample passes, ``+inf`` = the class never lets a sample pass),
so a calibrated cascade carries them in its checkpoint's state_dict. A sample passes S1
when its S1 score (softmax over the S1-classes; sigmoid for a single S1 output) reaches the
threshold of any S1-class (§3.3).

``forward(x)`` runs both stages on every sample (the uncompacted reference) and returns
``(s1_scores, s2_output)``; :func:`zoo.onion_runtime.run` is the forward that skips S2
for rejected samples. ``stage1(x)`` returns the S1 logits and the tuple of tensors S2 needs
(the image if S2 has a layer-0 conv, S1's maps before every S2 conv); ``stage2(*shared)``
takes exactly that tuple.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from surgery.core.errors import SurgeryError
from zoo.patchnets import he_normal_, onion_dm, onion_pm, onion_rm
from zoo.registry import register


@dataclass(frozen=True)
class ConvSpec:
    """The shape of a conv layer without its channel counts."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    bias: bool
    groups: int = 1
    in_channels: int = 0  # of the template (groups are kept only when a stage's conv keeps these)
    out_channels: int = 0

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvSpec":
        return cls(tuple(conv.kernel_size), tuple(conv.stride), conv.padding if isinstance(conv.padding, str)
                   else tuple(conv.padding), tuple(conv.dilation), conv.bias is not None, conv.groups,
                   conv.in_channels, conv.out_channels)

    def make(self, cin: int, cout: int, where: str) -> nn.Conv2d:
        groups = self.groups
        if groups != 1 and (cin, cout) != (self.in_channels, self.out_channels):
            raise SurgeryError(
                f"{where} is a grouped conv (groups={groups}); a stage may only keep it whole "
                f"({self.in_channels}->{self.out_channels} channels), not {cin}->{cout}: put all its filters "
                f"and all of its input's filters in S1, or use an ungrouped model"
            )
        return nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups, self.bias)


@dataclass(frozen=True)
class BNSpec:
    """A BatchNorm2d without its channel count."""

    eps: float
    momentum: float | None
    affine: bool
    track: bool

    @classmethod
    def of(cls, bn: nn.BatchNorm2d) -> "BNSpec":
        return cls(bn.eps, bn.momentum, bn.affine, bn.track_running_stats)

    def make(self, c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, self.eps, self.momentum, self.affine, self.track)


@dataclass(frozen=True)
class Block:
    """One conv and the layers after it up to the next conv (copied per stage)."""

    conv: ConvSpec
    post: tuple  # nn.Module templates without parameters, or BNSpec
    name: str = ""  # the monolithic layer this block came from (for messages and reports)


# Layers a block may carry after its conv; everything else is refused by the split.
POST_TYPES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
              nn.Hardsigmoid, nn.Mish, nn.MaxPool2d,
              nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LocalResponseNorm, nn.Dropout,
              nn.Dropout2d, nn.Identity)


def blocks_of(layers: Sequence[nn.Module], where: str = "features") -> tuple[tuple[Block, ...], int]:
    """The blocks of a chain of modules (convs, BatchNorm2d and POST_TYPES) and its input channels."""
    blocks: list[Block] = []
    conv, post, name = None, [], ""
    in_channels = None
    for i, m in enumerate(layers):
        label = f"{where}.{i}"
        if isinstance(m, nn.Conv2d):
            if conv is not None:
                blocks.append(Block(conv, tuple(post), name))
            conv, post, name = ConvSpec.of(m), [], label
            if in_channels is None:
                in_channels = m.in_channels
        elif conv is None:
            raise SurgeryError(f"{label} ({type(m).__name__}) comes before the first conv; an OnionNet chain "
                               f"starts with a conv layer")
        elif isinstance(m, nn.BatchNorm2d):
            post.append(BNSpec.of(m))
        elif isinstance(m, POST_TYPES):
            if any(True for _ in m.parameters()):
                raise SurgeryError(f"{label} ({type(m).__name__}) has parameters; only convs and BatchNorm may")
            post.append(copy.deepcopy(m))
        else:
            raise SurgeryError(f"{label} is a {type(m).__name__}, which an OnionNet block cannot hold "
                               f"(convs, BatchNorm, activations, pooling, LRN and dropout can)")
    if conv is None:
        raise SurgeryError(f"{where} has no conv layer")
    blocks.append(Block(conv, tuple(post), name))
    return tuple(blocks), int(in_channels)


def _stage_block(block: Block, cin: int, cout: int, where: str) -> nn.Sequential:
    mods: list[nn.Module] = [block.conv.make(cin, cout, where)]
    for p in block.post:
        mods.append(p.make(cout) if isinstance(p, BNSpec) else copy.deepcopy(p))
    return nn.Sequential(*mods)


def _widths(n1, n2, blocks) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n1, n2 = tuple(int(v) for v in n1), tuple(int(v) for v in n2)
    if not (len(n1) == len(n2) == len(blocks)):
        raise SurgeryError(f"a cascade needs one S1 and one S2 width per conv layer ({len(blocks)}); "
                           f"got {len(n1)} and {len(n2)}")
    for l, (a, b) in enumerate(zip(n1, n2)):
        if a < 1 or b < 0:
            raise SurgeryError(f"conv layer {l} ({blocks[l].name or l}): S1 needs at least 1 filter and S2 at "
                               f"least 0; got {a}/{b}")
    if n2[-1] < 1:
        raise SurgeryError("S2's output layer needs at least one output")
    start = next(l for l, b in enumerate(n2) if b)
    if any(b == 0 for b in n2[start:]):
        raise SurgeryError(f"S2 may leave out only leading conv layers (it starts at layer {start}); "
                           f"got S2 widths {'/'.join(map(str, n2))}")
    return n1, n2


class OnionCascade(nn.Module):
    """A two-stage OnionNet (or, ``share=False``, its non-sharing baseline); see the module docstring."""

    def __init__(self, blocks: Sequence[Block], in_channels: int, n1: Sequence[int], n2: Sequence[int], *,
                 share: bool = True):
        super().__init__()
        blocks = tuple(blocks)
        self.blocks = blocks
        self.n1, self.n2 = _widths(n1, n2, blocks)
        self.share = bool(share)
        self.in_channels = int(in_channels)
        self.s1 = nn.ModuleList()
        self.s2 = nn.ModuleDict()  # keyed by conv-layer index; absent where n2[l] == 0
        for l, b in enumerate(blocks):
            where = b.name or f"conv layer {l}"
            c1_in = self.in_channels if l == 0 else self.n1[l - 1]
            self.s1.append(_stage_block(b, c1_in, self.n1[l], where))
            if self.n2[l]:
                self.s2[str(l)] = _stage_block(b, self._s2_in(l), self.n2[l], where)
        self.register_buffer("thresholds", torch.full((self.n1[-1],), float("-inf")))

    # ------------------------------------------------------------------ structure

    def _s2_in(self, l: int) -> int:
        """Input channels of S2's conv at layer l: the image at l = 0; else S1's maps (when
        sharing) and S2's own maps of layer l-1."""
        if l == 0:
            return self.in_channels
        return (self.n1[l - 1] if self.share else 0) + self.n2[l - 1]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def s1_classes(self) -> int:
        return self.n1[-1]

    @property
    def s2_start(self) -> int:
        """The first conv layer S2 has a conv in."""
        return min(int(k) for k in self.s2.keys())

    def shared_layers(self) -> tuple[int, ...]:
        """What S2 reads from S1, in ``stage2``'s argument order: -1 = the image, l = S1's maps
        after block l."""
        start = self.s2_start
        if start == 0:
            need = [-1]
        elif self.share or self.n2[start - 1] == 0:
            need = [start - 1]
        else:
            raise SurgeryError("a non-sharing S2 must start at the image")
        if self.share:
            need += [l - 1 for l in range(start + 1, self.depth)]
        return tuple(need)

    def monolithic_widths(self) -> tuple[int, ...]:
        """The widths of the monolithic net this cascade replaces: n1 + n2 per hidden layer,
        and S2's outputs at the last."""
        if self.share:
            return tuple(a + b for a, b in zip(self.n1[:-1], self.n2[:-1])) + (self.n2[-1],)
        return self.n2

    # ------------------------------------------------------------------ forward

    def stage1(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """S1 logits ``(N, K)`` and the tensors S2 needs (see :meth:`shared_layers`)."""
        need = set(self.shared_layers())
        shared: dict[int, Tensor] = {-1: x}
        h = x
        for l, blk in enumerate(self.s1):
            h = blk(h)  # (N, n1[l], H_l, W_l)
            if l in need:
                shared[l] = h
        return h.flatten(1), tuple(shared[l] for l in self.shared_layers())

    def stage2(self, *shared: Tensor) -> Tensor:
        """S2's output ``(N, C)`` from the tensors :meth:`stage1` returned (any batch size)."""
        order = self.shared_layers()
        if len(shared) != len(order):
            raise SurgeryError(f"stage2 takes {len(order)} tensors (from stage1), got {len(shared)}")
        got = dict(zip(order, shared))
        start = self.s2_start
        h = None  # S2's own maps of the previous layer
        for l in range(start, self.depth):
            if l == 0:
                inp = got[-1]
            elif self.share:
                prev = got[l - 1]  # S1's maps of layer l-1
                inp = prev if h is None else torch.cat([prev, h], 1)  # (N, n1+n2, H, W): S1 first
            else:
                inp = h
            h = self.s2[str(l)](inp)
        return h.flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both stages on every sample: ``(s1_logits (N, K), s2_output (N, C))``."""
        scores, shared = self.stage1(x)
        return scores, self.stage2(*shared)

    def pass_scores(self, logits: Tensor) -> Tensor:
        """S1 scores compared with ``thresholds``: softmax over the S1-classes (sigmoid for one)."""
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def pass_mask(self, logits: Tensor, thresholds: Tensor | None = None) -> Tensor:
        """Which samples pass S1: a score at or above its class's threshold (any class)."""
        t = self.thresholds if thresholds is None else thresholds
        return (self.pass_scores(logits) >= t.to(logits.dtype)).any(dim=1)  # (N,) bool


class MonolithicChain(nn.Module):
    """A plain chain of blocks at given widths (the baseline N_M a cascade replaces)."""

    def __init__(self, blocks: Sequence[Block], in_channels: int, widths: Sequence[int]):
        super().__init__()
        mods = []
        cin = in_channels
        for b, w in zip(blocks, widths):
            mods.extend(_stage_block(b, cin, int(w), b.name or "conv"))
            cin = int(w)
        self.features = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)


def from_monolithic(module: nn.Module, n1: Sequence[int], s1_classes: int, *, share: bool = True) -> OnionCascade:
    """The cascade of a monolithic chain net whose layers are ``module.features`` (the zoo's
    P_M/D_M/R_M): ``n1`` filters per hidden conv layer go to S1, the rest to S2; S1 gets an
    output layer of ``s1_classes``; S2's output layer has the monolithic net's outputs.
    ``share=False``: the non-sharing baseline (S2 = the monolithic widths)."""
    blocks, cin = blocks_of(list(module.features))
    n = [b.conv.out_channels for b in blocks]
    if len(n1) != len(n) - 1:
        raise SurgeryError(f"give one S1 width per hidden conv layer ({len(n) - 1}); got {len(n1)}")
    n1_full = tuple(n1) + (int(s1_classes),)
    n2 = tuple(n) if not share else tuple(a - b for a, b in zip(n[:-1], n1)) + (n[-1],)
    return OnionCascade(blocks, cin, n1_full, n2, share=share)


def monolithic_of(cascade: OnionCascade) -> MonolithicChain:
    return MonolithicChain(cascade.blocks, cascade.in_channels, cascade.monolithic_widths())


def is_cascade(module: nn.Module, *, sharing: bool = False) -> bool:
    """The one "is this an OnionNet cascade" check (``sharing``: S2 reads S1's maps, not the
    non-sharing baseline N_NS)."""
    return isinstance(module, OnionCascade) and (module.share or not sharing)


def cascade_of(net, *, sharing: bool = False) -> OnionCascade:
    """``net.module`` (a :class:`surgery.core.net.Net`'s) as a cascade, or a SurgeryError that
    says how to make one."""
    if not is_cascade(net.module, sharing=sharing):
        what = "a non-sharing cascade (N_NS)" if is_cascade(net.module) else type(net.module).__name__
        raise SurgeryError(f"{net.source} is not an OnionNet cascade ({what}); make one with `surgery onion split`, "
                           f"or use zoo:onion_p / onion_d / onion_r")
    return net.module


def s1_widths(module: nn.Module, fraction: float, what: str) -> tuple[int, ...]:
    """S1's share of every hidden conv layer of a monolithic chain (the paper's Table 5 varies
    S1's width): ``round(fraction * n)`` filters, at least 1 and at most ``n - 1`` (S2 keeps
    one)."""
    if not 0 < fraction < 1:
        raise SurgeryError(f"{what}: s1_width={fraction!r}: give the fraction of each hidden layer's filters that "
                           f"goes to S1, between 0 and 1 (Table 1's P is about 0.33)")
    blocks, _ = blocks_of(list(module.features))
    return tuple(min(max(1, round(fraction * b.conv.out_channels)), b.conv.out_channels - 1) for b in blocks[:-1])


# ---------------------------------------------------------------- Table 1 configurations

# S1 widths of the hidden conv layers and the S1-classes (Table 1: Cs(n^S1/n^S2); a layer
# written Cs(n) without a slash is all S1).
TABLE1 = {
    "p": dict(n1=(32, 32, 32, 32, 64, 64, 64), s1_classes=2),
    "d": dict(n1=(96, 256, 384, 384, 256, 512, 512), s1_classes=2),
    "r": dict(n1=(8, 32, 32, 32, 32, 256, 256), s1_classes=7),
}
_BASE = {"p": (onion_pm, (2, 64, 64)), "d": (onion_dm, (3, 227, 227)), "r": (onion_rm, (3, 224, 224))}
_WHAT = {"p": "patch matching (2ch-deep)", "d": "Fast R-CNN classifier", "r": "CNN-F retrieval"}


def _entry(key: str, share: bool):
    base, shape = _BASE[key]
    name = f"onion_{key}" + ("" if share else "_ns")
    cfg = TABLE1[key]
    label = key.upper() + ("" if share else "_NS")

    @register(name, family="onionnet", input_shape=shape,
              description=f"OnionNet {label}: {'' if share else 'non-sharing '}cascade of {key.upper()}_M "
                          f"({_WHAT[key]}), S1 widths {'/'.join(map(str, cfg['n1']))} (s1_width=F: F of every hidden "
                          f"layer, Table 5), {cfg['s1_classes']} S1-classes",
              source="onionnet-bmvc2016 Table 1 (widths); no count published, closed form in tests/test_onion.py")
    def build(s1_classes: int = cfg["s1_classes"], s1_width: float = 0.0) -> OnionCascade:
        if s1_classes < 1:
            raise SurgeryError(f"zoo:{name}: s1_classes={s1_classes} must be at least 1")
        with torch.device("meta"):  # only the layout is read from the monolithic net
            layout = base()
        n1 = cfg["n1"] if not s1_width else s1_widths(layout, s1_width, f"zoo:{name}")
        return he_normal_(from_monolithic(layout, n1, s1_classes, share=share))  # as its base trains

    build.__name__ = name
    build.__doc__ = f"OnionNet {label} (Table 1)."
    return build


onion_p, onion_d, onion_r = (_entry(k, True) for k in "pdr")
onion_p_ns, onion_d_ns, onion_r_ns = (_entry(k, False) for k in "pdr")
