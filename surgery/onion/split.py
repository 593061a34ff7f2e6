"""Split a trained monolithic chain network into a two-stage OnionNet cascade (§3.1).

Plan → check → apply:

1. **Chain.** The model's layer graph must be a chain of conv / BatchNorm / activation /
   pooling / LRN / dropout / flatten / linear layers, Linear layers read as convolutions
   (:mod:`surgery.onion.chain`).
2. **Widths.** ``n1`` filters of each hidden conv layer go to S1 (a fraction of ``n_l``, or
   one count per layer); the rest, ``n2 = n − n1``, to S2. The last conv's outputs all stay
   in S2 (the network's outputs); S1 gets a new output layer of ``s1_classes`` filters.
3. **Which filters.** S1 outputs read only S1 inputs; S2 outputs read both. So the split of
   layer ``l`` drops exactly the block ``W[S1_out_l, S2_in_{l-1}]`` —
   ``s_l² · n2_{l-1} · n1_l`` weights (the paper's formula). The filters of every layer are
   assigned by :func:`surgery.partition.search_chain` with the keep mask ``[[1, 0], [1, 1]]``
   (the balanced channel-partition search ``regroup`` uses), maximising the kept weight
   energy summed over the layers (each layer's energy normalised to 1, so every layer
   counts alike); layer 0 reads the image, which both stages see (all "S1"). The report
   gives the dropped energy per layer next to the naive split that sends the first ``n1``
   filters of every layer to S1.
4. **Apply.** Each conv's weights are sliced, never changed: S1 gets
   ``W[S1_out][:, S1_in]``, S2 gets ``W[S2_out][:, S1_in ++ S2_in]`` (S2 reads
   ``[S1 maps, S2 maps]``); BatchNorm statistics follow their channels. The S1 head: with as
   many S1-classes as the net has outputs, the last layer's weights over S1's inputs; with
   one output and two S1-classes, ``±w/2`` (so the two-class softmax is the sigmoid of the
   monolithic score seen through S1); otherwise its default initialisation (training is a
   separate step).
5. **Check.** The cascade's S2 output must equal the monolithic net with the dropped blocks
   zero-filled (``verify``; exact up to rounding unless a cross-channel layer, LRN, sits on
   a split layer — then that is reported instead); ``moved`` says how far the split moved
   the function from the original.

The result is recorded as the replayable step ``onion_split`` (``n1``, ``s1_classes``) so the
checkpoint reloads by structural replay; the pass thresholds live in the cascade's
``thresholds`` buffer (state_dict), all ``-inf`` (everything passes) until calibrated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from surgery import partition
from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError
from surgery.core.net import Net, Step
from surgery.core.recipe import replayable
from surgery.core.probe import Probe, check_shape, probe_json
from surgery.core.verify import compare, probe_inputs
from surgery.onion.chain import chain_layers
from zoo.onion import MonolithicChain, OnionCascade, blocks_of, is_cascade

KEEP = torch.tensor([[True, False], [True, True]])  # S1 outputs read S1; S2 outputs read both
VERIFY_RTOL = 1e-4


@dataclass(frozen=True)
class LayerSplit:
    layer: int  # conv layer number (0 = first conv)
    name: str  # the monolithic module
    kernel: tuple[int, int]
    n: int  # monolithic filters
    n1: int
    n2: int
    dropped_weights: int  # s² · n2_{l-1} · n1_l
    dropped_fraction: float  # of the layer's weight energy, searched split
    naive_dropped_fraction: float  # first-n1 split


@dataclass(frozen=True)
class SplitReport:
    model: str
    n1: tuple[int, ...]  # per conv layer, the last = S1-classes
    n2: tuple[int, ...]
    s1_classes: int
    head_init: str  # copied | binary | default
    params_before: int
    params_after: int
    dropped_weights: int
    layers: tuple[LayerSplit, ...]
    verify: Mapping | None  # {max_abs, max_rel} vs the monolithic net with the dropped blocks zero-filled
    moved: Mapping  # {max_abs, max_rel, top1_agreement} vs the original net (S2 output)
    notes: tuple[str, ...] = ()
    probe: Mapping | None = None  # what ``moved`` was measured on (surgery.core.probe.probe_json)


# ----------------------------------------------------------------------------- widths


def check_s1(s1: float | Sequence[int]) -> float | tuple[int, ...]:
    """S1's share: a fraction of every hidden conv layer (a float strictly between 0 and 1) or
    one S1 width per hidden conv layer (integers; checked against the layers by :func:`s1_widths`)."""
    if isinstance(s1, float):
        if not 0.0 < s1 < 1.0:
            raise SurgeryError(f"--s1 fraction {s1:g} must lie strictly between 0 and 1 (S1 and S2 both need filters)")
        return s1
    if isinstance(s1, (int, str, bool)):
        raise SurgeryError(f"S1's share {s1!r}: give a fraction like 0.25 or one integer width per hidden conv layer")
    widths = tuple(s1)
    if not widths or any(isinstance(v, bool) or int(v) != v for v in widths):
        raise SurgeryError(f"S1 widths {list(widths)}: give one integer width per hidden conv layer")
    return tuple(int(v) for v in widths)


def s1_widths(s1: float | Sequence[int], n: Sequence[int], names: Sequence[str]) -> tuple[int, ...]:
    """S1 widths of the hidden conv layers (all but the last) with widths ``n``."""
    hidden = list(n[:-1])
    if isinstance(s1, float):
        out = []
        for w, name in zip(hidden, names):
            if w < 2:
                raise SurgeryError(f"{name} has {w} filter; it cannot be shared between S1 and S2 by a fraction")
            out.append(min(w - 1, max(1, round(s1 * w))))
        return tuple(out)
    s1 = tuple(int(v) for v in s1)
    if len(s1) != len(hidden):
        raise SurgeryError(f"--s1 gives {len(s1)} widths; this model has {len(hidden)} hidden conv layers "
                           f"({', '.join(f'{a}:{b}' for a, b in zip(names, hidden))})")
    for v, w, name in zip(s1, hidden, names):
        if v < 1:
            raise SurgeryError(f"{name}: S1 width {v} must be at least 1")
        if v > w:
            raise SurgeryError(f"{name}: S1 width {v} is more than the layer's {w} filters")
    return s1


# ----------------------------------------------------------------------------- plan and apply


def _convs(mods) -> list[nn.Conv2d]:
    return [m for m in mods if isinstance(m, nn.Conv2d)]


def _structure(module: nn.Module, input_shape, n1_hidden, s1_classes):
    """Chain and the empty cascade (shared by the split and its replay)."""
    if is_cascade(module):
        raise SurgeryError("the model is already an OnionNet cascade; split its monolithic source instead")
    mods, names = chain_layers(module, input_shape)
    return mods, names, _cascade_of(mods, names, n1_hidden, s1_classes)


def _cascade_of(mods, names, n1_hidden, s1_classes) -> OnionCascade:
    blocks, cin = blocks_of(mods, where="chain")
    conv_names = [names[i] for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    blocks = tuple(type(b)(b.conv, b.post, nm) for b, nm in zip(blocks, conv_names))
    if len(blocks) < 2:
        raise SurgeryError("onion split needs at least two conv/linear layers (a hidden one and the output)")
    n = [b.conv.out_channels for b in blocks]
    n1 = tuple(n1_hidden) + (int(s1_classes),)
    n2 = tuple(a - b for a, b in zip(n[:-1], n1_hidden)) + (n[-1],)
    return OnionCascade(blocks, cin, n1, n2)


def _s1_split(pairs: Sequence[partition.Partition], n_hidden: int):
    """S1/S2 channel index lists of every hidden layer's outputs."""
    out = []
    for p in pairs[:n_hidden]:
        s1 = [c for c, g in enumerate(p.out_groups) if g == 0]
        s2 = [c for c, g in enumerate(p.out_groups) if g == 1]
        out.append((s1, s2))
    return out


