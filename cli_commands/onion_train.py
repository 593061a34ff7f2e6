"""``surgery onion train|calibrate``: joint training of a cascade (L = α·L_S1 + (1−α)·L_S2)
through the project's one loop, and S1 pass thresholds at a chosen TPR (onionnet-bmvc2016
§3.2–3.3). Registered on the ``onion`` sub-app of :mod:`cli_commands.onion`."""

from __future__ import annotations

from typing import Optional

import typer

from cli_commands.base import examples, load_models, out, print_json, table, wrote
from cli_commands.option_groups import EACH_MODEL, declared
from cli_commands.onion import onion_app
from cli_commands.training_options import TRAINING, resumed, run_rows, train_config
from cli_commands.training_run import run_training


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _fmt_eval(e) -> str:
    parts = []
    if e.get("s2_fpr95") is not None:
        parts.append(f"S2 FPR@95 {e['s2_fpr95']:.4f}")
    if e.get("s2_accuracy") is not None:
        parts.append(f"S2 accuracy {100 * e['s2_accuracy']:.1f}%")
    if e.get("teacher_agreement") is not None:
        parts.append(f"S2 agreement with teacher {100 * e['teacher_agreement']:.1f}%")
    if e.get("s1_accuracy") is not None:
        parts.append(f"S1 accuracy {100 * e['s1_accuracy']:.1f}%")
    return ", ".join(parts) or "-"


def _run_train(p: dict, *, resume_dir: str | None, json_out: bool) -> None:
    from surgery.onion.train import JointConfig, joint_train

    def configure():
        cfg = JointConfig(data=p["data"], val=p["val"], alpha=p["alpha"], s2_loss=p["s2_loss"],
                          s1_classes=p["s1_classes"], temperature=p["temperature"], train=train_config(p),
                          crop_scale=p["crop_scale"], flip=p["flip"])
        cfg.validate()  # bad alpha, loss names, steps: before anything loads
        return cfg

    def train(cfg, net, teacher, *, run_dir, hooks):
        return joint_train(net, cfg, teacher=teacher, run_dir=run_dir, run_config={"op": "onion-train", **p},
                           resume=bool(resume_dir), force=p["force"], hooks=hooks)

    rep = run_training(p, resume_dir=resume_dir, json_out=json_out, label="onion train", output_tag="-trained",
                       configure=configure, train=train, fmt_eval=_fmt_eval)
    if rep is None:  # not rank 0
        return
    if json_out:
        print_json(rep)
        return
    loss = (f"{rep.alpha:g}*L_S1 (cross-entropy over {len(set(rep.s1_of_class))} S1-classes, {rep.s1_map}) + "
            f"{1 - rep.alpha:g}*L_S2 ({rep.s2_loss})") if rep.cascade else f"L_S2 ({rep.s2_loss}); monolithic"
    rows = [("model", rep.model)] + ([("teacher", rep.teacher)] if rep.teacher else []) + [
        ("data", f"{rep.data}: {rep.train_images} training, {rep.val_images} held-out images"),
        ("loss", loss), *run_rows(rep),
        ("before", _fmt_eval(rep.before)), ("after", _fmt_eval(rep.after)), ("run", str(rep.run_dir)),
    ]
    con = out()
    con.print(table(f"onion train {rep.model}", ["", "value"], rows))
    wrote(rep.output)


