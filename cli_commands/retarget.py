"""``surgery retarget BASE --at K --classes N -o TASK``: the starting point of partial retraining."""

from __future__ import annotations

import dataclasses
from typing import Optional

import typer

from cli_commands.base import (ArchOpt, ForceOpt, InputOpt, JsonOpt, TrustOpt, WeightsOpt, app, console, human,
                               load_model, print_json, table)
from surgery import io as sio
from surgery.retarget import retarget


@app.command("retarget")
def retarget_cmd(
    model: str = typer.Argument(..., help="BASE model: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    at: str = typer.Option(..., "--at", help="Last kept layer (index or module name); layers after it are reinitialised."),
    classes: int = typer.Option(..., "--classes", help="Class count of the new task."),
    output: str = typer.Option(..., "-o", "--output", help="Where to write the task checkpoint (.pt)."),
    anchors: Optional[str] = typer.Option(None, "--anchors", help="New anchors for Darknet yolo/region heads: "
                                                                  "comma-separated w,h pairs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the reinitialised layers."),
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
    arch: Optional[str] = ArchOpt,
    weights: Optional[str] = WeightsOpt,
    trust_pickle: bool = TrustOpt,
    input: Optional[str] = InputOpt,
):
    """A task model from BASE: layers 0..K kept, the rest fresh for N classes.

    The starting point of partial retraining (and of `surgery share --at K`): layers 0..K keep
    BASE's weights, layers K+1..end are reinitialised from --seed for --classes (and --anchors).
    """
    sio.check_outputs([output], force=force, inputs=[model])
    net = load_model(model, arch, weights, trust_pickle, input)
    task, rep = retarget(net, at, classes, anchors=anchors, seed=seed)
    path = sio.save(task, output, force=force, inputs=[model])
    rep = dataclasses.replace(rep, output=str(path))
    if json_out:
        print_json(rep)
        return
    rows = [
        ("source", rep.source),
        ("kept", f"layers 0..{rep.at} ({rep.at_name}): {len(rep.kept_layers)} with weights, "
                 f"{rep.params_kept:,} params ({human(rep.params_kept)})"),
        ("reinitialised", f"layers {rep.at + 1}..: {len(rep.reinitialised)} with weights, seed {rep.seed}"),
        ("classes", f"{', '.join(map(str, rep.old_classes)) or '?'} → {rep.classes}"),
        ("anchors", rep.anchors or "(unchanged)"),
        ("arch", f"{rep.arch} ({rep.how})"),
        ("params", f"{rep.params:,} ({human(rep.params)})"),
    ]
    console.print(table(f"retarget at layer {rep.at}", ["", "value"], rows))
    console.print(f"wrote {path}")
