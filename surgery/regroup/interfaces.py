"""Where a permutation of a conv's channels can go: the *interfaces* of the traced graph.

An interface is the tensor between one producer conv and its consumer convs through ops that
pass channels one to one. What each op does to channels is the core's channel-op registry
(:func:`surgery.core.channel_ops.node_channel_op`: torch's BatchNorm, activations, pools, dropout;
the Darknet sections register their own); any other op (a residual add, a concat, a reshape),
the network input or output fixes the interface, and the reason is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from surgery.core.channel_ops import ABSORB, PASS, ChannelOp, node_channel_op
from surgery.core.graph import layer_graph


@dataclass
class Unit:
    """A conv that can absorb permutations: ``conv`` (nn.Conv2d) plus, for a Darknet
    convolutional layer, the per-channel norm inside the same layer."""

    node: fx.Node
    name: str  # module name of the fx node (Conv2d, or the Darknet layer)
    conv_name: str  # module name of the nn.Conv2d itself (or of an nn.Linear consumer)
    conv: nn.Module  # nn.Conv2d; an nn.Linear only as the consumer after a global pool
    inner_bn: str | None = None  # module name of a norm inside the unit (Darknet)


@dataclass
class Interface:
    """One tensor between a producer conv and its consumer convs through per-channel ops."""

    producer: Unit | None
    passes: list[fx.Node] = field(default_factory=list)
    consumers: list[Unit] = field(default_factory=list)
    blocked: str | None = None  # why it cannot be permuted


_NAMES = {"add": "a residual add", "iadd": "a residual add", "cat": "a concat", "flatten": "a reshape",
          "reshape": "a reshape", "view": "a reshape"}


class Graph:
    """The traced model with the channel ops of its nodes."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.lg = layer_graph(module)
        self.gm = self.lg.gm
        self.darknet = self.lg.darknet
        self.regrouping: set[str] = set()  # convs being regrouped (grouped-conv checks accept them)
        self.calls: dict[str, int] = {}
        for n in self.gm.graph.nodes:
            if n.op == "call_module":
                self.calls[str(n.target)] = self.calls.get(str(n.target), 0) + 1

    def sub(self, target) -> nn.Module:
        return self.gm.get_submodule(str(target))

    def op(self, node: fx.Node) -> ChannelOp | None:
        return node_channel_op(node, self.gm)

    def _absorber(self, node: fx.Node, kind: type) -> Unit | None:
        op = self.op(node)
        if op is None or op.kind != ABSORB:
            return None
        name = str(node.target)
        m = self.sub(name)
        conv = m.get_submodule(op.weight) if op.weight else m
        if not isinstance(conv, kind):
            return None
        norm = f"{name}.{op.norm}" if op.norm and getattr(m, op.norm, None) is not None else None
        return Unit(node, name, f"{name}.{op.weight}" if op.weight else name, conv, norm)

    def unit(self, node: fx.Node) -> Unit | None:
        """The conv unit a node calls, or None."""
        return self._absorber(node, nn.Conv2d) if node.op == "call_module" else None

    def is_pass(self, node: fx.Node) -> bool:
        op = self.op(node)
        return op is not None and op.kind == PASS

    def reusable(self, node: fx.Node) -> bool:
        """A module that may run at several places: a pass op without per-channel tensors."""
        op = self.op(node)
        return op is not None and op.kind == PASS and not op.params

    @staticmethod
    def what(node: fx.Node) -> str:
        if node.op == "placeholder":
            return "the network input"
        if node.op == "output":
            return "the network output"
        t = node.target
        if node.op == "call_function":
            name = getattr(t, "__name__", str(t))
            return _NAMES.get(name, f"a {name}")
        return f"{node.target}"

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            m = self.sub(node.target)
            sec = getattr(m, "section", None)
            kind = {"shortcut": "a residual add (shortcut)", "route": "a route/concat"}.get(sec, None)
            if kind is None:
                kind = sec or type(m).__name__
            return f"{kind} ({node.target})"
        if node.op == "call_method" and node.target in ("view", "reshape", "flatten"):
            return f"a reshape ({node.name})"
        return self.what(node)

    def _pooled(self, node: fx.Node) -> bool:
        """A global pool: its output is (B, C, 1, 1)."""
        if node.op != "call_module":
            return False
        m = self.sub(node.target)
        return isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and m.output_size in (1, (1, 1))

    def _flatten(self, node: fx.Node) -> bool:
        """``torch.flatten(x, 1)`` / ``x.flatten(1)`` / ``nn.Flatten()``: after a global pool,
        channel c is feature c."""
        if node.op == "call_module":
            m = self.sub(node.target)
            return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
        if (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return start == 1 and len(node.args) <= 2 and "end_dim" not in node.kwargs
        return False

    def interface_from(self, producer: Unit) -> Interface:
        """Follow the producer's output through per-channel ops to its consumers."""
        iface = Interface(producer)
        if self.calls.get(producer.name, 0) > 1:
            iface.blocked = f"{producer.name} is called more than once"
            return iface
        stack = [producer.node]
        while stack and iface.blocked is None:
            n = stack.pop()
            for u in n.users:
                if u.op == "call_module" and self.calls.get(str(u.target), 0) > 1 and not self.reusable(u):
                    iface.blocked = f"{u.target} is called more than once"
                    break
                unit = self.unit(u)
                if unit is None and self._pooled(n) and self._flatten(u):
                    iface.passes.append(u)  # (B, C, 1, 1) -> (B, C): channels stay features
                    stack.append(u)
                    continue
                linear = self._absorber(u, nn.Linear) if unit is None and u.op == "call_module" else None
                if linear is not None and self._flatten(n) and len(u.all_input_nodes) == 1:
                    iface.consumers.append(linear)
                    continue
                if unit is not None and u.args and u.args[0] is n and len(u.all_input_nodes) == 1:
                    if unit.conv.groups != 1 and unit.name not in self.regrouping:
                        iface.blocked = f"it feeds the grouped conv {unit.name}"
                        break
                    iface.consumers.append(unit)
                elif self.is_pass(u) and u.args and u.args[0] is n and len(u.all_input_nodes) == 1:
                    iface.passes.append(u)
                    stack.append(u)
                else:
                    iface.blocked = f"it also feeds {self.describe(u)}"
                    break
        return iface

    def interface_into(self, consumer: Unit) -> Interface:
        """The interface a conv reads: walk back through per-channel ops to the producer."""
        n = consumer.node.args[0] if consumer.node.args else None
        while isinstance(n, fx.Node) and self.is_pass(n):
            n = n.args[0] if n.args else None
        if not isinstance(n, fx.Node):
            return Interface(None, blocked="its input is not a tensor the graph tracks")
        unit = self.unit(n)
        if unit is None:
            return Interface(None, blocked=f"its input comes from {self.describe(n)}")
        if unit.conv.groups != 1 and unit.name not in self.regrouping:
            return Interface(None, blocked=f"its input comes from the grouped conv {unit.name}")
        return self.interface_from(unit)
