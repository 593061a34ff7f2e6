"""``DarknetNet``: ``layers[i]`` is Darknet layer ``i``; ``build_darknet`` makes one from cfg text."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from surgery.core.errors import SurgeryError
from zoo.darknet.cfg import OUTPUT_SECTIONS, Shape, parse_cfg, write_cfg
from zoo.darknet.conv_layers import CONV_LAYERS
from zoo.darknet.head_layers import HEAD_LAYERS
from zoo.darknet.layers import Ctx, no_image_reason
from zoo.darknet.norm_layers import NORM_LAYERS
from zoo.darknet.recurrent import RECURRENT_LAYERS
from zoo.darknet.route_layers import ROUTE_LAYERS
from zoo.darknet.seg_layers import SEG_LAYERS
from zoo.darknet.weights import WeightsHeader


class DarknetNet(nn.Module):
    """A Darknet network: ``layers[i]`` is Darknet layer ``i``.

    ``forward(x)`` returns a tuple: the (raw) outputs of every yolo/region/detection layer
    in order, else the last layer's output as a 1-tuple. Activations are freed as soon as no
    later route/shortcut needs them.
    """

    def __init__(self, blocks: list[dict], source: str = "<cfg>"):
        super().__init__()
        self.source = source
        self.blocks = blocks
        self.net_options = {k: v for k, v in blocks[0].items() if k != "type"}
        net = Ctx(-1, blocks[0], source, [], (0, 0, 0), (0, 0))
        net.where = f"{source}: [net]: "
        c, h, w = net.int("channels", 0), net.int("height", 0), net.int("width", 0)
        images: list[str | None] = [None]  # Darknet's C x H x W or why there is none, per output (no_image_reason)
        if c > 0 and h > 0 and w > 0:
            self.input_shape: Shape = (c, h, w)
        elif net.int("inputs", 0) > 0:
            self.input_shape = (net.int("inputs", 0), 1, 1)
            images = [f"the [net] input is a vector of inputs={self.input_shape[0]} (no channels, height, width)"]
        else:
            raise net.error("no input size; set channels, height and width (or inputs)")
        if len(blocks) < 2:
            raise SurgeryError(f"{source}: the cfg has no layers after [net]")
        shapes: list[Shape] = []
        layers = []
        for i, block in enumerate(blocks[1:]):
            ctx = Ctx(i, block, source, shapes, self.input_shape, (h, w), images)
            ctx.net = net  # the [net] options a layer may read (the recurrent layers' time_steps)
            layer = _BUILDERS[block["type"]](ctx)
            if getattr(layer, "inline_options", None):  # e.g. a softmax tree file's groups: the cfg text carries them
                self.blocks = blocks = [*blocks[:i + 1], {**block, **layer.inline_options}, *blocks[i + 2:]]
            layers.append(layer)
            shapes.append(layer.out_shape)
            images.append(no_image_reason(layer, images))
        self.layers = nn.ModuleList(layers)
        self.output_indices = tuple(l.index for l in layers if l.section in OUTPUT_SECTIONS) or (len(layers) - 1,)
        self.weights_header = WeightsHeader()
        self._free_after = free_after([l.inputs for l in layers])

    def forward(self, x):
        cache = {-1: x}
        outs = []
        for i, layer in enumerate(self.layers):
            y = layer(*[cache[j] for j in layer.inputs])
            cache[i] = y
            if layer.section in OUTPUT_SECTIONS:
                outs.append(y)
            for j in self._free_after[i]:
                cache.pop(j, None)
        return tuple(outs) if outs else (cache[len(self.layers) - 1],)

    def cfg_text(self, darknet: bool = False) -> str:
        """The cfg text that rebuilds this network. ``darknet=True``: the text for Darknet itself,
        without the options surgery inlines (``surgery_tree_groups=``: Darknet reads ``tree=``)."""
        if not darknet:
            return write_cfg(self.blocks)
        return write_cfg([{k: v for k, v in b.items() if not k.startswith("surgery_")} for b in self.blocks])

    def record_groups(self, groups: Mapping[int, int]) -> None:
        """Write ``groups=`` into the cfg of the convolutional layers ``{index: groups}`` whose
        convs were made grouped (``surgery regroup``), so :meth:`cfg_text` rebuilds this network
        with the same layer indices."""
        blocks = [dict(b) for b in self.blocks]
        for i, g in groups.items():
            layer = self.layers[i]
            if layer.section != "convolutional" or layer.conv.groups != int(g):
                raise SurgeryError(f"layer {i} [{layer.section}] has no conv of {g} groups to write groups={g} for")
            blocks[i + 1]["groups"] = layer.options["groups"] = str(int(g))
        self.blocks = blocks

    @torch.no_grad()
    def fuse(self) -> "DarknetNet":
        """A new network, this one untouched: every ``batch_normalize=1`` layer becomes
        ``batch_normalize=0`` with each BatchNorm folded into the weights and bias of the
        convolution or connected unit before it: convolutional, connected and deconvolutional
        layers, and the connected/convolutional sublayers of ``[rnn]``/``[gru]``/``[lstm]``/
        ``[crnn]`` (not a binary=1 or xnor=1 conv: its forward binarizes the weights, so a
        BatchNorm folded into them would not survive; not a standalone ``[batchnorm]``, which
        has no unit before it). Eval semantics: running statistics and this builder's eps
        :data:`BN_EPS`, ``torch.nn.utils.fusion``'s maths in float64. It reads and writes
        ``.weights`` like any Darknet net without BatchNorm (biases, then weights). The fold
        protocol of ``surgery fold``; ``self`` when there is nothing to fold."""
        fused = [l.index for l in self.layers if getattr(l, "bn_foldable", True)
                 and any(getattr(m, "bn", None) is not None for m in l.modules())]
        if not fused:
            return self
        blocks = [dict(b) for b in self.blocks]
        for i in fused:
            blocks[i + 1]["batch_normalize"] = "0"
        first = next(iter(self.parameters()), None)
        with torch.device("meta"):  # every tensor is copied below: skip the random initialisation
            new = DarknetNet(parse_cfg(write_cfg(blocks), self.source), self.source)
        new = new.to_empty(device=first.device if first is not None else "cpu")
        for old, lay in zip(self.layers, new.layers):
            if old.index not in fused:
                lay.load_state_dict(old.state_dict(), strict=True)
                continue
            keep = lay.state_dict()  # tensors outside the BN pairs (none in Darknet's layers today) carry over
            lay.load_state_dict({k: v for k, v in old.state_dict().items() if k in keep}, strict=False)
            targets = dict(lay.named_modules())
            for name, unit in old.named_modules():  # the layer itself, or a recurrent layer's sublayers
                if getattr(unit, "bn", None) is not None:
                    _fold_unit(unit, targets[name])
        new.weights_header = self.weights_header
        return new.train(self.training)

    def fuse_skip_reason(self, name: str) -> str | None:
        """Why :meth:`fuse` keeps the BatchNorm at module path ``name`` (``layers.3.bn``)."""
        parts = name.split(".")
        if len(parts) > 1 and parts[0] == "layers" and parts[1].isdigit():
            layer = self.layers[int(parts[1])]
            if not getattr(layer, "bn_foldable", True):
                return (f"layer {layer.index} is a binary=1/xnor=1 convolution: its forward binarizes the weights, "
                        f"so a BatchNorm folded into them would not survive")
            if layer.section == "batchnorm":
                return f"layer {layer.index} is a standalone [batchnorm]: no convolution before it to fold into"
        return None

    def extra_repr(self) -> str:
        return f"source={self.source!r}, input_shape={self.input_shape}"


def _fold_unit(old: nn.Module, new: nn.Module) -> None:
    """``old.bn`` folded into ``old.conv``/``old.fc``, written to ``new``'s (built without BN)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    unit, bn = (old.conv if hasattr(old, "conv") else old.fc), old.bn
    args = (unit.weight.double(), None, bn.running_mean.double(), bn.running_var.double(), bn.eps,
            bn.weight.double(), bn.bias.double())
    if isinstance(unit, nn.Linear):
        w, b = fuse_linear_bn_weights(*args)
    else:  # a deconvolution keeps its output channels on dim 1
        w, b = fuse_conv_bn_weights(*args, transpose=isinstance(unit, nn.ConvTranspose2d))
    target = new.conv if hasattr(new, "conv") else new.fc
    target.weight.copy_(w.to(unit.weight.dtype))
    target.bias.copy_(b.to(unit.weight.dtype))


