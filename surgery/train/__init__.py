"""The one training loop and what it needs: image-folder data (``data``), loss terms
(``losses``), teacher-student layer matching (``matching``), resumable run directories
(``checkpoint``), torchrun/DDP (``dist``), model outputs and held-out figures (``predict``), and
one run around the loop (``run``: process group, run directory, before/after figures).
:func:`surgery.train.run.run` is the entry; :func:`surgery.train.loop.train` the loop alone."""

from surgery.train.loop import Batch, Forward, Hooks, TrainConfig, TrainData, TrainResult, evaluate, train  # noqa: F401
