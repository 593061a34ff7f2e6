"""``surgery fold MODEL``: fold Dirac parameterisation, BatchNorm and linear branches."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import (app, err_console, examples, fmt_num, human, load_model, note_random_weights, out,
                               print_json, table, wrote)
from cli_commands.option_groups import ONE_MODEL, declared
from cli_commands.probing import ProbeDataOpt, check_data, probe_for
from cli_commands.writing import output_path, stages

_KINDS = "dirac,bn,branches"  # surgery.fold.KINDS (not imported here: the CLI starts without torch)


@app.command("fold", epilog=examples(
    "surgery fold zoo:diracnet34                      # writes diracnet34-folded.pt",
    "surgery fold zoo:yolov3 --darknet yolov3-folded.cfg   # Darknet: batch_normalize=0, biases",
    "surgery fold r50.pt -o r50-nobn.pt --only bn --dtype float64",
))
@declared(ONE_MODEL)
def fold_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="The folded checkpoint (.pt); default: "
                                                                      "MODEL-folded.pt in the current directory."),
    darknet: Optional[str] = typer.Option(None, "--darknet", help="Also write a folded Darknet network as OUT.cfg + "
                                                                  "OUT.weights (batch_normalize=0 with biases)."),
    only: str = typer.Option(_KINDS, "--only", help="Which folds: a comma list of dirac, bn, branches."),
    dtype: str = typer.Option("float32", "--dtype", help="The dtype the models run in for the verification: float32 "
                                                         "or float64."),
    data: Optional[str] = ProbeDataOpt,
    *, force, json_out, arch, weights, weights_cutoff, trust_pickle, input,
):
    """Fold Dirac convs, BatchNorm and parallel linear branches into plain convs; verify, then write.

    Darknet networks fold every batch_normalize=1 layer into its conv (a new cfg with
    batch_normalize=0 and biases). A model with nothing to fold is reported with the reason;
    nothing is written and the exit code is 0.
    """
    from surgery.core.dtypes import dtype_name

    dt = dtype_name(dtype, ("float32", "float64"))
    from surgery.fold import check_kinds, fold
    from surgery.outputs import plan_outputs, write_outputs

    kinds = check_kinds([k.strip() for k in only.split(",") if k.strip()])
    check_data(data)
    outs = plan_outputs(output_path(output, [model], "-folded"), darknet=darknet, force=force,
                        inputs=[model, *([weights] if weights else [])])  # refused before the slow work
    import dataclasses

    import torch

    with stages("loading", "folding and verifying", *(["writing Darknet cfg + weights"] * (darknet is not None)),
                "writing the checkpoint") as step:
        step("loading")
        net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
        note_random_weights(net)
        step("folding and verifying")
        folded, rep = fold(net, only=kinds, dtype=getattr(torch, dt), probe=probe_for(data, net))
        if rep.nothing_to_fold is None:
            written = write_outputs(folded, outs, force=force, inputs=[model], step=step).paths
            rep = dataclasses.replace(rep, output=str(written[0]))
    if json_out:
        print_json(rep)
    else:
        render(rep)
    if rep.nothing_to_fold is not None:
        err_console.print(f"surgery: nothing to fold: {rep.nothing_to_fold}; nothing written", markup=False,
                          soft_wrap=True)
    elif not json_out:
        for p in written:
            wrote(p)


def render(rep) -> None:
    by_kind: dict[str, list] = {}
    for f in rep.folds:
        by_kind.setdefault(f.kind, []).append(f)
    rows = []
    for kind, fs in by_kind.items():
        names = ", ".join(f.target + (f" ← {'+'.join(f.merged)}" if f.merged and kind != "identity" else "")
                          for f in fs[:3])
        rows.append((kind, len(fs), names + (f", … (+{len(fs) - 3})" if len(fs) > 3 else "")))
    out().print(table(f"fold {rep.model} (only: {','.join(rep.only)}; {rep.representation} representation)",
                      ["fold", "count", "modules"], rows or [("(none)", 0, "nothing to fold")], right=["count"]))
    if rep.skips:
        out().print(table("skipped", ["fold", "module", "reason"], [(s.kind, s.target, s.reason) for s in rep.skips]))
    if rep.nothing_to_fold is not None:
        return
    types = list(dict.fromkeys([*rep.modules_before, *rep.modules_after]))
    mrows = [(t, rep.modules_before.get(t, 0), rep.modules_after.get(t, 0)) for t in types]
    mrows.append(("params", f"{rep.params_before:,} ({human(rep.params_before)})",
                  f"{rep.params_after:,} ({human(rep.params_after)})"))
    out().print(table("modules", ["type", "before", "after"], mrows, right=["before", "after"]))
    v = rep.verify
    if v is not None:
        out().print(f"verified on {rep.probe['source']} ({v.probes}×{v.batch}, {v.dtype}, eval): "
                    f"max abs {fmt_num(v.max_abs)}, max rel {fmt_num(v.max_rel)} (limit {rep.rtol:g})")
