"""``surgery fold MODEL -o OUT``: fold Dirac parameterisation, BatchNorm and linear branches."""

from __future__ import annotations

import torch
import typer

from cli_commands.base import (ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsOpt, app, console, human,
                               load_model, print_json, table, to_jsonable)
from surgery import io as sio
from surgery.errors import SurgeryError
from surgery.fold import KINDS, FoldReport, fold, parse_only

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@app.command("fold")
def fold_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    output: str = typer.Option(..., "-o", "--output", help="Where to write the folded checkpoint (.pt)."),
    only: str = typer.Option(",".join(KINDS), "--only", help="Which folds: a comma list of bn, dirac, branches."),
    dtype: str = typer.Option("float32", "--dtype", help="Precision of the verification: float32 or float64."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
    arch: str = ArchOpt,
    weights: str = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: str = InputOpt,
):
    """Fold Dirac convs, BatchNorm and parallel linear branches into plain convs; verify, then write OUT."""
    kinds = parse_only(only)
    if dtype not in _DTYPES:
        raise SurgeryError(f"--dtype {dtype!r} is not supported; use float32 or float64")
    sio.check_outputs([output], force=force, inputs=[model])  # refuse before the (slow) work
    net = load_model(model, arch, weights, trust_pickle, input)
    folded, rep = fold(net, only=kinds, dtype=_DTYPES[dtype])
    path = sio.save(folded, output, force=force, inputs=[model])
    if json_out:
        print_json({**to_jsonable(rep), "fold_counts": rep.fold_counts, "output": str(path)})
        return
    render(rep)
    console.print(f"wrote {path}")


def render(rep: FoldReport) -> None:
    by_kind: dict[str, list] = {}
    for f in rep.folds:
        by_kind.setdefault(f.kind, []).append(f)
    rows = []
    for kind, fs in by_kind.items():
        names = ", ".join(f.target + (f" ← {'+'.join(f.merged)}" if f.merged and kind != "identity" else "")
                          for f in fs[:3])
        rows.append((kind, len(fs), names + (f", … (+{len(fs) - 3})" if len(fs) > 3 else "")))
    console.print(table(f"fold {rep.source} (only: {','.join(rep.only)})", ["fold", "count", "modules"],
                        rows or [("(none)", 0, "nothing to fold")], right=["count"]))
    if rep.skips:
        console.print(table("skipped", ["fold", "module", "reason"], [(s.kind, s.target, s.reason) for s in rep.skips]))
    types = list(dict.fromkeys([*rep.modules_before, *rep.modules_after]))
    mrows = [(t, rep.modules_before.get(t, 0), rep.modules_after.get(t, 0)) for t in types]
    mrows.append(("params", f"{rep.params_before:,} ({human(rep.params_before)})",
                  f"{rep.params_after:,} ({human(rep.params_after)})"))
    console.print(table("modules", ["type", "before", "after"], mrows, right=["before", "after"]))
    v = rep.verify
    if v is not None:
        console.print(f"verified on {v.probes}×{v.batch} probe inputs ({v.dtype}, eval): "
                      f"max abs diff {v.max_abs:.3g}, max rel diff {v.max_rel:.3g} (limit {rep.rtol:g})")