def _energy(conv: nn.Conv2d) -> torch.Tensor:
    e = conv.weight.detach().to(torch.float64).pow(2).sum((2, 3))  # (out, in/groups)
    if conv.groups > 1:  # a grouped conv kept whole: expand to (out, in) with zeros off the groups
        full = torch.zeros(conv.out_channels, conv.in_channels, dtype=torch.float64)
        og, ig = conv.out_channels // conv.groups, conv.in_channels // conv.groups
        for g in range(conv.groups):
            full[g * og:(g + 1) * og, g * ig:(g + 1) * ig] = e[g * og:(g + 1) * og]
        e = full
    total = e.sum()
    return e / total if total > 0 else e


def _bn_modules(seq: nn.Sequential) -> list[nn.BatchNorm2d]:
    return [m for m in seq if isinstance(m, nn.BatchNorm2d)]


def _bn_after(mods, conv_index: int) -> list[nn.BatchNorm2d]:
    """BatchNorms of the block that starts at the conv_index-th conv."""
    out, seen = [], -1
    for m in mods:
        if isinstance(m, nn.Conv2d):
            seen += 1
        elif seen == conv_index and isinstance(m, nn.BatchNorm2d):
            out.append(m)
    return out


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: list[int]) -> None:
    i = torch.tensor(idx, dtype=torch.long)
    for name in ("weight", "bias", "running_mean", "running_var"):
        s, d = getattr(src, name), getattr(dst, name)
        if s is not None and d is not None:
            d.copy_(s.index_select(0, i))
    if src.num_batches_tracked is not None and dst.num_batches_tracked is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


