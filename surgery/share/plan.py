"""Planning a share: is ``k`` a valid cut for BASE and every TASK (structure only, nothing
runs), and are a task's layers ``0..k`` equal to BASE's (values)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from surgery.core.errors import SurgeryError
from surgery.core.graph import LayerGraph, layer_graph, resolve
from surgery.core.net import Net
from surgery.share.report import Cut, LayerDiff

# Attributes that do not change what a layer computes (or that depend on the cfg's [net] size).
_NOT_CONFIG = {"training", "inplace", "momentum", "options", "in_shapes", "out_shape", "net_hw", "index", "source",
               "section"}


def _config(module: nn.Module, name: str) -> dict[str, object]:
    """What fixes a layer's function besides its parameter shapes: the plain attributes of the
    layer module and its children (stride, padding, groups, activation slope, the indices a
    Darknet layer reads...)."""
    out = {}
    for qual, m in module.get_submodule(name).named_modules():
        out[f"{qual or '.'}:type"] = type(m).__name__
        for key, v in vars(m).items():
            if not key.startswith("_") and key not in _NOT_CONFIG and isinstance(v, (bool, int, float, str, tuple)):
                out[f"{qual + '.' if qual else ''}{key}"] = v
    return out


def _state_shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _keys_of(layer_name: str, keys) -> list[str]:
    prefix = layer_name + "."
    return [k for k in keys if k.startswith(prefix)]


def check_below_outputs(model: str, lg: LayerGraph, k: int, at) -> None:
    """Refuse a cut ``k`` at or above one of the model's output layers (inside a head)."""
    outs = lg.output_layers()
    inside = sorted(i for i in outs if i <= k)
    if inside:
        raise SurgeryError(
            f"--at {at}: layer {k} is inside a head of {model}: its output layer {inside[0]} is at or below the "
            f"cut; share only layers below the first output (at most {min(outs) - 1})")


def plan_cut(base: Net, tasks: Sequence[Net], at: int | str) -> Cut:
    """Check that ``at`` is a valid cut for ``base`` and every task (the package doc); one-line
    :class:`SurgeryError` otherwise. Structural only: nothing runs."""
    lgb = layer_graph(base.module)
    try:
        layer = resolve(lgb, at)
    except SurgeryError as e:
        raise SurgeryError(f"--at {at}: {e} ({base.source})") from None
    k, last = layer.index, lgb.layers[-1].index
    if k >= last:
        raise SurgeryError(f"--at {at}: layer {k} is the last layer of {base.source}, so no task layers would be "
                           f"left; cut below {last}")
    check_below_outputs(base.source, lgb, k, at)
    sd_b = _state_shapes(base.module)
    prefix = [l for l in lgb.layers if l.index <= k]
    outputs = [len(lgb.output_nodes())]
    for task in tasks:
        lgt = layer_graph(task.module)
        tprefix = [l for l in lgt.layers if l.index <= k]
        if len(tprefix) == len(lgt.layers):
            raise SurgeryError(f"--at {at}: {task.source} has no layers after {k} (its last is "
                               f"{lgt.layers[-1].index}); it has no head to share")
        check_below_outputs(task.source, lgt, k, at)
        outputs.append(len(lgt.output_nodes()))
        sd_t = _state_shapes(task.module)
        for lb, lt in zip(prefix, tprefix + [None] * (len(prefix) - len(tprefix))):
            if lt is None or (lt.index, lt.type, lt.name, lt.kind) != (lb.index, lb.type, lb.name, lb.kind):
                what = f"layer {lt.index} is {lt.name} ({lt.type})" if lt else "has fewer layers"
                raise SurgeryError(
                    f"{task.source} does not have {base.source}'s layers 0..{k}: its {what}, the base's layer "
                    f"{lb.index} is {lb.name} ({lb.type}); share needs the same backbone up to --at")
            if lb.kind != "module":
                continue
            kb, kt = _keys_of(lb.name, sd_b), _keys_of(lt.name, sd_t)
            for key in dict.fromkeys(kb + kt):
                if sd_b.get(key) != sd_t.get(key):
                    raise SurgeryError(
                        f"{task.source}: layer {lb.index} ({lb.name}, {lb.type}) has {key} of shape "
                        f"{list(sd_t.get(key, ()))}, {base.source} has {list(sd_b.get(key, ()))}: the backbones "
                        f"differ in width, so they cannot share layers 0..{k}")
            cb, ct = _config(base.module, lb.name), _config(task.module, lt.name)
            for key in dict.fromkeys([*cb, *ct]):
                if cb.get(key) != ct.get(key):
                    raise SurgeryError(
                        f"{task.source}: layer {lb.index} ({lb.name}, {lb.type}) has {key}={ct.get(key)!r}, "
                        f"{base.source} has {cb.get(key)!r}: they cannot share layers 0..{k}")
    edges = sorted((i, j) for i, j in lgb.nx.edges if i != "input" and i <= k < j)
    return Cut(k, layer.name, last, tuple(edges), tuple(outputs))


# ------------------------------------------------------------------------------ layer equality


def _layer_tensors(module: nn.Module, lg: LayerGraph, k: int):
    """(index, name, {suffix: tensor}) for module layers 0..k with state (weights and stats)."""
    sd = module.state_dict()
    seen = set()
    for lay in lg.layers:
        if lay.index > k or lay.kind != "module" or lay.name in seen:
            continue
        seen.add(lay.name)
        tensors = {key[len(lay.name) + 1:]: sd[key] for key in _keys_of(lay.name, sd)
                   if not key.endswith("num_batches_tracked")}
        if tensors:
            yield lay.index, lay.name, tensors


def _role(layer: nn.Module, suffix: str, darknet: bool) -> str | None:
    """``weight`` / ``bias`` in :mod:`analyzers.diff`'s sense, or None (BN scales, statistics):
    a norm layer's bias is Darknet's "biases" (the conv has none), else a BN shift."""
    owner, _, attr = suffix.rpartition(".")
    norm = isinstance(layer.get_submodule(owner) if owner else layer, _BatchNorm)
    if attr == "weight" and not norm:
        return "weight"
    if attr == "bias" and (not norm or darknet):
        return "bias"
    return None


def compare_layers(base: Net, task: Net, k: int) -> tuple[bool, tuple[LayerDiff, ...]]:
    """Are the task's layers 0..k equal to BASE's (every weight and running statistic, bit for
    bit)? If not, how far each differing layer's weights and biases moved
    (:func:`analyzers.diff_stats.relative_diff_stats`: medians and maxima of ``|t - b| / mean|b|``)."""
    lgb, lgt = layer_graph(base.module), layer_graph(task.module)
    tb = {i: t for i, _, t in _layer_tensors(base.module, lgb, k)}
    differ = []
    for i, name, tt in _layer_tensors(task.module, lgt, k):
        bt = tb.get(i, {})
        if not all(s in bt and torch.equal(v, bt[s]) for s, v in tt.items()):
            differ.append((i, name, tt, bt))
    if not differ:
        return True, ()
    from analyzers.diff_stats import relative_diff_stats

    out = []
    for i, name, tt, bt in differ:
        layer = task.module.get_submodule(name)
        w, b = [], []
        for suffix, t in tt.items():
            role = _role(layer, suffix, lgt.darknet)
            if role is None or suffix not in bt or bt[suffix].shape != t.shape:
                continue
            (w if role == "weight" else b).append(relative_diff_stats(bt[suffix], t)[0])
        out.append(LayerDiff(i, name, max((s.median for s in w), default=0.0), max((s.max for s in w), default=0.0),
                             max((s.median for s in b), default=None) if b else None))
    return False, tuple(out)
