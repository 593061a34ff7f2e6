"""``DarknetNet``: ``layers[i]`` is Darknet layer ``i``; ``build_darknet`` makes one from cfg text."""

from __future__ import annotations


from torch import nn

from surgery.errors import SurgeryError
from zoo.darknet.cfg import _OUTPUT_SECTIONS, Shape, parse_cfg, write_cfg
from zoo.darknet.layers import _LAYERS, _Ctx
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
        net = _Ctx(-1, blocks[0], source, [], (0, 0, 0), (0, 0))
        net.where = f"{source}: [net]: "
        c, h, w = net.int("channels", 0), net.int("height", 0), net.int("width", 0)
        if c > 0 and h > 0 and w > 0:
            self.input_shape: Shape = (c, h, w)
        elif net.int("inputs", 0) > 0:
            self.input_shape = (net.int("inputs", 0), 1, 1)
        else:
            raise net.error("no input size; set channels, height and width (or inputs)")
        if len(blocks) < 2:
            raise SurgeryError(f"{source}: the cfg has no layers after [net]")
        shapes: list[Shape] = []
        layers = []
        for i, block in enumerate(blocks[1:]):
            layer = _LAYERS[block["type"]](_Ctx(i, block, source, shapes, self.input_shape, (h, w)))
            layers.append(layer)
            shapes.append(layer.out_shape)
        self.layers = nn.ModuleList(layers)
        self.output_indices = tuple(l.index for l in layers if l.section in _OUTPUT_SECTIONS) or (len(layers) - 1,)
        self.weights_header = WeightsHeader()
        # Memory plan: free each activation right after its last reader.
        n = len(layers)
        last = {j: j for j in range(-1, n)}
        for layer in layers:
            for j in layer.inputs:
                last[j] = max(last[j], layer.index)
        last[n - 1] = n
        self._free_after: tuple[tuple[int, ...], ...] = tuple(
            tuple(j for j, u in last.items() if u == i) for i in range(n)
        )

    def forward(self, x):
        cache = {-1: x}
        outs = []
        for i, layer in enumerate(self.layers):
            y = layer(*[cache[j] for j in layer.inputs])
            cache[i] = y
            if layer.section in _OUTPUT_SECTIONS:
                outs.append(y)
            for j in self._free_after[i]:
                cache.pop(j, None)
        return tuple(outs) if outs else (cache[len(self.layers) - 1],)

    def cfg_text(self) -> str:
        return write_cfg(self.blocks)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, input_shape={self.input_shape}"


def build_darknet(cfg: str | list[dict], source: str = "<cfg>") -> DarknetNet:
    """A :class:`DarknetNet` from cfg text or parsed blocks (blocks are re-validated)."""
    if not isinstance(cfg, str):
        cfg = write_cfg(cfg)
    return DarknetNet(parse_cfg(cfg, source), source)


# ------------------------------------------------------------------------------------
# .weights
# ------------------------------------------------------------------------------------
