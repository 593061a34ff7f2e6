"""``surgery regroup MODEL --root N``: dense spatial convs -> root (filter-group) convs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli_commands.base import app, examples, fmt_num, human, note_random_weights, out, print_json, table, wrote
from cli_commands.option_groups import ONE_MODEL, declared
from cli_commands.probing import ProbeDataOpt, check_data, probe_for
from cli_commands.writing import output_path, stages
from surgery.core.errors import SurgeryError


@app.command("regroup", epilog=examples(
    "surgery regroup zoo:resnet50:variant=v1 --root 8",
    "surgery regroup model.pt --root 4 --schedule constant --layers 'layer3.*'",
    "surgery regroup yolov3.cfg --root 2 --darknet yolov3-root2.cfg",
))
@declared(ONE_MODEL)
def regroup_cmd(
    model: str = typer.Argument(..., help="Model reference: FILE.pt, FILE.cfg or zoo:NAME[:k=v]."),
    root: int = typer.Option(..., "--root", help="Groups of the first stage's spatial convs (Deep Roots root-N)."),
    schedule: str = typer.Option("deep-roots", "--schedule",
                                 help="deep-roots: halve the groups at each lower resolution (never below 1); "
                                      "constant: N everywhere."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Only these layers: indices, ranges (0-80) and "
                                                                "module-name globs (layer3.*)."),
    permute: str = typer.Option("best", "--permute", help="best: search the channel permutation that keeps the "
                                                          "most weight energy; none: contiguous blocks."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Checkpoint to write (default: "
                                                                      "MODEL-rootN.pt in the current directory)."),
    darknet: Optional[str] = typer.Option(None, "--darknet", help="Also write Darknet OUT.cfg + OUT.weights "
                                                                  "(groups= in the cfg; Darknet models)."),
    probes: int = typer.Option(2, "--probes", help="Random probe batches measuring how far the function moved "
                                                   "(0: skip)."),
    data: Optional[str] = ProbeDataOpt,
    seed: int = typer.Option(0, "--seed", help="Seed of the permutation search's random starts."),
    *, force, json_out, arch, weights, weights_cutoff, trust_pickle, input,
):
    """Regroup dense spatial convs into root (filter-group) convs, keeping the most weight energy.

    Channel permutations are absorbed by the neighbouring layers, so only the dropped
    off-diagonal blocks change the function; the report says how far it moved. Lossy: fine-tune
    the result with `surgery heal`.
    """
    from cli_commands.base import load_model
    from surgery.outputs import plan_outputs, write_outputs

    if root < 1:
        raise SurgeryError(f"--root {root}: give a positive number of groups (1, 2, 4, ..., 64)")
    if schedule not in ("deep-roots", "constant"):
        raise SurgeryError(f"--schedule {schedule!r}: use deep-roots or constant")
    if permute not in ("best", "none"):
        raise SurgeryError(f"--permute {permute!r}: use best or none")
    if probes < 0:
        raise SurgeryError(f"--probes {probes}: give 0 or more")
    if data and probes == 0:
        raise SurgeryError("--data gives the images to measure how far the function moved; drop --probes 0")
    check_data(data)
    outs = plan_outputs(output_path(output, [model], f"-root{root}"), darknet=darknet, force=force,
                        inputs=[model])  # refused before the slow work
    path = outs.checkpoint

    from surgery.regroup import regroup

    with stages("loading the model", "searching permutations, regrouping, measuring", "writing") as step:
        step("loading the model")
        net = load_model(model, arch, weights, trust_pickle, input, weights_cutoff)
        note_random_weights(net)
        if darknet and (net.arch is None or net.arch.kind != "darknet"):
            raise SurgeryError(f"--darknet: {model} is not a Darknet model; write the checkpoint and export it "
                               f"with `surgery export --onnx` instead")
        step("searching permutations, regrouping, measuring")
        new, rep = regroup(net, root, schedule=schedule, layers=layers, permute=permute, probes=probes, seed=seed,
                           probe=probe_for(data, net))
        if not any(l.groups > 1 for l in rep.layers):  # nothing changed: say why, write nothing
            why = "; ".join(f"{s.name}: {s.reason}" for s in rep.skipped[:3]) + (" ..." if len(rep.skipped) > 3 else "")
            raise SurgeryError(f"regroup --root {root}: no conv of {model} is regrouped"
                               + (f" ({why})" if why else " (the schedule gives every conv 1 group)")
                               + "; nothing written")
        step("writing")
        written = write_outputs(new, outs, force=force, inputs=[model])
    import dataclasses

    rep = dataclasses.replace(rep, output=str(path))
    if json_out:
        d = rep.to_json()
        if darknet:
            d["darknet"] = {"cfg": darknet, "weights": str(Path(darknet).with_suffix(".weights")),
                            "identical": written.darknet.identical}
        print_json(d)
        return
    render(rep)
    wrote(path)
    if darknet:
        wrote(f"{darknet} + {Path(darknet).with_suffix('.weights')}", "read back: identical tensors")


def render(rep) -> None:
    con = out()
    rows = []
    for l in rep.layers:
        fixed = "; ".join(f"{side} fixed: {why}" for side, why in l.fixed.items())
        rows.append((l.index, l.name, f"{l.in_channels}→{l.out_channels}", l.groups, f"{l.retained:.4f}",
                     f"{l.contiguous:.4f}", f"{l.expected:.4f}", ",".join(l.permuted) or "-", fixed))
    con.print(table(f"regroup {rep.model} --root {rep.root} ({rep.schedule}, permute {rep.permute})",
                    ["index", "name", "channels", "groups", "retained", "contiguous", "1/groups", "permuted",
                     "notes"], rows, right=["index", "groups", "retained", "contiguous", "1/groups"]))
    if rep.skipped:
        con.print(table("kept dense", ["index", "name", "reason"], [(s.index, s.name, s.reason) for s in rep.skipped],
                        right=["index"]))
    if rep.before is not None and rep.after is not None:
        b, a = rep.before, rep.after

        def row(name, x, y):
            return (name, f"{x:,} ({human(x)})", f"{y:,} ({human(y)})", f"{(y - x) / x * 100:+.1f}%" if x else "-")

        con.print(table("cost (batch 1)", ["", "before", "after", "change"],
                        [row("params", b.params, a.params), row("macs", b.macs, a.macs),
                         row("bytes (read+written)", b.bytes, a.bytes)], right=["before", "after", "change"]))
    if rep.moved is not None:
        m = rep.moved
        top1 = f", top-1 agreement {m.top1_agreement:.3f}" if m.top1_agreement is not None else ""
        con.print(f"moved on {m.probe['source']}: max abs {fmt_num(m.max_abs)}, max rel {fmt_num(m.max_rel)}{top1}"
                  + (" (random inputs say little about a trained classifier: --data DIR measures on images)"
                     if m.probe["kind"] == "random" and m.top1_agreement is not None else ""))
    con.print(f"search {rep.search_s:.1f} s; note: {rep.note}")