# section name -> layer class; cfg.SECTIONS lists the same names (a test checks they agree)
_BUILDERS = {**CONV_LAYERS, **ROUTE_LAYERS, **HEAD_LAYERS, **RECURRENT_LAYERS, **NORM_LAYERS, **SEG_LAYERS}


def free_after(inputs: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """The memory plan of a forward: ``free_after(...)[i]`` lists the activations (layer
    indices, -1 = the input) whose last reader is layer ``i``; ``inputs[i]`` are the layers
    layer ``i`` reads. The last layer's output is never freed. Linear in the number of layers
    and edges (a scan of every activation per layer was quadratic: 60k layers took minutes)."""
    n = len(inputs)
    last = list(range(-1, n))  # last[j + 1]: the last layer reading activation j (itself at first)
    for i, reads in enumerate(inputs):
        for j in reads:
            last[j + 1] = max(last[j + 1], i)
    if n:
        last[n] = n  # the network's output stays
    free: list[list[int]] = [[] for _ in range(n)]
    for j, u in enumerate(last, -1):
        if 0 <= u < n:
            free[u].append(j)
    return tuple(map(tuple, free))


def build_darknet(cfg: str | list[dict], source: str = "<cfg>") -> DarknetNet:
    """A :class:`DarknetNet` from cfg text or parsed blocks (blocks are re-validated)."""
    if not isinstance(cfg, str):
        cfg = write_cfg(cfg)
    return DarknetNet(parse_cfg(cfg, source), source)


# ------------------------------------------------------------------------------------
# .weights
# ------------------------------------------------------------------------------------
