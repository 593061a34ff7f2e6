"""The run every training command (``heal``, ``train``, ``onion train``) goes through on the CLI
side: output and run-directory checks before anything loads, the models, rich progress and
per-epoch lines from the loop's hooks, the write on rank 0 and the torchrun rules (rank 0 alone
writes and prints). The process group, the run directory and the held-out figures are the
library's (:func:`surgery.train.run.run`): it makes the group and tears it down.

The command gives the training call; this module holds everything around it, once."""

from __future__ import annotations

from typing import Callable

import typer

from cli_commands.base import err_console, load_models, progress
from cli_commands.training_options import set_threads


def loss_terms(terms: dict) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in terms.items())


def run_training(p: dict, *, resume_dir: str | None, json_out: bool, label: str, output_tag: str,
                 configure: Callable[[], object], train: Callable,
                 fmt_eval: Callable[[dict], str] | None = None):
    """Check the options (``configure()``, before anything loads: it returns the command's
    training config), then run ``train(config, model, teacher, run_dir=..., hooks=...) -> (net,
    report)`` under the CLI rules and return the report with its ``output`` set (None on ranks
    other than 0).

    ``p`` holds the command's options by parameter name (``model``, ``teacher``, ``output``,
    ``run_dir``, ``force``, ``epochs``, ``steps`` and the loader options). ``fmt_eval``: print
    a line per epoch with the held-out figures it formats (omit for none)."""
    import dataclasses
    from pathlib import Path

    from surgery.core import io as sio
    from surgery.core import safety
    from surgery.core.errors import SurgeryError
    from surgery.core.pyref import CodeNotNamed
    from surgery.train import checkpoint as ckpt
    from surgery.train import data as tdata
    from surgery.train import dist
    from surgery.train.loop import Hooks

    rank = dist.environment().rank
    try:
        if p["epochs"] is not None and p["steps"] is not None:
            raise SurgeryError("give --epochs or --steps, not both")
        config = configure()
        set_threads(p, getattr(config, "train", config).workers)  # threads x processes + workers <= cores
        output = Path(p["output"]) if p["output"] else _default_output(p, resume_dir, output_tag)
        inputs = [r for r in (p["model"], p["teacher"]) if r]
        run_dir = Path(resume_dir) if resume_dir else Path(p["run_dir"]) if p["run_dir"] else output.with_suffix(".run")
        files = [*inputs, p.get("data"), p.get("val"), *_listed(p.get("weights")), *_listed(p.get("arch"))]
        if rank == 0:
            sio.check_outputs([output], force=p["force"], inputs=inputs)
            sio.check_checkpoint_name(output)
            if not resume_dir:
                ckpt.check_new(run_dir, force=p["force"], inputs=files)
        # loader options in model order: MODEL, then TEACHER
        try:
            model, teacher = (load_models(inputs, p.get("arch"), p.get("weights"), bool(p.get("trust_code")),
                                          p.get("input"), from_file=bool(p.get("models_from_run"))) + [None])[:2]
        except CodeNotNamed as e:  # a py: reference read from the run's config.json
            raise SurgeryError(f"{Path(resume_dir or '.') / ckpt.CONFIG} {e}") from None
        hashes = _input_hashes(p)
        if resume_dir:
            _check_same_inputs(hashes, p.get("recorded_sha256") or {}, resume_dir)
        else:
            p["inputs_sha256"] = hashes  # recorded in the run's config.json (the train closure reads p)
        bar = progress() if rank == 0 and not json_out else None
        task = scan_task = None

        def scanning(done, total, what):  # checking the image folders (100,000 files take a while)
            nonlocal scan_task
            if bar is None or not err_console.is_terminal:  # a log gets no half-drawn bar (nor its newline)
                return
            if scan_task is None:
                bar.start()
                scan_task = bar.add_task(what, total=total)
            bar.update(scan_task, completed=done, total=total, description=what)

        def start(first, total):  # after every input check: a failure prints one line only
            nonlocal task, scan_task
            if bar is not None:
                if scan_task is not None:
                    bar.remove_task(scan_task)
                    scan_task = None
                bar.start()
                task = bar.add_task(label, total=total, completed=first)

        def step(i, terms, ips):
            if bar is not None:
                bar.update(task, completed=i, description=f"{label}  {loss_terms(terms)}  {ips:,.0f} img/s")

        def epoch(record):
            if fmt_eval is not None and rank == 0 and not json_out:
                err_console.print(f"epoch {record['epoch']} (step {record['step']}): {loss_terms(record['loss'])} | "
                                  f"held-out: {fmt_eval(record.get('eval', {}))}", markup=False)

        try:
            with tdata.reporting(scanning):
                net, rep = train(config, model, teacher, run_dir=run_dir,
                                 hooks=Hooks(start=start, step=step, epoch=epoch))
        except BaseException as e:  # a run refused before its first saved state left nothing behind (run())
            if isinstance(e, (safety.Interrupted, KeyboardInterrupt)) and (Path(run_dir) / ckpt.STATE).exists():
                safety.set_hint(f"resume with `surgery {label} --resume {run_dir}`")
            raise
        finally:
            if bar is not None and (task is not None or scan_task is not None):
                bar.stop()
        if rank != 0:
            return None
        path = sio.save(net, output, force=p["force"], inputs=inputs)
        return dataclasses.replace(rep, output=str(path))
    except SurgeryError:
        if rank != 0:  # rank 0 alone prints
            raise typer.Exit(2)
        raise


def _listed(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else [v for v in value if v and v != "-"]


def _default_output(p: dict, resume_dir: str | None, tag: str):
    """No -o: a resumed run writes beside its run directory (``X.run`` -> ``X.pt``, the name the
    run started with by default); a new one the usual default name."""
    from pathlib import Path

    from surgery.core import io as sio

    if resume_dir and Path(resume_dir).suffix == ".run":
        return Path(resume_dir).with_suffix(".pt")
    return sio.default_output([p["model"]], tag)


def _input_hashes(p: dict) -> dict:
    """sha256 of every model and weights file the run reads, by role (what a resume checks)."""
    from pathlib import Path

    from surgery.core import io as sio

    out = {}
    for role in ("model", "teacher"):
        ref = p.get(role)
        if ref and Path(ref).is_file():
            out[role] = sio.sha256(Path(ref))
    for i, w in enumerate(_listed(p.get("weights"))):
        if Path(w).is_file():
            out[f"weights{i}"] = sio.sha256(Path(w))
    return out


def _check_same_inputs(now: dict, recorded: dict, run_dir: str) -> None:
    """A resumed run reads the files it started from: same sha256, else one line."""
    from surgery.core.errors import SurgeryError

    for role, digest in recorded.items():
        if role in now and now[role] != digest:
            raise SurgeryError(f"{run_dir}: the {role} file differs from the one the run started from (sha256 "
                               f"{now[role][:12]}… vs {str(digest)[:12]}…); resume with the same file, or start a new run")
