"""``surgery retarget BASE --at K --classes N``: the starting point of partial retraining."""

from __future__ import annotations

import dataclasses
from typing import Optional

import typer

from cli_commands.base import (app, err_console, examples, human, load_model, note_random_weights, out, print_json,
                               table, wrote)
from cli_commands.option_groups import ONE_MODEL, declared
from cli_commands.writing import output_path, stages


@app.command("retarget", epilog=examples(
    "surgery retarget zoo:yolov3 --at 74 --classes 1        # writes yolov3-1class@74.pt",
    "surgery retarget base.pt --at 74 --classes 1 --seed 1 -o text.pt",
    "surgery retarget yolov3.cfg --at 74 --classes 3 --anchors 12,16,19,36,40,28,36,75,76,55,72,146,142,110,192,243,"
    "459,401 -o logo.pt",
))
@declared(ONE_MODEL)
def retarget_cmd(
    model: str = typer.Argument(..., help="BASE model: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    at: str = typer.Option(..., "--at", help="Last kept layer (index or module name); layers after it are reinitialised."),
    classes: int = typer.Option(..., "--classes", help="Class count of the new task."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="The task checkpoint (.pt); default: "
                                                                      "BASE-Nclasses@K.pt in the current directory."),
    anchors: Optional[str] = typer.Option(None, "--anchors", help="New anchors for Darknet yolo/region heads: "
                                                                  "comma-separated w,h pairs."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the reinitialised layers (default: derived from "
                                                            "BASE, K, N and the anchors; never BASE's own seed)."),
    *, force, json_out, arch, weights, weights_cutoff, trust_pickle, input,
):
    """A task model from BASE: layers 0..K kept, the rest fresh for N classes.

    The starting point of partial retraining (and of `surgery share --at K`): layers 0..K keep
    BASE's weights, layers K+1..end are reinitialised from --seed for --classes (and --anchors).
    """
    from surgery.core import io as sio

    output = output_path(output, [model], f"-{classes}class{'es' if classes != 1 else ''}@{at}")
    sio.check_outputs([output], force=force, inputs=[model, *([weights] if weights else [])])
    sio.check_checkpoint_name(output)
    from surgery.retarget import retarget

    with stages("loading", "retargeting", "writing the checkpoint") as step:
        step("loading")
        net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
        note_random_weights(net)
        step("retargeting")
        task, rep = retarget(net, at, classes, anchors=anchors, seed=seed)
        step("writing the checkpoint")
        path = sio.save(task, output, force=force, inputs=[model])
    rep = dataclasses.replace(rep, output=str(path))
    if rep.unchanged:
        err_console.print(f"surgery: warning: {len(rep.unchanged)} re-initialised tensor(s) equal BASE's "
                          f"({', '.join(rep.unchanged[:3])}{', …' if len(rep.unchanged) > 3 else ''}); pick another "
                          "--seed", markup=False, soft_wrap=True)
    if json_out:
        print_json(rep)
        return
    rows = [
        ("model", rep.model),
        ("kept", f"layers 0..{rep.at} ({rep.at_name}): {len(rep.kept_layers)} with weights, "
                 f"{rep.params_kept:,} params ({human(rep.params_kept)})"),
        ("reinitialised", f"layers {rep.at + 1}..: {len(rep.reinitialised)} with weights, seed {rep.seed}"
                          f"{' (derived)' if rep.seed_derived else ''}"),
        ("classes", f"{', '.join(map(str, rep.old_classes)) or '?'} → {rep.classes}"),
        ("anchors", rep.anchors or "(unchanged)"),
        ("arch", f"{rep.arch} ({rep.how})"),
        ("params", f"{rep.params:,} ({human(rep.params)})"),
    ]
    out().print(table(f"retarget at layer {rep.at}", ["", "value"], rows))
    wrote(path)
