"""The heads of a shared multi-head detector (what ``surgery share`` writes): which of the
model's outputs and which of its layers belong to each task, so one head can be evaluated
(``surgery eval --head N``) or trained (``surgery train --head N``) inside the shared model.

Head ``0`` is BASE's, heads ``1..`` are the tasks in the order ``share`` took them; the
checkpoint's ``share`` metadata says how many outputs each has (BASE's first, then each
task's). A head's **own layers** are found from the data-flow graph, for either
representation of a share (one Darknet net, or the fx graph with ``base.`` and ``heads.<t>.``):
the layers its outputs depend on that no other head's outputs depend on. Everything else — the
shared backbone and the other heads — is what training one head keeps exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import networkx as nx

from surgery.core.errors import SurgeryError
from surgery.core.graph import layer_graph
from surgery.core.net import Net
from surgery.detect.heads import YoloHead, yolo_head


@dataclass(frozen=True)
class SharedHead:
    index: int  # 0 = BASE's head, 1.. = the tasks' in share order
    source: str  # the model this head came from
    outputs: tuple[int, int]  # [start, stop) of the shared model's output tensors
    layers: tuple[int, ...]  # layer indices (the shared model's layer table) no other head uses
    yolo: tuple[YoloHead, ...]  # its [yolo] layers in output order; () when the head is no YOLO head

    @property
    def classes(self) -> int | None:
        return self.yolo[0].classes if self.yolo else None

    def describe(self) -> str:
        what = f"{self.classes} class{'es' if self.classes != 1 else ''}" if self.yolo else "no [yolo] layers"
        return f"{self.index} ({self.source}, {what})"


def is_shared(net: Net) -> bool:
    share = (net.metadata or {}).get("share")
    return isinstance(share, dict) and isinstance(share.get("outputs"), list)


def shared_heads(net: Net) -> tuple[SharedHead, ...]:
    """The heads of a ``surgery share`` result; () for any other model."""
    if not is_shared(net):
        return ()
    share = net.metadata["share"]
    sizes = [int(n) for n in share["outputs"]]
    sources = [str(share.get("base", "BASE")), *(str(t) for t in share.get("tasks", []))]
    lg = layer_graph(net.module)
    out_layers = lg.output_layers()
    if len(out_layers) != sum(sizes) or len(sources) != len(sizes):
        raise SurgeryError(f"{net.source}: its share metadata lists {sum(sizes)} outputs of {len(sources)} models "
                           f"but the model returns {len(out_layers)}; the checkpoint is damaged")
    by_index = {l.index: l for l in lg.layers}
    spans, start = [], 0
    for n in sizes:
        spans.append((start, start + n))
        start += n
    uses = []
    for a, b in spans:
        used: set = set(out_layers[a:b])
        for i in out_layers[a:b]:
            used |= nx.ancestors(lg.nx, i)
        used.discard("input")
        uses.append(used)
    heads = []
    for t, ((a, b), used) in enumerate(zip(spans, uses)):
        others = set().union(*(u for j, u in enumerate(uses) if j != t))
        yolo: list[YoloHead] = []
        for i in out_layers[a:b]:
            mod = net.module.get_submodule(by_index[i].name) if by_index[i].kind == "module" else None
            if getattr(mod, "section", None) != "yolo":
                yolo = []
                break
            yolo.append(dataclasses.replace(yolo_head(mod, i, net.source), index=i))
        heads.append(SharedHead(t, sources[t], (a, b), tuple(sorted(used - others)), tuple(yolo)))
    return tuple(heads)


def pick_head(net: Net, head: int | None) -> SharedHead | None:
    """Head ``head`` of the shared model ``net``; None when ``net`` is no shared model and no
    head is asked for. A shared model without ``head``, or a head it does not have, is refused."""
    heads = shared_heads(net)
    if not heads:
        if head is not None:
            raise SurgeryError(f"--head {head} picks a head of a shared model (`surgery share`); {net.source} is "
                               "not one")
        return None
    listing = ", ".join(h.describe() for h in heads)
    if head is None:
        raise SurgeryError(f"{net.source} is a shared model with heads {listing}; choose one with --head N")
    if not 0 <= head < len(heads):
        raise SurgeryError(f"--head {head}: {net.source} has heads {listing}")
    return heads[head]


def head_frozen(net: Net, head: SharedHead) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    """What training ``head`` alone keeps exactly: (module names, their layer indices, their
    parameter count) of every layer but the head's own — as :func:`surgery.heal.frozen_selection`."""
    own = set(head.layers)
    layers = layer_graph(net.module).layers
    frozen = [l for l in layers if l.index not in own]
    names = tuple(l.name for l in frozen if l.kind == "module")
    mine = tuple(l.name + "." for l in layers if l.index in own and l.kind == "module")
    loose = [n for n, _ in net.module.named_parameters() if not n.startswith(tuple(f"{m}." for m in names) + mine)]
    if loose:  # a parameter outside every layer would train although it is not the head's
        raise SurgeryError(f"{net.source}: parameters {', '.join(loose[:3])} belong to no layer; training head "
                           f"{head.index} alone cannot keep them exactly")
    params = sum(p.numel() for n in names for p in net.module.get_submodule(n).parameters())
    return names, tuple(l.index for l in frozen), params
