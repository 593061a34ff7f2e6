"""The ``--data DIR`` option of every command that judges a model on probe inputs (regroup,
fold, share, export, onion split/run, diff, profile): real images instead of random tensors.

Imports nothing heavy at module level (the CLI must start in a blink)."""

from __future__ import annotations

import typer

ProbeDataOpt = typer.Option(None, "--data", metavar="DIR",
                            help="Judge the model on real images from this folder (its val/ when it has train/ and "
                                 "val/) instead of random normal inputs: 64 images spread over the folder.")


def probe_for(data: str | None, net, **kw):
    """The image probe of ``--data DIR`` for ``net`` (None without ``--data``); ``kw``:
    :func:`surgery.evaluate.image_probe`'s ``images`` and ``batch``."""
    if not data:
        return None
    from surgery.evaluate import image_probe

    return image_probe(data, net, **kw)


def check_data(data: str | None) -> None:
    """A missing or empty ``--data`` folder fails before anything slow happens."""
    if data:
        from surgery.evaluate import eval_folder

        eval_folder(data)
