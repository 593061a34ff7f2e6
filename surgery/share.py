"""``surgery share``: one network that runs a shared backbone once and every task's head.

Semantics (DESIGN.md, "Share at k"; Bailer & Fassold, shared-backbone-yolov3): layers
``0..k`` inclusive are the shared backbone, taken from BASE; each TASK contributes its layers
``k+1..end``; task layers that read below ``k+1`` (YOLOv3's routes 86→61 and 98→36) read
the shared layers. The combined model returns BASE's outputs followed by each task's.

**Valid cut.** A cut at ``k`` is valid when

1. ``k`` is a layer of BASE other than its last;
2. no output of BASE or of any TASK is produced at or below ``k`` (else ``k`` is *inside a
   head*: part of a head would be shared);
3. every TASK has the same layers ``0..k`` as BASE: same index, type, name and kind, the
   same parameter shapes (else "the backbones differ in width") and the same configuration
   (stride, padding, groups, the layers a Darknet route/shortcut reads, ...).

Then every edge of a task's data-flow graph (``LayerGraph.nx``) that crosses the cut — a
layer ``i <= k`` read by a layer ``j > k``, e.g. YOLOv3's 74→75, 61→86, 36→98 at k=74 — reads
a shared layer that computes what the task's own layer ``i`` computed (bit for bit when the
weights are equal, see below), which is all the combined net needs. Where the edges go is
free: a head may reach back to any shared layer, and several edges may cross the cut.

**Two representations.**

- Darknet detectors (built from a cfg or the zoo, no earlier surgery, outputs from
  yolo/region/detection layers — so the combined cfg outputs every head): the combined net is a
  Darknet cfg (:mod:`surgery.share_darknet`) built by :func:`zoo.darknet.build_darknet`, the
  weights copied layer by layer. Its checkpoint needs no replay (``ArchSpec("darknet")``), and
  it can be written as ``.cfg`` + ``.weights``.
- Any other traceable model (Darknet classifiers included): a ``torch.fx.GraphModule`` ("SharedBackbone") whose graph is
  BASE's graph (submodules under ``base.``) followed, per task, by the task's nodes after the
  cut (submodules under ``heads.<t>.``) reading BASE's nodes where the task read its own
  layers ``0..k``. Recorded as the replayable step ``share`` whose arguments hold each task's
  arch spec and recipe, so loading rebuilds it structurally.

**Checks.** Each task's layers ``0..k`` are compared with BASE's. Equal: every head must
reproduce its source model on probe inputs (max relative difference ≤ ``rtol``). Different
(a task trained end to end): :class:`DivergedError` with the per-layer relative weight
differences, unless ``allow_diverged`` — then the heads are reported with how far they moved.

**Savings** (per extra task, DESIGN.md): the fraction of BASE's params and MACs in layers
``0..k`` (:func:`analyzers.cost.analyze` ``.upto(k)`` over its totals).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import fx, nn

from surgery.errors import SurgeryError
from surgery.graph import LayerGraph, is_darknet, layer_graph, resolve
from surgery.net import ArchSpec, Net, Step
from surgery.recipe import rebuild, replayable
from surgery.verify import compare

DEFAULT_RTOL = 1e-5
# Probe inputs for the head check: batch 1, two draws (YOLOv3-416 costs ~1 s per image on CPU).
PROBES, PROBE_BATCH = 2, 1

# ------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class LayerDiff:
    """How far a task's shared layer moved from BASE's, as :mod:`analyzers.diff` measures it:
    the element-wise ``|task - base| / mean|base|`` of the layer's weights (median and max)
    and of its biases (median; Darknet: the conv bias or BN beta)."""

    index: int
    name: str
    weight_rel: float  # median
    weight_max: float
    bias_rel: float | None  # median; None: the layer has no bias


@dataclass(frozen=True)
class Head:
    source: str
    outputs: int  # output tensors this head contributes, in order
    layers_equal: bool  # its layers 0..k equal BASE's (always True for BASE itself)
    max_abs_diff: float  # its outputs in the combined model vs in its source model
    max_rel_diff: float  # max_abs_diff / max |source output|
    diverged_layers: tuple[LayerDiff, ...] = ()


@dataclass(frozen=True)
class Pair:
    combined: int
    separate: int


@dataclass(frozen=True)
class Fraction:
    params: float
    macs: float


@dataclass(frozen=True)
class Cut:
    """A checked cut point: ``at`` (layer index) and the data-flow edges that cross it."""

    at: int
    name: str
    last: int  # BASE's last layer index
    edges: tuple[tuple[int, int], ...]  # (i <= at, j > at) in BASE's graph
    outputs: tuple[int, ...] = ()  # output tensors of BASE, then of each task


@dataclass(frozen=True)
class ShareReport:
    at: int
    at_name: str
    representation: str  # "darknet" | "fx"
    layers: int  # layers of the combined model's layer table
    heads: tuple[Head, ...]  # BASE first, then each task
    params: Pair
    macs: Pair
    saved_fraction: Fraction  # per extra task: layers 0..at of BASE over BASE's total
    shared: Mapping[str, int]  # params/macs of BASE's layers 0..at
    cut_edges: tuple[tuple[int, int], ...]
    rtol: float
    probe_shape: tuple[int, ...]
    output: str = ""  # set by the caller that writes the model
    darknet: str | None = None
    onnx: str | None = None

    def to_json(self) -> dict:
        return {
            "at": self.at,
            "at_name": self.at_name,
            "representation": self.representation,
            "layers": self.layers,
            "heads": [
                {"source": h.source, "outputs": h.outputs, "layers_equal": h.layers_equal,
                 "max_abs_diff": h.max_abs_diff, "max_rel_diff": h.max_rel_diff,
                 **({"diverged_layers": [vars(d) for d in h.diverged_layers]} if h.diverged_layers else {})}
                for h in self.heads
            ],
            "params": vars(self.params),
            "macs": vars(self.macs),
            "saved_fraction": vars(self.saved_fraction),
            "shared": dict(self.shared),
            "cut_edges": [list(e) for e in self.cut_edges],
            "rtol": self.rtol,
            "probe_shape": list(self.probe_shape),
            "output": self.output,
            "darknet": self.darknet,
            "onnx": self.onnx,
        }


@dataclass(frozen=True)
class SweepRow:
    at: int
    at_name: str
    saved_fraction: Fraction
    shared: Mapping[str, int]  # params/macs of BASE's layers 0..at


@dataclass(frozen=True)
class SweepReport:
    base: str
    tasks: tuple[str, ...]
    total: Mapping[str, int]  # BASE's params/macs
    sweep: tuple[SweepRow, ...]

    def to_json(self) -> dict:
        return {
            "base": self.base,
            "tasks": list(self.tasks),
            "total": dict(self.total),
            "sweep": [{"at": r.at, "at_name": r.at_name, "saved_fraction": vars(r.saved_fraction),
                       "shared": dict(r.shared)} for r in self.sweep],
        }


class DivergedError(SurgeryError):
    """A task's shared layers differ from BASE's; ``heads`` carries the per-layer differences."""

    def __init__(self, message: str, heads: Sequence[Head]):
        super().__init__(message)
        self.heads = tuple(heads)


# ------------------------------------------------------------------------------ the cut


def _out_layers(lg: LayerGraph) -> list[int]:
    """Layer indices producing the model's outputs, in output order (through plumbing)."""
    out = next(n for n in reversed(lg.gm.graph.nodes) if n.op == "output")
    found: list[int] = []

    def visit(a):
        if isinstance(a, fx.Node):
            lay = lg.layer_of(a)
            if lay is not None:
                found.append(lay.index)
            else:
                for b in a.all_input_nodes:
                    visit(b)
        elif isinstance(a, (list, tuple)):
            for b in a:
                visit(b)
        elif isinstance(a, dict):
            for b in a.values():
                visit(b)

    visit(out.args[0])
    return found


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


