"""``surgery eval MODEL [MODEL...] --data DIR [--teacher T]``: accuracy, agreement and KL on images."""

from __future__ import annotations

from typing import List, Optional

import typer

from cli_commands.base import (ArchEachOpt, InputOpt, JsonOpt, TrustOpt, WeightsEachOpt, app, examples, fmt_num,
                               load_models, out, print_json, progress, table)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


@app.command("eval", epilog=examples(
    "surgery data digits digits",
    "surgery eval teacher.pt --data digits",
    "surgery eval root4.pt root4-healed.pt --teacher teacher.pt --data digits",
    "surgery eval a.pt b.pt --data digits/val --json",
    "surgery eval text.pt shared.pt --head 1 --data text     # head 1 of a shared detector vs its own model",
))
def eval_cmd(
    models: List[str] = typer.Argument(..., metavar="MODEL...", help="Models to measure: FILE.pt, FILE.cfg or "
                                                                     "zoo:NAME; several side by side."),
    data: str = typer.Option(..., "--data", help="Folder of .png/.jpg images (one sub-folder per class for accuracy); "
                                                 "a folder with train/ and val/ is measured on val/."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Reference model: top-1 agreement and KL of each "
                                                                   "MODEL to it."),
    batch: int = typer.Option(256, "--batch", help="Images per forward pass."),
    head: Optional[int] = typer.Option(None, "--head", help="Of a shared multi-head detector (surgery share): "
                                                            "measure head N alone (0 = BASE's, 1.. = the tasks')."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    json_out: bool = JsonOpt,
    arch: Optional[List[str]] = ArchEachOpt,
    weights: Optional[List[str]] = WeightsEachOpt,
    trust_code: bool = TrustOpt,
    input: Optional[str] = InputOpt,
):
    """Measure models on labelled image folders: accuracy, and top-1 agreement and KL to a teacher.

    The same images, decoding and normalisation as heal's held-out evaluation (the figures
    are the ones heal prints). --arch/--weights given once per model: the MODELs in order,
    then the teacher.
    """
    from surgery.detect.labels import is_yolo_folder

    if is_yolo_folder(data):  # images/ + labels/: detectors, mAP (cli_commands/eval_detect.py)
        from cli_commands.eval_detect import run_detection_eval

        return run_detection_eval(models, data, teacher=teacher, batch=batch, device=device, json_out=json_out,
                                  arch=arch, weights=weights, trust_code=trust_code, input=input, head=head)
    if head is not None:
        from surgery.core.errors import SurgeryError

        raise SurgeryError(f"--head picks a head of a shared detector measured on a YOLO-format folder; {data} is "
                           "an image folder (drop --head)")
    from surgery.evaluate import evaluate, eval_folder
    from surgery.train import data as tdata

    with progress() as bar:
        task = bar.add_task("checking the images", total=None)

        def update(d, t, label):
            bar.update(task, completed=d, total=t, description=label)

        with tdata.reporting(update):  # a large folder takes a while to check
            folder = eval_folder(data)  # a missing or empty folder fails before any model loads
            nets = load_models(list(models) + ([teacher] if teacher else []), arch, weights, trust_code, input)
            t_net = nets.pop() if teacher else None
            rep = evaluate(nets, folder, teacher=t_net, batch=batch, device=device, progress=update)
    if json_out:
        print_json(rep)
        return
    cols = ["model"] + (["accuracy %"] if rep.labelled else [])
    if t_net is not None:
        cols += ["agreement %", "KL"]
        if any(m.mse_to_teacher is not None for m in rep.models):
            cols.append("MSE")
    rows = []
    for m in ([rep.teacher] if rep.teacher else []) + list(rep.models):
        r = [m.model + (" (teacher)" if m is rep.teacher else "")] + ([_pct(m.accuracy)] if rep.labelled else [])
        if t_net is not None:
            is_t = m is rep.teacher
            r += ["–" if is_t else _pct(m.top1_agreement), "–" if is_t else fmt_num(m.kl_to_teacher)]
            if "MSE" in cols:
                r.append("–" if is_t else fmt_num(m.mse_to_teacher))
        rows.append(r)
    what = (f"{rep.images} images, {len(rep.classes)} classes" if rep.labelled
            else f"{rep.images} images, unlabelled (no accuracy: no class sub-folders)")
    skipped = f", {rep.skipped_images} unreadable skipped" if rep.skipped_images else ""
    con = out()
    con.print(table(f"eval on {rep.data} ({what}{skipped})", cols, rows, right=cols[1:]))
    if t_net is not None:
        con.print("agreement: images where the model's top-1 class is the teacher's; KL: mean KL(teacher || model) "
                  "of the softmax outputs, nats", style="dim", markup=False)
