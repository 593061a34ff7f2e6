"""The fx representation of a share: one ``torch.fx.GraphModule`` ("SharedBackbone") whose
graph is BASE's graph (submodules under ``base.``) followed, per task, by the task's nodes
after the cut (submodules under ``heads.<t>.``) reading BASE's nodes where the task read its
own layers ``0..k``. Recorded as the replayable step ``share`` whose arguments hold each
task's arch spec and recipe, so loading rebuilds it structurally."""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import fx, nn

from surgery.core.errors import SurgeryError
from surgery.core.graph import LayerGraph, layer_graph
from surgery.core.net import ArchSpec, Step
from surgery.core.recipe import rebuild, replayable


def build_shared(base: nn.Module, tasks: Sequence[nn.Module], at: int) -> fx.GraphModule:
    """The combined GraphModule: BASE's graph, then each task's layers after ``at`` reading the
    base's layers ``0..at``; outputs: BASE's, then each task's. Uses (does not copy) the given modules."""
    root = nn.Module()
    root.base = base
    root.heads = nn.ModuleList(tasks)
    graph = fx.Graph()
    shared: dict[int, fx.Node] = {}
    x = None
    outputs: list[fx.Node] = []

    def copy_into(lg: LayerGraph, prefix: str, cut: int | None) -> list[fx.Node]:
        nonlocal x
        env: dict[fx.Node, fx.Node] = {}
        for n in lg.gm.graph.nodes:
            if n.op == "placeholder":
                if x is None:
                    x = graph.placeholder("x")
                elif cut is None:
                    raise SurgeryError("share supports models with one input tensor")
                env[n] = x
                continue
            if n.op == "output":
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
        return [env[o] for o in lg.output_nodes()]

    outputs += copy_into(layer_graph(base), "base", None)
    for t, task in enumerate(tasks):
        outputs += copy_into(layer_graph(task), f"heads.{t}", at)
    graph.output(tuple(outputs))
    gm = fx.GraphModule(root, graph, class_name="SharedBackbone")
    gm.graph.eliminate_dead_code()  # plumbing copied from a task's shared part
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm


def share_step(tasks, at: int) -> Step:
    return Step("share", {"at": at, "tasks": [
        {"arch": t.arch.to_dict(), "recipe": [s.to_dict() for s in t.recipe], "source": t.source} for t in tasks]})


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
