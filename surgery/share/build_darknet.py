"""The Darknet representation of a share: the combined network as a Darknet cfg (pure
text/blocks maths) and the layer-by-layer weight copy into the network built from it.

Used for Darknet detectors (built from a cfg or the zoo, no earlier surgery, outputs from
yolo/region/detection layers -- so the combined cfg outputs every head); its checkpoint
needs no replay (``ArchSpec("darknet")``) and it can be written as ``.cfg`` + ``.weights``.

Layout of the combined net (the shared-backbone paper, §III), for base layers ``0..B`` and
tasks ``t = 1..T`` cut at ``k``::

    0..B                 the base network, unchanged
    R_1                  [route] layers=k          (R_1 = B + 1)
    R_1+1 .. R_1+(E-k)   task 1's layers k+1..E, renumbered: task layer i -> R_1 + i - k
    R_2                  [route] layers=k          (R_2 = R_1 + E - k + 1)
    ...

The route layer makes ``k`` the "previous layer" of the first task layer, so layers that read
their predecessor implicitly stay as they are. Every ``layers=`` (route) and ``from=``
(shortcut) reference of a task layer is rewritten: a target ``j > k`` is another task layer
(a relative index stays relative, an absolute one becomes ``R + j - k``); a target ``j <= k``
is a shared layer and becomes the absolute base index ``j``. YOLOv3 (107 layers) gives
107 + 1 + (106 - 74) = 140 layers at k=74 and 141 at k=73.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from surgery.core.errors import SurgeryError
from surgery.core.graph import is_darknet
from surgery.core.net import Net

# options that name other layers, per section (zoo.darknet builds only these two)
_REFS = {"route": "layers", "shortcut": "from"}


def _ints(value, where: str) -> list[int]:
    try:
        return [int(p) for p in str(value).split(",") if p.strip()]
    except ValueError:
        raise SurgeryError(f"{where}: cannot read layer references {value!r}") from None


def task_blocks(blocks: Sequence[dict], at: int, route_index: int, source: str = "task") -> list[dict]:
    """The blocks appended for one task: ``[route] layers=at`` at ``route_index`` followed by
    the task's layers ``at+1..`` with their layer references rewritten (see module doc)."""
    layers = list(blocks[1:])  # blocks[0] is [net]
    if not 0 <= at < len(layers) - 1:
        raise SurgeryError(f"{source}: cannot cut at {at}; it has layers 0..{len(layers) - 1}")
    out = [{"type": "route", "layers": str(at)}]
    for i in range(at + 1, len(layers)):
        block = dict(layers[i])
        key = _REFS.get(block["type"])
        if key is not None and key in block:
            new = []
            for v in _ints(block[key], f"{source}: layer {i} [{block['type']}]"):
                j = i + v if v < 0 else v
                if j > at:
                    new.append(v if v < 0 else route_index + j - at)
                else:
                    new.append(j)  # a shared layer: the base's, same index
            block[key] = ",".join(str(v) for v in new)
        out.append(block)
    return out


def combined_blocks(base: Sequence[dict], tasks: Sequence[Sequence[dict]], at: int,
                    sources: Sequence[str] = ()) -> tuple[list[dict], list[int]]:
    """(blocks of the combined net, index of each task's route layer)."""
    blocks = [dict(b) for b in base]
    routes = []
    for t, tb in enumerate(tasks):
        route = len(blocks) - 1  # layer index of the next block
        routes.append(route)
        blocks += task_blocks(tb, at, route, sources[t] if t < len(sources) else f"task {t + 1}")
    return blocks, routes


def layer_map(n_task_layers: int, at: int, route: int) -> dict[int, int]:
    """task layer index -> combined layer index, for the task's layers ``at+1..``."""
    return {i: route + i - at for i in range(at + 1, n_task_layers)}


@torch.no_grad()
def copy_weights(combined: nn.Module, base: nn.Module, tasks: Sequence[nn.Module], at: int,
                 routes: Sequence[int]) -> None:
    """Load base layers into ``combined.layers[0..B]`` and task layer ``i > at`` into
    ``combined.layers[route + i - at]`` (strict per layer: same keys and shapes)."""
    for i, layer in enumerate(base.layers):
        combined.layers[i].load_state_dict(layer.state_dict(), strict=True)
    for task, route in zip(tasks, routes):
        for i, j in layer_map(len(task.layers), at, route).items():
            combined.layers[j].load_state_dict(task.layers[i].state_dict(), strict=True)


def darknet_eligible(nets: Sequence[Net]) -> bool:
    """Every model a Darknet detector (its outputs are yolo/region/detection layers, so a
    combined cfg outputs every head) with no earlier surgery."""
    from zoo.darknet import OUTPUT_SECTIONS

    return all(n.arch is not None and not n.recipe and is_darknet(n.module)
               and any(l.section in OUTPUT_SECTIONS for l in n.module.layers) for n in nets)


def build_combined(base: Net, tasks: Sequence[Net], k: int) -> tuple[nn.Module, str]:
    """(the combined DarknetNet holding the copied weights, its cfg text)."""
    from zoo.darknet import build_darknet, write_cfg

    blocks, routes = combined_blocks(base.module.blocks, [t.module.blocks for t in tasks], k,
                                     [t.source for t in tasks])
    text = write_cfg(blocks)
    with torch.device("meta"):  # every tensor is copied below: skip the random initialisation
        module = build_darknet(text, source=f"shared-k{k}.cfg")
    module = module.to_empty(device="cpu")
    copy_weights(module, base.module, [t.module for t in tasks], k, routes)
    module.weights_header = base.module.weights_header
    return module, text