@torch.no_grad()
def _fill(cascade: OnionCascade, mods, splits, image_channels: int) -> str:
    """Copy the monolithic weights into the cascade; returns how the S1 head was initialised."""
    convs = _convs(mods)
    L = len(convs)
    prev_s1, prev_s2 = list(range(image_channels)), []  # layer 0 reads the image: both stages, "S1"
    for l, conv in enumerate(convs):
        w = conv.weight
        b = conv.bias
        ridx = lambda idx: torch.tensor(idx, dtype=torch.long)
        if l < L - 1:
            s1, s2 = splits[l]
        else:
            s1, s2 = [], list(range(conv.out_channels))
        if l < L - 1:
            c1 = cascade.s1[l][0]
            if conv.groups > 1:
                c1.weight.copy_(w)  # kept whole (checked when the cascade was built)
            else:
                c1.weight.copy_(w.index_select(0, ridx(s1)).index_select(1, ridx(prev_s1)))
            if b is not None:
                c1.bias.copy_(b.index_select(0, ridx(s1)))
            for dst, src in zip(_bn_modules(cascade.s1[l]), _bn_after(mods, l)):
                _copy_bn(dst, src, s1)
        if s2:
            c2 = cascade.s2[str(l)][0]
            cols = prev_s1 + prev_s2 if l > 0 else prev_s1  # S2 reads [S1 maps, S2 maps]
            c2.weight.copy_(w.index_select(0, ridx(s2)).index_select(1, ridx(cols)))
            if b is not None:
                c2.bias.copy_(b.index_select(0, ridx(s2)))
            for dst, src in zip(_bn_modules(cascade.s2[str(l)]), _bn_after(mods, l)):
                _copy_bn(dst, src, s2)
        if l < L - 1:
            prev_s1, prev_s2 = s1, s2
    # S1's own output layer
    last = convs[-1]
    head = cascade.s1[L - 1][0]
    k, c = cascade.s1_classes, last.out_channels
    w_s1 = last.weight.index_select(1, torch.tensor(prev_s1, dtype=torch.long))  # (C, n1, kh, kw)
    if k == c:
        head.weight.copy_(w_s1)
        if last.bias is not None and head.bias is not None:
            head.bias.copy_(last.bias)
        how = "copied"
    elif c == 1 and k == 2:
        head.weight.copy_(torch.cat([-w_s1, w_s1]) / 2)
        if last.bias is not None and head.bias is not None:
            head.bias.copy_(torch.cat([-last.bias, last.bias]) / 2)
        how = "binary"
    else:
        how = "default"
    for dst, src in zip(_bn_modules(cascade.s1[L - 1]), _bn_after(mods, L - 1)):
        if dst.num_features == src.num_features:
            _copy_bn(dst, src, list(range(src.num_features)))
    return how


def _zero_filled(cascade: OnionCascade, mods, splits, image_channels: int) -> MonolithicChain:
    """The monolithic chain (Linear as conv) with every dropped block W[S1_out_l, S2_in_{l-1}] zeroed."""
    n = [c.out_channels for c in _convs(mods)]
    mono = MonolithicChain(cascade.blocks, image_channels, n)
    src = [m for m in mods]
    with torch.no_grad():
        for d, s in zip(mono.features, src):
            if isinstance(d, (nn.Conv2d, nn.BatchNorm2d)):
                d.load_state_dict(s.state_dict())
        convs = _convs(list(mono.features))
        for l in range(1, len(convs) - 1):
            s1_out = torch.tensor(splits[l][0], dtype=torch.long)
            s2_in = torch.tensor(splits[l - 1][1], dtype=torch.long)
            if len(s1_out) and len(s2_in):
                w = convs[l].weight
                rows = w[s1_out]
                rows[:, s2_in] = 0
                w[s1_out] = rows
    return mono.eval()


def _cross_channel(cascade: OnionCascade) -> list[str]:
    """Blocks with a layer that mixes channels (LRN) on a split layer (both stages have filters)."""
    return [b.name for l, b in enumerate(cascade.blocks)
            if cascade.n2[l] and l < cascade.depth - 1 and any(isinstance(p, nn.LocalResponseNorm) for p in b.post)]


