"""``surgery retarget``: a task model that starts from BASE for a new class count.

Layers ``0..k`` keep BASE's weights (and running statistics); layers ``k+1..end`` are
reinitialised from ``seed`` — the starting point of the shared-backbone paper's partial
retraining ("retrain the model starting at layer k"). Sharing such a model with BASE at ``k``
(:func:`surgery.share.share`) is then exact.

How the new structure is described, so a checkpoint rebuilds it without pickle:

- a Darknet model loaded from a cfg: the cfg text is rewritten — every ``[yolo]``/``[region]``
  gets ``classes=N`` (and ``anchors=`` if given), the conv before it
  ``filters = masks × (N + 5)`` (yolo) or ``num × (N + coords + 1)`` (region);
- a zoo model with a ``classes``/``num_classes`` argument (``zoo:yolov3``, ``zoo:resnet18``):
  the same zoo entry with that argument changed (``anchors`` too, for detectors);
- anything else: the replayable step ``retarget`` that replaces the last ``nn.Linear`` /
  ``nn.Conv2d`` after ``k`` with one of ``N`` outputs.

A cut whose layers ``0..k`` would change with the class count (e.g. YOLOv3 ``--at 81``, the
conv before the first yolo layer) is refused: ``k`` is inside a head.

**Seed.** Without one, the seed is derived from what is being made (:func:`derive_seed`: the
source, ``k``, the class count and anchors), never the zoo's fixed build seed: a zoo-built BASE
re-initialised from its own seed would get "new" layers equal to the old ones. Any
re-initialised tensor that still equals its source (and is not a constant such as a fresh
BatchNorm's unit variance) is reported in ``unchanged``.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from surgery.core.callable_module import make_callable
from surgery.core.errors import SurgeryError
from surgery.core.graph import is_darknet, layer_graph, resolve
from surgery.core.net import ArchSpec, Net, Step, count_params
from surgery.core.recipe import replayable

_HEADS = ("yolo", "region")


@dataclass(frozen=True)
class RetargetReport:
    model: str
    at: int
    at_name: str
    classes: int
    old_classes: tuple[int, ...]  # per head (Darknet) or the classifier's outputs
    anchors: str | None
    seed: int
    seed_derived: bool  # True: no seed was given, it was derived (derive_seed)
    arch: str  # the new arch spec, described
    how: str  # "darknet-cfg" | "zoo" | "replay"
    kept_layers: tuple[int, ...]  # layers 0..at holding weights, copied from the source
    reinitialised: tuple[int, ...]  # layers > at holding weights, fresh from seed
    params: int
    params_kept: int
    unchanged: tuple[str, ...] = ()  # re-initialised tensors (state_dict keys) still equal to the source's
    output: str | None = None

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["kept_layers"], d["reinitialised"] = len(self.kept_layers), list(self.reinitialised)
        d["old_classes"], d["unchanged"] = list(self.old_classes), list(self.unchanged)
        return d


# ------------------------------------------------------------------------------ darknet cfg


def retarget_blocks(blocks: list[dict], classes: int, anchors: str | None = None,
                    source: str = "cfg") -> tuple[list[dict], tuple[int, ...]]:
    """Darknet blocks with every yolo/region head set to ``classes`` (and ``anchors``), the
    conv before each resized; returns (blocks, the heads' old class counts)."""
    out = [dict(b) for b in blocks]
    old = []
    for pos, block in enumerate(out):
        if block["type"] not in _HEADS:
            continue
        i = pos - 1  # layer index of the head (blocks[0] is [net])
        conv = out[pos - 1]
        if conv["type"] != "convolutional":
            raise SurgeryError(f"{source}: layer {i} [{block['type']}] does not follow a convolutional layer; "
                               f"cannot resize its input for classes={classes}")
        old.append(int(block.get("classes", 20)))
        num = int(block.get("num", 1))
        if anchors is not None:
            n = len([a for a in anchors.split(",") if a.strip()])
            if n != 2 * num:
                raise SurgeryError(f"--anchors has {n} values but layer {i} [{block['type']}] has num={num}; "
                                   f"give {num} w,h pairs ({2 * num} numbers)")
            block["anchors"] = anchors
        block["classes"] = classes
        if block["type"] == "yolo":
            masks = len([m for m in str(block.get("mask", "")).split(",") if m.strip()]) or num
            conv["filters"] = masks * (classes + 5)
        else:
            conv["filters"] = num * (classes + int(block.get("coords", 4)) + 1)
    if not old:
        raise SurgeryError(f"{source}: no [yolo] or [region] layer to retarget; retarget handles Darknet detectors "
                           "and models with a classifier argument or a final Linear/Conv2d")
    return out, tuple(old)


# ------------------------------------------------------------------------------ generic replay


def _resized(old: nn.Module, classes: int, name: str) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, classes, bias=old.bias is not None)
    if isinstance(old, nn.Conv2d) and old.groups == 1:
        return nn.Conv2d(old.in_channels, classes, old.kernel_size, old.stride, old.padding, old.dilation,
                         bias=old.bias is not None, padding_mode=old.padding_mode)
    raise SurgeryError(f"retarget: {name} is a {type(old).__name__}; only nn.Linear and ungrouped nn.Conv2d "
                       "classifiers can be resized")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