@onion_app.command("train", epilog=examples(
    "surgery data stereo-patches pairs",
    "surgery onion train zoo:onion_p --data pairs --alpha 0.5 --epochs 2",
    "surgery onion train zoo:onion_pm --data pairs --epochs 2",
    "surgery onion train cascade.pt --teacher monolithic.pt --data images --s1-classes kmeans",
    "surgery onion train --resume onion_p-trained.run",
))
@declared(EACH_MODEL, TRAINING)
def train_cmd(
    model: Optional[str] = typer.Argument(None, metavar="CASCADE", help="Cascade (split checkpoint or zoo:onion_p...); "
                                                                        "a monolithic model trains under L_S2 alone."),
    data: Optional[str] = typer.Option(None, "--data", help="Image folder (class sub-folders for labels; train/ and "
                                                             "val/ used as the split)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of L_S1 in L = alpha*L_S1 + (1-alpha)*L_S2, in (0, 1)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Monolithic source: label-free training (S2 distils "
                                                                   "it, S1 learns its S1-class decision)."),
    s2_loss: str = typer.Option("auto", "--s2-loss", help="auto (kd with --teacher, else hinge for one S2 output, "
                                                          "ce for several), hinge, ce or kd."),
    s1_classes: str = typer.Option("binary", "--s1-classes", help="binary (first class vs the rest), kmeans (teacher's "
                                                                  "class-mean activations) or a JSON class -> S1-class map."),
    temperature: float = typer.Option(4.0, "--temperature", help="kd temperature T."),
    crop_scale: float = typer.Option(1.0, "--crop-scale", help="Smallest area fraction of the random resized crop "
                                                               "(1 = none; patch pairs keep their scale)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips (the paper's)."),
    workers: int = typer.Option(2, "--workers", help="DataLoader worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, augmentation and initialisation order."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output checkpoint (default: CASCADE-trained.pt)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run directory (default: the output with .run)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the run in this run directory."),
    *, val, epochs, steps, batch, lr, optimizer, schedule, weight_decay, device, threads, save_every, force,
    json_out, arch, weights, trust_code, input,
):
    """Train a cascade jointly: S1's classifier on S1-classes, S2 on the task, S1's features on both.

    Held-out S2 FPR@95 (single score) or accuracy, and S1 accuracy, before and after. Runs under
    torchrun for more processes (DDP; rank 0 writes); --resume continues a run.
    """
    from surgery.core.errors import SurgeryError

    p = dict(model=model, data=data, val=val, alpha=alpha, teacher=teacher, s2_loss=s2_loss, s1_classes=s1_classes,
             temperature=temperature, epochs=epochs, steps=steps, batch=batch, lr=lr, optimizer=optimizer,
             schedule=schedule, weight_decay=weight_decay, crop_scale=crop_scale, flip=flip, device=device,
             workers=workers, seed=seed, output=output, run_dir=run_dir, force=force, arch=arch, weights=weights,
             trust_code=trust_code, input=input, threads=threads, save_every=save_every)
    p = resumed(p, resume, "onion-train")
    if not p["model"]:
        raise SurgeryError("give the cascade to train (or --resume RUN_DIR)")
    if not p["data"]:
        raise SurgeryError("give --data DIR, a folder of images (`surgery data stereo-patches DIR` writes patch pairs)")
    _run_train(p, resume_dir=resume, json_out=json_out)


def distinct_digits(values, least: int = 4, most: int = 9) -> int:
    """Significant digits (``least`` .. ``most``; 9 tell any two float32 apart) that print
    different values differently: two thresholds never show as the same ``0.5065``."""
    values = sorted(set(float(v) for v in values))
    for d in range(least, most):
        if len({f"{v:.{d}g}" for v in values}) == len(values):
            return d
    return most


@onion_app.command("calibrate", epilog=examples(
    "surgery onion calibrate onion_p-trained.pt --data pairs --tpr 0.99",
    "surgery onion calibrate cascade.pt --data images --tpr 0.99,0.95,0.9 --classes 1",
))
@declared(EACH_MODEL)
def calibrate_cmd(
    cascade: str = typer.Argument(..., metavar="CASCADE", help="Trained cascade checkpoint (or zoo:onion_p...)."),
    data: str = typer.Option(..., "--data", help="Calibration images: the training folder (DATA/train when DATA has "
                                                 "train/ and val/; val/ is then scored with the same thresholds)."),
    tpr: str = typer.Option("0.99", "--tpr", help="Recall of S1 per S1-class of interest, in (0, 1]; a comma list is a "
                                                  "sweep (the first goes into the checkpoint)."),
    val: Optional[str] = typer.Option(None, "--val", help="Held-out folder to score with the thresholds."),
    classes: Optional[str] = typer.Option(None, "--classes", help="S1-classes of interest (default: 1 for binary "
                                                                  "S1-classes, else all)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Label-free: S1-classes from this model's decisions."),
    batch: int = typer.Option(256, "--batch", help="Images per forward."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Output (default: CASCADE-calibrated.pt)."),
    *, force, json_out, arch, weights, trust_code, input,
):
    """Per-S1-class ROC on the calibration data; thresholds at the TPR stored in the cascade.

    An example passes S1 if its score reaches the threshold of any S1-class of interest.
    Reports the achieved TPR and FPR and the pass fraction p on the calibration and held-out data.
    """
    from surgery.core import io as sio
    from cli_commands.onion import parse_classes, parse_tprs
    from surgery.onion.calibrate import calibrate, check_tprs

    tprs = check_tprs(parse_tprs(tpr))  # refused before anything loads
    interest = parse_classes(classes)
    out_path = output or str(sio.default_output([cascade], "-calibrated"))
    inputs = [r for r in (cascade, teacher) if r]
    sio.check_outputs([out_path], force=force, inputs=inputs)
    sio.check_checkpoint_name(out_path)
    net, t = (load_models([cascade] + ([teacher] if teacher else []), arch, weights, trust_code, input)
              + [None])[:2]  # loader options: CASCADE, then --teacher
    res, rep = calibrate(net, data, tprs=tprs, val=val, interest=interest, teacher=t, batch=batch)
    path = sio.save(res, out_path, force=force, inputs=inputs)
    import dataclasses

    rep = dataclasses.replace(rep, output=str(path))
    if json_out:
        print_json(rep)
        return
    rows = []
    digits = distinct_digits([v for r in rep.operating_points for v in r.thresholds if v != float("inf")])
    for r in rep.operating_points:
        thr = " ".join("-" if v == float("inf") else f"{v:#.{digits}g}" for v in r.thresholds)
        c, v = r.calibration, r.val
        rows.append((f"{r.tpr_target:g}", thr, _pct(c.tpr), _pct(c.fpr), _pct(c.pass_fraction),
                     _pct(v.tpr if v else None), _pct(v.fpr if v else None), _pct(v.pass_fraction if v else None)))
    con = out()
    con.print(table(f"onion calibrate {rep.model}: S1-classes of interest {','.join(map(str, rep.interest))} "
                    f"({rep.s1_map} S1-classes)",
                    ["TPR asked", "thresholds", "TPR", "FPR", "pass p", "held-out TPR", "held-out FPR",
                     "held-out pass p"], rows,
                    right=["TPR asked", "TPR", "FPR", "pass p", "held-out TPR", "held-out FPR", "held-out pass p"]))
    n = rep.operating_points[0].calibration.examples
    con.print(f"calibrated on {n} images of {rep.data}; the checkpoint passes S1 at TPR {rep.active_tpr:g} "
              f"(thresholds: - = never passes)")
    wrote(rep.output)