def split(net: Net, s1: float | Sequence[int], *, s1_classes: int | None = None, seed: int = 0,
          verify: bool = True, probe: Probe | None = None) -> tuple[Net, SplitReport]:
    """Split ``net`` (never mutated) into an OnionNet cascade; see the module docstring.
    ``probe``: real images (``--data``) to measure ``moved`` on instead of random inputs."""
    net.require_editable("split into an OnionNet cascade")
    s1 = check_s1(s1)
    if is_cascade(net.module):
        raise SurgeryError(f"{net.source} is already an OnionNet cascade; split its monolithic source instead")
    mods, names = chain_layers(net.module, net.input_shape)
    mods = [copy.deepcopy(m) if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) else m for m in mods]
    convs = _convs(mods)
    if len(convs) < 2:
        raise SurgeryError(f"{net.source}: onion split needs at least two conv/linear layers "
                           f"(a hidden one and the output)")
    conv_names = [names[i] for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    n = [c.out_channels for c in convs]
    n1 = s1_widths(s1, n, conv_names)
    k = n[-1] if s1_classes is None else int(s1_classes)
    if k < 1:
        raise SurgeryError(f"--s1-classes {k} must be at least 1")
    dtype = convs[0].weight.dtype
    cascade = _cascade_of(mods, names, n1, k).to(dtype)  # also checks the widths and grouped convs
    # which filters: the shared balanced partition search over the hidden conv layers
    energies = [_energy(c) for c in convs[:-1]]
    sizes = [[a, w - a] for a, w in zip(n1, n[:-1])]
    image = convs[0].in_channels
    pairs = partition.search_chain(energies, sizes, KEEP, first_in=(0,) * image, seed=seed)
    splits = _s1_split(pairs, len(n1))
    head = _fill(cascade, mods, splits, image)
    cascade.eval()
    layers = []
    for l, (conv, name) in enumerate(zip(convs[:-1], conv_names)):
        prev_n2 = 0 if l == 0 else n[l - 1] - n1[l - 1]
        kh, kw = conv.kernel_size
        layers.append(LayerSplit(l, name, (kh, kw), n[l], n1[l], n[l] - n1[l], kh * kw * prev_n2 * n1[l],
                                 1.0 - pairs[l].retained, 1.0 - pairs[l].baseline))
    notes = []
    report_v = None
    if verify:
        cross = _cross_channel(cascade)
        select = lambda outs: [outs[1]]  # the cascade's S2 output
        if cross:
            notes.append(f"no exactness check: {', '.join(cross)} normalise across channels (LRN), which each stage "
                         f"does over its own channels")
        else:
            mono = _zero_filled(cascade, mods, splits, image).to(dtype)
            v = compare(mono, cascade, net.input_shape, select=select, dtype=dtype)
            if not v.ok(VERIFY_RTOL):
                raise SurgeryError(f"{net.source}: the cascade differs from the monolithic net with the dropped blocks "
                                   f"zero-filled by {v.max_rel:.3g} (relative; limit {VERIFY_RTOL:g}); this is a bug, "
                                   f"please report it")
            report_v = {"max_abs": v.max_abs, "max_rel": v.max_rel}
    check_shape(probe, net.input_shape, net.source or "the model")
    moved = _moved(net.module, cascade, net.input_shape, dtype, probe)
    step = Step("onion_split", {"n1": list(n1), "s1_classes": k, "input_shape": list(net.input_shape)})
    out = net.evolve(cascade, step)
    rep = SplitReport(
        model=net.source, n1=cascade.n1, n2=cascade.n2, s1_classes=k, head_init=head, params_before=net.params,
        params_after=out.params, dropped_weights=sum(x.dropped_weights for x in layers), layers=tuple(layers),
        verify=report_v, moved=moved, notes=tuple(notes),
        probe=probe_json(probe, sum(x.shape[0] for x in probe_inputs(()))),  # random: probe_inputs' default batches
    )
    return out, rep


@torch.no_grad()
def _moved(original: nn.Module, cascade: OnionCascade, input_shape, dtype, probe: Probe | None = None) -> dict:
    """How far the cascade's S2 output is from the original net on probe inputs (seeded random
    normal, or ``probe``): :func:`surgery.core.verify.compare`'s measure."""
    v = compare(original, cascade, input_shape, select=lambda outs: [outs[1]], dtype=dtype, probe=probe)
    return {"max_abs": v.max_abs, "max_rel": v.max_rel, "top1_agreement": v.top1_agreement}


@replayable("onion_split")
def _replay(module: nn.Module, args: Mapping) -> nn.Module:
    """Structural replay: the cascade of the freshly built monolithic net (weights load after)."""
    try:
        n1, k = [int(v) for v in args["n1"]], int(args["s1_classes"])
        shape = tuple(int(v) for v in args["input_shape"])
    except (KeyError, TypeError, ValueError):
        raise SurgeryError("checkpoint recipe step onion_split lacks n1/s1_classes/input_shape; "
                           "the file is damaged") from None
    return _structure(module, shape, n1, k)[2]


make_callable(__name__, split)  # surgery.onion.split(...) calls split() (the public API)
