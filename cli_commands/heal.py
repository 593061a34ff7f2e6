"""``surgery heal`` (distil a lossily edited model back towards its original) and ``surgery
train`` (supervised training with folder labels, e.g. a dense teacher): one loop, one module."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import app, err_console, examples, out, print_json, table, wrote
from cli_commands.option_groups import EACH_MODEL, ONE_MODEL, declared
from cli_commands.training_options import TRAINING, resumed, run_rows, train_config
from cli_commands.training_run import run_training


def _fmt_eval(e) -> str:
    parts = []
    if e.get("kl_to_teacher") is not None:
        parts.append(f"KL {e['kl_to_teacher']:.4f}")
    if e.get("top1_agreement") is not None:
        parts.append(f"agreement {100 * e['top1_agreement']:.1f}%")
    if e.get("mse_to_teacher") is not None:
        parts.append(f"MSE {e['mse_to_teacher']:.4g}")
    if e.get("accuracy") is not None:
        parts.append(f"accuracy {100 * e['accuracy']:.1f}%")
    if e.get("map50") is not None:  # detectors (surgery.detect.metrics)
        parts.append(f"mAP@0.5 {100 * e['map50']:.1f}%, mAP@0.5:0.95 {100 * e['map']:.1f}%")
    return ", ".join(parts) or "-"


def _run(params: dict, *, resume_dir: str | None, json_out: bool, op: str) -> None:
    """Check everything, train (under torchrun too), write the output on rank 0, render."""
    from surgery.heal import HealConfig, heal
    from surgery.train.losses import LossSpec

    p = params

    def configure():
        spec = LossSpec.parse(p["loss"], temperature=p["temperature"], kd_weight=p["kd_weight"], beta=p["beta"],
                              feat_weight=p["feat_weight"], ce_weight=p["ce_weight"])
        tcfg = train_config(p, bn=p["bn"])
        tcfg.validate()
        return HealConfig(data=p["data"], val=p["val"], losses=spec, train=tcfg, match=p["match"], freeze=p["freeze"],
                          crop_scale=p["crop_scale"], flip=p["flip"])

    def train(cfg, student, teacher, *, run_dir, hooks):
        from surgery.detect.train import train_detector, wants_detection

        fn = train_detector if teacher is None and wants_detection(student, cfg.data) else heal  # YOLO heads + folders
        args = (student, cfg) if fn is train_detector else (student, teacher, cfg)
        if p.get("head") is not None:  # one head of a shared detector (surgery.detect.shared)
            if fn is not train_detector:
                from surgery.core.errors import SurgeryError

                raise SurgeryError("--head trains one head of a shared detector on a YOLO-format folder; "
                                   f"{cfg.data} is not one")
            return fn(*args, run_dir=run_dir, run_config={"op": op, **p}, resume=bool(resume_dir),
                      force=p["force"], hooks=hooks, head=p["head"])
        return fn(*args, run_dir=run_dir, run_config={"op": op, **p}, resume=bool(resume_dir), force=p["force"],
                  hooks=hooks)

    rep = run_training(p, resume_dir=resume_dir, json_out=json_out, label=op,
                       output_tag="-healed" if op == "heal" else "-trained", configure=configure, train=train,
                       fmt_eval=_fmt_eval)
    if rep is None:  # not rank 0
        return
    if json_out:
        print_json(rep)
        return
    rows = [("model", rep.model)]
    if rep.teacher:
        rows.append(("teacher", rep.teacher))
    rows += [
        ("data", f"{rep.data}: {rep.train_images} training, {rep.val_images} held-out images"
                 + (f", {rep.skipped_images} unreadable skipped" if rep.skipped_images else "")),
        ("losses", ", ".join(f"{k} ({', '.join(f'{a}={b:g}' for a, b in v.items())})" for k, v in rep.losses.items())),
    ]
    if rep.pairs:
        rows.append(("matched", ", ".join(f"{p.student.index}:{p.teacher.index} ({p.student.shape[1]}x{p.student.shape[2]})"
                                         for p in rep.pairs)))
    if rep.frozen_layers:
        rows.append(("frozen", f"{len(rep.frozen_layers)} layers, {rep.frozen_params:,} params"))
    rows += run_rows(rep)
    if rep.teacher_eval.get("accuracy") is not None:
        rows.append(("teacher held-out", _fmt_eval(rep.teacher_eval)))
    rows += [("before", _fmt_eval(rep.before)), ("after", _fmt_eval(rep.after))]
    if rep.kept == "best" and rep.best:
        rows.append(("kept", f"epoch {rep.best['epoch']} (step {rep.best['step']}), the best held-out "
                             f"{_METRIC[rep.best['metric']]}"))
    rows.append(("run", str(rep.run_dir)))
    con = out()
    con.print(table(f"{op} {rep.model}", ["", "value"], rows))
    worse = worse_than_start(rep)
    if worse:
        err_console.print(f"warning: {worse}", markup=False, soft_wrap=True)
    wrote(rep.output)


_METRIC = {"kl_to_teacher": "KL to the teacher", "accuracy": "accuracy", "mse_to_teacher": "MSE to the teacher",
           "map50": "mAP@0.5"}


def worse_than_start(rep) -> str | None:
    """One line when the run ended (its last epoch) worse on the held-out figure it is judged by
    than it started, naming the best epoch; None otherwise."""
    from surgery.train.predict import score

    last = rep.history[-1].get("eval", {}) if rep.history else {}
    b, a = score(rep.before), score(last)
    if b is None or a is None or b[0] != a[0] or a[1] >= b[1]:
        return None
    name = _METRIC[a[0]]

    def show(v):
        return f"{100 * abs(v):.1f}%" if a[0] in ("accuracy", "map50") else f"{abs(v):.4g}"

    best = rep.best
    where = (f"; the best epoch was {best['epoch']} ({name} {show(best['score'])})"
             + (", which the output holds (--keep best)" if rep.kept == "best" else
                "; --keep best writes that epoch instead of the last") if best else "")
    return f"held-out {name} ended worse than it started ({show(b[1])} before, {show(a[1])} after){where}"


_HEAL_EXAMPLES = examples(
    "surgery data digits digits",
    "surgery train zoo:digits_cnn --data digits --epochs 10 --no-flip --crop-scale 0.5 --lr 3e-3 -o teacher.pt",
    "surgery regroup teacher.pt --root 4 -o root4.pt",
    "surgery heal root4.pt --teacher teacher.pt --data digits --loss kd --epochs 4 --no-flip --crop-scale 0.5",
    "torchrun --nproc_per_node=2 $(which surgery) heal root4.pt --teacher teacher.pt --data digits --bn freeze",
    "surgery heal --resume root4-healed.run",
)


def _opts(**kw):
    return kw


@app.command("heal", epilog=_HEAL_EXAMPLES)
@declared(EACH_MODEL, TRAINING)
def heal_cmd(
    model: Optional[str] = typer.Argument(None, metavar="STUDENT", help="The edited model: FILE.pt, FILE.cfg or zoo:NAME."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="The model to match (e.g. the one before the edit)."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder of .png/.jpg images, any depth (train/ and val/ "
                                                             "sub-folders are used as the split)."),
    loss: str = typer.Option("kd", "--loss", help="Comma list of kd, at, feat, ce (ce uses sub-folder labels)."),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="Layers kept exactly: indices, ranges, names, globs "
                                                                 "(e.g. 0-74 or features.*)."),
    match: Optional[str] = typer.Option(None, "--match", help="at/feat layer pairs STUDENT:TEACHER,... "
                                                               "(default: stage ends of equal spatial size)."),
    temperature: float = typer.Option(4.0, "--temperature", help="kd temperature T."),
    kd_weight: float = typer.Option(1.0, "--kd-weight", help="Weight of the kd term."),
    beta: float = typer.Option(1000.0, "--beta", help="at weight beta (Zagoruyko & Komodakis: 1e3)."),
    feat_weight: float = typer.Option(1.0, "--feat-weight", help="Weight of the feat term."),
    ce_weight: float = typer.Option(1.0, "--ce-weight", help="Weight of the ce term."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, augmentation and dropout."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output checkpoint (default: STUDENT-healed.pt)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run directory for epoch checkpoints "
                                                                   "(default: the output with .run)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this run directory "
                                                                 "(its own options are used)."),
    *, val, epochs, steps, batch, lr, optimizer, schedule, weight_decay, bn, crop_scale, device, workers, threads,
    save_every, keep, force, json_out, arch, weights, trust_code, input,
):
    """Train STUDENT until it behaves like TEACHER again (distillation, attention transfer).

    Held-out KL to the teacher, top-1 agreement (and accuracy for labelled folders) after every
    epoch; a run directory with a checkpoint per epoch (--resume continues it). Runs under
    torchrun for more processes (DDP; rank 0 writes). --arch/--weights given twice: STUDENT's,
    then TEACHER's (once: both).
    """
    params = _opts(model=model, teacher=teacher, data=data, val=val, loss=loss, epochs=epochs, steps=steps,
                   batch=batch, lr=lr, optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
                   freeze=freeze, match=match, temperature=temperature, kd_weight=kd_weight, beta=beta,
                   feat_weight=feat_weight, ce_weight=ce_weight, bn=bn, crop_scale=crop_scale, flip=flip,
                   device=device, workers=workers, seed=seed, output=output, run_dir=run_dir, force=force,
                   arch=arch, weights=weights, trust_code=trust_code, input=input, threads=threads,
                   save_every=save_every, keep=keep)
    _dispatch(params, resume, json_out, "heal")


def _dispatch(params: dict, resume: str | None, json_out: bool, op: str) -> None:
    from surgery.core.errors import SurgeryError

    params = resumed(params, resume, op)
    if not params["model"]:
        raise SurgeryError(f"give the model to {op} (or --resume RUN_DIR)")
    if not params["data"]:
        raise SurgeryError("give --data DIR, a folder of images (`surgery data digits DIR` writes one)")
    if op == "heal" and not params["teacher"] and params["loss"] != "ce":
        raise SurgeryError(f"--loss {params['loss']} compares with a teacher; pass --teacher MODEL "
                           "(or use `surgery train` for labels alone)")
    _run(params, resume_dir=resume, json_out=json_out, op=op)


@app.command("train", epilog=examples(
    "surgery data digits digits",
    "surgery train zoo:digits_cnn --data digits --epochs 10 --no-flip --crop-scale 0.5 --lr 3e-3 -o teacher.pt",
))
@declared(ONE_MODEL, TRAINING)
def train_cmd(
    model: Optional[str] = typer.Argument(None, metavar="MODEL", help="Model to train: FILE.pt, FILE.cfg or zoo:NAME."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder with one sub-folder per class, or for a YOLO "
                                                             "detector a YOLO-format folder (images/*.jpg + "
                                                             "labels/*.txt); train/ and val/ sub-folders are the split."),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="Layers kept exactly (indices, ranges, names, globs)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips (off for digits and text)."),
    head: Optional[int] = typer.Option(None, "--head", help="Of a shared multi-head detector (surgery share): train "
                                                            "head N alone, every other layer kept exactly."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, augmentation and dropout."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output checkpoint (default: MODEL-trained.pt)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run directory (default: the output with .run)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this run directory."),
    *, val, epochs, steps, batch, lr, optimizer, schedule, weight_decay, bn, crop_scale, device, workers, threads,
    save_every, keep, force, json_out, arch, weights, trust_code, input,
):
    """Train MODEL with the folder's labels (cross entropy): the same loop as heal, no teacher.

    A model with Darknet [yolo] heads on a YOLO-format folder trains with Darknet's [yolo] loss
    (letterboxed images, flip/scale/shift/colour augmentation) and reports held-out mAP@0.5 and
    mAP@0.5:0.95 after every epoch (surgery data synth-text writes such a folder).
    """
    params = _opts(model=model, teacher=None, data=data, val=val, loss="ce", epochs=epochs, steps=steps,
                   batch=batch, lr=lr, optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
                   freeze=freeze, match=None, temperature=4.0, kd_weight=1.0, beta=1000.0, feat_weight=1.0,
                   ce_weight=1.0, bn=bn, crop_scale=crop_scale, flip=flip, device=device, workers=workers,
                   seed=seed, output=output, run_dir=run_dir, force=force, arch=arch, weights=weights,
                   trust_code=trust_code, input=input, threads=threads, save_every=save_every, keep=keep, head=head)
    _dispatch(params, resume, json_out, "train")