@replayable("retarget")
def _replay_retarget(module: nn.Module, args: Mapping) -> nn.Module:
    try:
        name, classes = str(args["module"]), int(args["classes"])
        old = module.get_submodule(name)
    except (KeyError, ValueError, AttributeError) as e:
        raise SurgeryError(f"malformed 'retarget' step in checkpoint ({type(e).__name__}: {e})") from None
    _set_submodule(module, name, _resized(old, classes, name))
    return module


# ------------------------------------------------------------------------------ the surgery


def _seeded(seed: int):
    from surgery.core.io import seeded

    return seeded(seed)


def _zoo_class_arg(arch: ArchSpec) -> str | None:
    from zoo import registry

    defaults = registry.get(arch.name).defaults()
    return next((k for k in ("classes", "num_classes") if k in defaults), None)


def derive_seed(source: str, at: int, classes: int, anchors: str | None, avoid: int | None = None) -> int:
    """A reproducible seed for the fresh layers, from what is being made (31 bits of SHA-256);
    never ``avoid`` (the seed BASE itself was built from)."""
    text = f"retarget|{source}|{at}|{classes}|{anchors or ''}"
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF
    return seed + 1 if seed == avoid else seed


_WEIGHTS_ONLY = ("train", "heal")  # recipe steps that change weights, never the structure


