"""Writing a matplotlib figure as a PNG file: atomically (a temporary sibling renamed into
place, :func:`surgery.core.files.atomic_write`), refusing an existing file without ``force``
and a path that is one of the command's inputs, and closing the figure whatever happens."""

from __future__ import annotations

from pathlib import Path

from surgery.core.files import atomic_write


def save_png(fig, path, *, force: bool = False, inputs=(), dpi: float | None = None) -> Path:
    import matplotlib.pyplot as plt

    def write(tmps):
        fig.savefig(tmps[0], format="png", **({} if dpi is None else {"dpi": dpi}))

    try:
        return atomic_write([path], write, force=force, inputs=inputs)[0]
    finally:
        plt.close(fig)
