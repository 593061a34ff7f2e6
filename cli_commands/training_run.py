"""The run every training command (``heal``, ``train``, ``onion train``) goes through on the CLI
side: output and run-directory checks before anything loads, the models, rich progress and
per-epoch lines from the loop's hooks, the write on rank 0 and the torchrun rules (rank 0 alone
writes and prints; the process group is torn down whatever happens).

The command gives the training call; this module holds everything around it, once."""

from __future__ import annotations

from typing import Callable

import typer

from cli_commands.base import err_console, load_models, progress


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

    import torch

    from surgery.core import io as sio
    from surgery.core.errors import SurgeryError
    from surgery.train import checkpoint as ckpt
    from surgery.train import dist
    from surgery.train.loop import Hooks

    rank = dist.env_rank()
    try:
        if p["epochs"] is not None and p["steps"] is not None:
            raise SurgeryError("give --epochs or --steps, not both")
        config = configure()
        output = Path(p["output"]) if p["output"] else sio.default_output([p["model"]], output_tag)
        inputs = [r for r in (p["model"], p["teacher"]) if r]
        run_dir = Path(resume_dir) if resume_dir else Path(p["run_dir"]) if p["run_dir"] else output.with_suffix(".run")
        if rank == 0:
            sio.check_outputs([output], force=p["force"], inputs=inputs)
            sio.check_checkpoint_name(output)
            if not resume_dir:
                ckpt.check_new(run_dir, force=p["force"])
        # loader options in model order: MODEL, then TEACHER
        model, teacher = (load_models(inputs, p.get("arch"), p.get("weights"), bool(p.get("trust_code")),
                                      p.get("input")) + [None])[:2]
        bar = progress() if rank == 0 and not json_out else None
        task = None

        def start(first, total):  # after every input check: a failure prints one line only
            nonlocal task
            if bar is not None:
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
            net, rep = train(config, model, teacher, run_dir=run_dir, hooks=Hooks(start=start, step=step, epoch=epoch))
        finally:
            if bar is not None and task is not None:
                bar.stop()
        if rank != 0:
            return None
        path = sio.save(net, output, force=p["force"], inputs=inputs)
        return dataclasses.replace(rep, output=str(path))
    except SurgeryError:
        if rank != 0:  # rank 0 alone prints
            raise typer.Exit(2)
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