def retarget(net: Net, at: int | str, classes: int, *, anchors: str | None = None,
             seed: int | None = None) -> tuple[Net, RetargetReport]:
    """A new Net: ``net``'s layers ``0..at`` and fresh layers after it for ``classes`` classes
    (from ``seed``; None: :func:`derive_seed`)."""
    net.require_editable("retarget")
    if classes < 1:
        raise SurgeryError(f"--classes {classes}: need at least one class")
    if anchors is not None:
        anchors = ",".join(a.strip() for a in str(anchors).split(",") if a.strip())
        try:
            [float(a) for a in anchors.split(",")]
        except ValueError:
            raise SurgeryError(f"--anchors {anchors!r}: write comma-separated numbers, e.g. 10,13,16,30,...") from None
    lg = layer_graph(net.module)
    try:
        layer = resolve(lg, at)
    except SurgeryError as e:
        raise SurgeryError(f"--at {at}: {e} ({net.source})") from None
    k = layer.index
    inside = sorted(i for i in lg.output_layers() if i <= k)
    if inside:
        raise SurgeryError(f"--at {at}: layer {k} is inside a head of {net.source}: its output layer {inside[0]} is "
                           f"at or below it; keep only layers below the first output")
    seed_derived = seed is None
    if seed is None:
        built = net.metadata.get("seed")
        seed = derive_seed(net.source, k, classes, anchors, built if isinstance(built, int) else None)

    structural = [s for s in net.recipe if s.op not in _WEIGHTS_ONLY]  # a trained Darknet net is still its cfg
    darknet = (is_darknet(net.module) and not structural
               and any(getattr(l, "section", "") in _HEADS for l in net.module.layers))  # else: a classifier
    step = None
    arch, shape = net.arch, net.input_shape
    if net.arch.kind == "zoo" and not net.recipe and _zoo_class_arg(net.arch):
        key = _zoo_class_arg(net.arch)
        kwargs = {**dict(net.arch.kwargs), key: classes}
        if anchors is not None:
            from zoo import registry

            if "anchors" not in registry.get(net.arch.name).defaults():
                raise SurgeryError(f"--anchors: zoo:{net.arch.name} has no anchors")
            kwargs["anchors"] = anchors
        arch = ArchSpec("zoo", net.arch.name, kwargs)
        with _seeded(seed):
            module = arch.build()
        how = "zoo"
        old = _old_classes(net.module)
    elif darknet:
        from zoo.darknet import build_darknet, write_cfg

        blocks, old = retarget_blocks(net.module.blocks, classes, anchors, net.source)
        text = write_cfg(blocks)
        stem = net.arch.name.rsplit(".cfg", 1)[0] if net.arch.kind == "darknet" else net.arch.name
        arch = ArchSpec("darknet", f"{stem}-classes{classes}.cfg", {}, cfg=text)
        with _seeded(seed):
            module = build_darknet(text, source=arch.name)
        module.weights_header = net.module.weights_header
        how = "darknet-cfg"
    else:
        if anchors is not None:
            raise SurgeryError("--anchors applies to Darknet detectors only")
        cands = [f"{l.name}.{q}" if q else l.name for l in lg.layers if l.index > k and l.kind == "module"
                 for q, m in net.module.get_submodule(l.name).named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not cands:
            raise SurgeryError(f"retarget: {net.source} has no nn.Linear or nn.Conv2d after layer {k} to resize")
        name = cands[-1]  # the classifier: the last one to run
        old = (_out_features(net.module.get_submodule(name)),)
        module = _replay_retarget(copy.deepcopy(net.module), {"module": name, "classes": classes})
        with _seeded(seed):
            for l in lg.layers:
                if l.index > k and l.kind == "module":
                    for m in module.get_submodule(l.name).modules():
                        if hasattr(m, "reset_parameters"):
                            m.reset_parameters()
        step = Step("retarget", {"module": name, "classes": classes})
        how = "replay"

    kept, fresh = _copy_prefix(net, module, k, at)
    unchanged = _unchanged(net.module, module, lg, k)
    module.eval()
    meta = {**dict(net.metadata), "retarget": {"from": net.source, "at": k, "classes": classes, "seed": seed}}
    source = f"retarget({net.source}, at={k}, classes={classes})"
    if step is not None:
        result = net.evolve(module, step, metadata=meta, source=source)
    else:  # recipe is empty here
        result = net.evolve(module, None, arch=arch, input_shape=shape, metadata=meta, source=source)
    report = RetargetReport(
        model=net.source, at=k, at_name=layer.name, classes=classes, old_classes=tuple(old), anchors=anchors,
        seed=seed, seed_derived=seed_derived, arch=result.arch.describe(), how=how, kept_layers=kept,
        reinitialised=fresh, params=count_params(module), params_kept=_params_upto(result, k), unchanged=unchanged)
    return result, report


def _unchanged(src: nn.Module, new: nn.Module, lg, k: int) -> tuple[str, ...]:
    """Keys of tensors in layers after ``k`` that the re-initialisation left equal to the source's.
    Constant tensors (a fresh BatchNorm's zero mean, unit variance, unit scale) are equal by
    construction and not reported."""
    a, b = src.state_dict(), new.state_dict()
    names = [l.name + "." for l in lg.layers if l.index > k and l.kind == "module"]
    out = []
    for key, t in b.items():
        if not any(key.startswith(n) for n in names) or key not in a or a[key].shape != t.shape:
            continue
        if not t.is_floating_point() or t.numel() < 2 or bool((t == t.reshape(-1)[0]).all()):
            continue
        if torch.equal(a[key], t):
            out.append(key)
    return tuple(out)


def _out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _old_classes(module: nn.Module) -> tuple[int, ...]:
    if is_darknet(module):
        return tuple(int(l.classes) for l in module.layers if l.section in _HEADS)
    lin = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return (_out_features(lin[-1]),) if lin else ()


def _copy_prefix(net: Net, module: nn.Module, k: int, at) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Copy the source's layers 0..k into ``module`` (same names and shapes required)."""
    lg_src, lg_new = layer_graph(net.module), layer_graph(module)
    src, new = net.module.state_dict(), module.state_dict()
    kept = []
    fresh = [l.index for l in lg_new.layers if l.index > k and l.kind == "module"
             and any(key.startswith(l.name + ".") for key in new)]
    new_by_index = {l.index: l for l in lg_new.layers}
    for lay in lg_src.layers:
        keys = [key for key in src if key.startswith(lay.name + ".")]
        if lay.kind != "module" or lay.index > k or not keys:
            continue
        other = new_by_index.get(lay.index)
        if other is None or other.name != lay.name:
            raise SurgeryError(f"retarget: layer {lay.index} ({lay.name}) has no counterpart in the new model")
        for key in keys:
            if key not in new or new[key].shape != src[key].shape:
                got = list(new[key].shape) if key in new else "nothing"
                raise SurgeryError(
                    f"--at {at}: layer {lay.index} ({lay.name}, {lay.type}) changes with the class count ({key}: "
                    f"{list(src[key].shape)} -> {got}), so it is inside a head; cut below {lay.index}")
            with torch.no_grad():
                new[key].copy_(src[key])
        if lay.index not in kept:
            kept.append(lay.index)
    return tuple(kept), tuple(dict.fromkeys(fresh))


def _params_upto(net: Net, k: int) -> int:
    from analyzers.cost import analyze

    return int(analyze(net).upto(k).params)


make_callable(__name__, retarget)  # surgery.retarget(...) calls retarget() (the public API)