def _n_outputs(lg: LayerGraph) -> int:
    out = next(n for n in reversed(lg.gm.graph.nodes) if n.op == "output")
    return len(_flat_nodes(out.args[0]))


def plan_cut(base: Net, tasks: Sequence[Net], at: int | str) -> Cut:
    """Check that ``at`` is a valid cut for ``base`` and every task (module doc); one-line
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
    _check_outputs(base.source, _out_layers(lgb), k, at)
    sd_b = _state_shapes(base.module)
    prefix = [l for l in lgb.layers if l.index <= k]
    outputs = [_n_outputs(lgb)]
    for task in tasks:
        lgt = layer_graph(task.module)
        tprefix = [l for l in lgt.layers if l.index <= k]
        if len(tprefix) == len(lgt.layers):
            raise SurgeryError(f"--at {at}: {task.source} has no layers after {k} (its last is "
                               f"{lgt.layers[-1].index}); it has no head to share")
        _check_outputs(task.source, _out_layers(lgt), k, at)
        outputs.append(_n_outputs(lgt))
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


def _check_outputs(source: str, outs: list[int], k: int, at) -> None:
    inside = sorted(i for i in outs if i <= k)
    if inside:
        raise SurgeryError(
            f"--at {at}: layer {k} is inside a head of {source}: its output layer {inside[0]} is at or below the "
            f"cut; share only layers below the first output (at most {min(outs) - 1})")


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


def compare_layers(base: Net, task: Net, k: int) -> tuple[bool, tuple[LayerDiff, ...]]:
    """Are the task's layers 0..k equal to BASE's (every weight and running statistic, bit for
    bit)? If not, how far each differing layer moved, by :func:`analyzers.diff.diff`."""
    lgb, lgt = layer_graph(base.module), layer_graph(task.module)
    tb = {i: t for i, _, t in _layer_tensors(base.module, lgb, k)}
    differ = []
    for i, name, tt in _layer_tensors(task.module, lgt, k):
        bt = tb.get(i, {})
        if not all(s in bt and torch.equal(v, bt[s]) for s, v in tt.items()):
            differ.append((i, name))
    if not differ:
        return True, ()
    from analyzers.diff import diff

    rows = diff(base.module, task.module, layers=[i for i, _ in differ], kinds=("weight", "bias"),
                savings=False).layers
    out = []
    for i, name in differ:
        w = [r.stats for r in rows if r.index == i and r.kind == "weight"]
        b = [r.stats for r in rows if r.index == i and r.kind == "bias"]
        out.append(LayerDiff(i, name, max((s.median for s in w), default=0.0), max((s.max for s in w), default=0.0),
                             max((s.median for s in b), default=None) if b else None))
    return False, tuple(out)


# ------------------------------------------------------------------------------ building


def _flat_nodes(a) -> list[fx.Node]:
    if isinstance(a, fx.Node):
        return [a]
    if isinstance(a, dict):
        a = list(a.values())
    if isinstance(a, (list, tuple)):
        return [n for b in a for n in _flat_nodes(b)]
    return []


def build_shared(base: nn.Module, tasks: Sequence[nn.Module], at: int) -> fx.GraphModule:
    """The fx representation: BASE's whole graph, then each task's nodes after layer ``at``
    (reading BASE's layers where they read their own layers ``0..at``). Returns a flat tuple:
    BASE's outputs, then each task's. Uses (does not copy) the given modules."""
    root = nn.Module()
    root.base = base
    root.heads = nn.ModuleList(tasks)
    graph = fx.Graph()
    lgb = layer_graph(base)
    env: dict[fx.Node, fx.Node] = {}
    shared: dict[int, fx.Node] = {}
    x = None
    outputs: list[fx.Node] = []

    def copy_into(lg: LayerGraph, env, prefix: str, cut: int | None) -> list[fx.Node]:
        nonlocal x
        outs = []
        for n in lg.gm.graph.nodes:
            if n.op == "placeholder":
                if x is None:
                    x = graph.placeholder("x")
                elif cut is None:
                    raise SurgeryError("share supports models with one input tensor")
                env[n] = x
                continue
            if n.op == "output":
                outs = [env[o] for o in _flat_nodes(n.args[0])]
                continue
            lay = lg.layer_of(n)
            if cut is not None and lay is not None and lay.index <= cut:
                env[n] = shared[lay.index]
                continue
            new = graph.node_copy(n, lambda a: env[a])
            if n.op in ("call_module", "get_attr"):
                new.target = f"{prefix}.{n.target}"
            new.meta.pop("surgery.layer", None)
            env[n] = new
            if cut is None and lay is not None:
                shared[lay.index] = new
        return outs

    outputs += copy_into(lgb, env, "base", None)
    for t, task in enumerate(tasks):
        outputs += copy_into(layer_graph(task), {}, f"heads.{t}", at)
    graph.output(tuple(outputs))
    gm = fx.GraphModule(root, graph, class_name="SharedBackbone")
    gm.graph.eliminate_dead_code()  # plumbing copied from a task's shared part
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


@replayable("share")
def _replay_share(module: nn.Module, args: Mapping) -> nn.Module:
    """Structural replay of the fx representation: rebuild each task from its arch + recipe."""
    try:
        at = int(args["at"])
        specs = list(args["tasks"])
        tasks = [rebuild(ArchSpec.from_dict(t["arch"]), [Step.from_dict(s) for s in t.get("recipe", [])])
                 for t in specs]
    except (KeyError, TypeError, ValueError) as e:
        raise SurgeryError(f"malformed 'share' step in checkpoint ({type(e).__name__}: {e})") from None
    return build_shared(module, tasks, at)


_DARKNET_OUTPUTS = ("yolo", "region", "detection")


def darknet_eligible(nets: Sequence[Net]) -> bool:
    """Darknet representation: every model a Darknet detector (its outputs are yolo/region/
    detection layers, so a combined cfg outputs every head) with no earlier surgery."""
    return all(n.arch is not None and not n.recipe and is_darknet(n.module)
               and any(l.section in _DARKNET_OUTPUTS for l in n.module.layers) for n in nets)


def _build_darknet(base: Net, tasks: Sequence[Net], k: int) -> tuple[nn.Module, str]:
    from surgery.share_darknet import combined_blocks, copy_weights
    from zoo.darknet import build_darknet, write_cfg

    blocks, routes = combined_blocks(base.module.blocks, [t.module.blocks for t in tasks], k,
                                     [t.source for t in tasks])
    text = write_cfg(blocks)
    name = f"shared-k{k}.cfg"
    with torch.device("meta"):  # every tensor is copied below: skip the random initialisation
        module = build_darknet(text, source=name)
    module = module.to_empty(device="cpu")
    copy_weights(module, base.module, [t.module for t in tasks], k, routes)
    module.weights_header = base.module.weights_header
    return module, text


class _Memo(nn.Module):
    """Runs the combined model once per probe input although every head is compared against
    it (verify.compare draws the same probes for each head)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self._seen: list[tuple[torch.Tensor, object]] = []

    def forward(self, x):
        for seen, y in self._seen:
            if seen.shape == x.shape and seen.dtype == x.dtype and torch.equal(seen, x):
                return y
        y = self.module(x)
        self._seen.append((x.clone(), y))
        return y


# ------------------------------------------------------------------------------ the surgery


def share(
    base: Net,
    tasks: Sequence[Net],
    at: int | str,
    *,
    allow_diverged: bool = False,
    rtol: float = DEFAULT_RTOL,
    darknet: bool | None = None,
    verify: bool = True,
) -> tuple[Net, ShareReport]:
    """Combine ``base`` and ``tasks`` at layer ``at`` (index or name). ``darknet``: force
    (True) or refuse (False) the Darknet representation; default: Darknet when every model is
    one. Never mutates its inputs."""
    if not tasks:
        raise SurgeryError("share needs at least one TASK model besides BASE")
    for n in (base, *tasks):
        n.require_editable("share")
    cut = plan_cut(base, tasks, at)
    k = cut.at

    heads = [Head(base.source, 0, True, 0.0, 0.0)]
    for t in tasks:
        equal, diffs = compare_layers(base, t, k)
        heads.append(Head(t.source, 0, equal, 0.0, 0.0, diffs))
    diverged = [h for h in heads if not h.layers_equal]
    if diverged and not allow_diverged:
        h = diverged[0]
        worst = max(h.diverged_layers, key=lambda d: d.weight_rel)
        raise DivergedError(
            f"{h.source}: {len(h.diverged_layers)} of its layers 0..{k} differ from {base.source}'s (largest median "
            f"|Δw|/mean|w| {worst.weight_rel:.3g} at layer {worst.index}); a model trained end to end does not fit "
            f"the shared backbone — retrain it from layer {k + 1} (surgery retarget), or pass --allow-diverged to "
            f"share anyway and report how far each head moves", heads)

    use_darknet = darknet_eligible([base, *tasks]) if darknet is None else darknet
    if use_darknet and not darknet_eligible([base, *tasks]):
        raise SurgeryError("the Darknet representation needs Darknet detectors (a .cfg or zoo:yolov3..., outputs "
                           "from yolo/region/detection layers) without earlier surgeries; drop --darknet")
    sources = {}
    for n in (base, *tasks):
        sources.update(dict(n.metadata.get("sources", {})))
    meta = {"share": {"at": k, "base": base.source, "tasks": [t.source for t in tasks]}, "sources": sources}
    if use_darknet:
        module, text = _build_darknet(base, tasks, k)
        arch = ArchSpec("darknet", f"shared-k{k}.cfg", {}, cfg=text)
        result = base.evolve(module, None, arch=arch, format="darknet",  # recipe is empty here
                             metadata={**dict(base.metadata), **meta})
    else:
        module = build_shared(copy.deepcopy(base.module), [copy.deepcopy(t.module) for t in tasks], k)
        step = Step("share", {"at": k, "tasks": [
            {"arch": t.arch.to_dict(), "recipe": [s.to_dict() for s in t.recipe], "source": t.source} for t in tasks]})
        result = base.evolve(module, step, metadata={**dict(base.metadata), **meta})
    module.eval()

    heads = _check_heads(base, tasks, result, heads, cut.outputs, rtol, verify)
    report = _report(base, tasks, result, cut, heads, rtol, "darknet" if use_darknet else "fx")
    return result, report


def _check_heads(base, tasks, result, heads, sizes, rtol, verify) -> list[Head]:
    """Each head of ``result`` against its source model on the same probe inputs."""
    memo = _Memo(result.module)
    out, start = [], 0
    for n, h, size in zip((base, *tasks), heads, sizes):
        stop = start + size
        if verify:
            rep = compare(n.module, memo, base.input_shape, probes=PROBES, batch=PROBE_BATCH,
                          select=lambda outs, a=start, b=stop: outs[a:b])
            h = Head(h.source, size, h.layers_equal, rep.max_abs, rep.max_rel, h.diverged_layers)
            if h.layers_equal and not rep.ok(rtol):
                raise SurgeryError(
                    f"share: the combined model's head for {h.source} differs from it by {rep.max_rel:.3g} (relative; "
                    f"max abs {rep.max_abs:.3g}) although the layers are equal; nothing written (a bug: please report)")
        else:
            h = Head(h.source, size, h.layers_equal, float("nan"), float("nan"), h.diverged_layers)
        out.append(h)
        start = stop
    return out


def _cost(net: Net):
    from analyzers.cost import analyze

    return analyze(net)


def _totals(rep) -> tuple[int, int]:
    return int(rep.totals.params), int(rep.totals.macs)


def _report(base, tasks, result, cut, heads, rtol, representation) -> ShareReport:
    base_cost = _cost(base)
    bp, bm = _totals(base_cost)
    up = base_cost.upto(cut.at)
    sp, sm = int(up.params), int(up.macs)
    frac = base_cost.shared_fraction(cut.at)
    sep_p, sep_m = bp, bm
    for t in tasks:
        tp, tm = _totals(_cost(t))
        sep_p, sep_m = sep_p + tp, sep_m + tm
    cp, cm = _totals(_cost(result))
    return ShareReport(
        at=cut.at,
        at_name=cut.name,
        representation=representation,
        layers=len(layer_graph(result.module).layers),
        heads=tuple(heads),
        params=Pair(cp, sep_p),
        macs=Pair(cm, sep_m),
        saved_fraction=Fraction(frac["params"], frac["macs"]),
        shared={"params": sp, "macs": sm},
        cut_edges=cut.edges,
        rtol=rtol,
        probe_shape=tuple(base.input_shape),
    )


def sweep(base: Net, tasks: Sequence[Net], ats: Sequence[int | str]) -> SweepReport:
    """The savings per extra task at each cut in ``ats`` (each checked against every task);
    nothing is built."""
    rep = _cost(base)
    bp, bm = _totals(rep)
    rows = []
    for at in ats:
        cut = plan_cut(base, tasks, at)
        up, frac = rep.upto(cut.at), rep.shared_fraction(cut.at)
        rows.append(SweepRow(cut.at, cut.name, Fraction(frac["params"], frac["macs"]),
                             {"params": int(up.params), "macs": int(up.macs)}))
    return SweepReport(base.source, tuple(t.source for t in tasks), {"params": bp, "macs": bm}, tuple(rows))


# ------------------------------------------------------------------------------ outputs


def write_darknet(net: Net, cfg_path, weights_path) -> None:
    """Write a Darknet-representation result as ``.cfg`` + ``.weights``, checked by reading
    them back (:func:`surgery.export.write_darknet`)."""
    from surgery.export import write_darknet as _write

    if net.arch is None or net.arch.kind != "darknet" or net.recipe or not is_darknet(net.module):
        raise SurgeryError("--darknet needs Darknet models (a .cfg or zoo:yolov3...) without earlier surgeries; "
                           "this combined model is a torch.fx graph")
    _write(net, cfg_path, weights_path)
