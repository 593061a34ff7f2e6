"""The one training loop and what it needs: image-folder data (``data``), loss terms
(``losses``), teacher-student layer matching (``matching``), resumable run directories
(``checkpoint``) and torchrun/DDP (``dist``). :func:`surgery.train.loop.train` is the entry."""

from surgery.train.loop import Batch, Forward, Hooks, TrainConfig, TrainData, TrainResult, evaluate, train  # noqa: F401
