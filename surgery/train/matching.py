"""Which student layer's output is compared with which teacher layer's (``at``/``feat``).

**Automatic matching** (the thesis' "different depth" case: attention transfer on the output
of each group of blocks): in each model's layer table (:func:`surgery.core.graph.layer_graph`)
the *stage ends* are, for every spatial size H x W its 4-D layer outputs take, the last layer
in table order producing that size; 1 x 1 outputs (pooled vectors) carry no spatial attention
and are left out. Student and teacher stage ends of equal spatial size are paired, in order.
``--match S:T,...`` names the pairs instead (layer indices or names of either model).

Features are captured with a torch.fx rewrite of the traced model whose output becomes
``(output, (feature, ...))`` (torchvision's ``create_feature_extractor`` does the same); the
rewritten GraphModule shares every parameter and buffer with the model it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import fx, nn

from surgery.core.errors import SurgeryError, first_line
from surgery.core.graph import LayerGraph, layer_graph, resolve


@dataclass(frozen=True)
class Tap:
    index: int
    name: str
    node: str  # fx node name
    shape: tuple[int, ...]  # C x H x W (no batch)


@dataclass(frozen=True)
class Pair:
    student: Tap
    teacher: Tap

    def to_json(self) -> dict:
        return {"student": {"index": self.student.index, "name": self.student.name, "shape": list(self.student.shape)},
                "teacher": {"index": self.teacher.index, "name": self.teacher.name, "shape": list(self.teacher.shape)}}


class _Shapes(fx.Interpreter):
    """Records each node's output shape (no batch) when it is one 4-D tensor. (fx's ShapeProp
    does the same with fake-tensor machinery whose import alone takes seconds.)"""

    def __init__(self, gm: fx.GraphModule, out: dict):
        super().__init__(gm)
        self.out = out

    def run_node(self, n: fx.Node):
        r = super().run_node(n)
        if isinstance(r, torch.Tensor) and r.ndim == 4:
            self.out[n.name] = tuple(int(s) for s in r.shape[1:])
        return r


def layer_shapes(module: nn.Module, input_shape: Sequence[int]) -> tuple[LayerGraph, dict[str, tuple[int, ...]]]:
    """The layer graph and each layer node's output shape (no batch; 4-D tensor outputs only),
    from one eval-mode forward of a zero batch of one. (Not on the meta device: the model is in
    memory anyway to be trained, and meta kernels of batch_norm & co. pull in torch's
    decomposition machinery, seconds of imports for a small model.)"""
    lg = layer_graph(module)
    gm = lg.gm
    shapes: dict[str, tuple[int, ...]] = {}
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        p = next(iter(module.parameters()), None)
        x = torch.zeros((1, *input_shape), device=p.device if p is not None else "cpu")
        with torch.no_grad():
            _Shapes(gm, shapes).run(x)
    except Exception as e:  # the model cannot run a batch of one of its input shape
        raise SurgeryError(f"cannot run {type(module).__name__} on a 1x{'x'.join(map(str, input_shape))} input to "
                           f"find its feature maps ({type(e).__name__}: {first_line(e)})") from None
    finally:
        for m, was in modes.items():
            m.train(was)
    shapes = {k: v for k, v in shapes.items() if k in lg._by_node}
    return lg, shapes


def stage_ends(module: nn.Module, input_shape: Sequence[int]) -> list[Tap]:
    lg, shapes = layer_shapes(module, input_shape)
    last: dict[tuple[int, int], Tap] = {}
    order: list[tuple[int, int]] = []
    for layer in lg.layers:
        shape = shapes.get(layer.node)
        if shape is None or shape[1] * shape[2] == 1:
            continue
        hw = (shape[1], shape[2])
        if hw not in last:
            order.append(hw)
        last[hw] = Tap(layer.index, layer.name, layer.node, shape)
    return [last[hw] for hw in order]


def auto_pairs(student: nn.Module, s_shape, teacher: nn.Module, t_shape) -> list[Pair]:
    s_ends, t_ends = stage_ends(student, s_shape), stage_ends(teacher, t_shape)
    by_hw = {t.shape[1:]: t for t in t_ends}
    pairs = [Pair(s, by_hw[s.shape[1:]]) for s in s_ends if s.shape[1:] in by_hw]
    if not pairs:
        def sizes(ends):
            return ", ".join(f"{t.shape[1]}x{t.shape[2]}" for t in ends) or "none"
        raise SurgeryError(f"no student and teacher stage ends share a spatial size (student: {sizes(s_ends)}; "
                           f"teacher: {sizes(t_ends)}); name the pairs with --match STUDENT_LAYER:TEACHER_LAYER")
    return pairs


def parse_pairs(text: str, student: nn.Module, s_shape, teacher: nn.Module, t_shape) -> list[Pair]:
    """``--match S:T,S:T``: layer indices or names of the student (S) and the teacher (T)."""
    s_lg, s_shapes = layer_shapes(student, s_shape)
    t_lg, t_shapes = layer_shapes(teacher, t_shape)
    pairs = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        s_ref, sep, t_ref = part.rpartition(":")
        if not sep or not s_ref.strip() or not t_ref.strip():
            raise SurgeryError(f"bad --match entry {part!r}; write STUDENT_LAYER:TEACHER_LAYER, e.g. 12:12")
        taps = []
        for lg, shapes, ref, who in ((s_lg, s_shapes, s_ref, "student"), (t_lg, t_shapes, t_ref, "teacher")):
            try:
                layer = resolve(lg, ref.strip())
            except SurgeryError as e:
                raise SurgeryError(f"--match {part}: {who} {e}") from None
            if layer.node not in shapes:
                raise SurgeryError(f"--match {part}: {who} layer {layer.index} ({layer.name}) does not output a "
                                   "C x H x W feature map")
            taps.append(Tap(layer.index, layer.name, layer.node, shapes[layer.node]))
        pairs.append(Pair(*taps))
    if not pairs:
        raise SurgeryError(f"empty --match {text!r}; write STUDENT_LAYER:TEACHER_LAYER,...")
    return pairs


class Tapped(nn.Module):
    """``module`` returning ``(output, (feature, ...))`` for the given fx nodes."""

    def __init__(self, module: nn.Module, nodes: Sequence[str] = ()):
        super().__init__()
        self.nodes = tuple(nodes)
        if not self.nodes:
            self.inner = module
            return
        gm = layer_graph(module).gm  # shares parameters and buffers with ``module``
        graph = gm.graph
        by_name = {n.name: n for n in graph.nodes}
        out = next(n for n in graph.nodes if n.op == "output")
        out.args = ((out.args[0], tuple(by_name[n] for n in self.nodes)),)
        graph.lint()
        gm.recompile()
        self.inner = gm

    def forward(self, x):
        if not self.nodes:
            return self.inner(x), ()
        out, feats = self.inner(x)
        return out, tuple(feats)
