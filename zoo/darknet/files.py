"""Reading and writing a Darknet network as files: ``.cfg`` + ``.weights``."""

from __future__ import annotations

import os
from pathlib import Path

from surgery.core.files import atomic_write
from zoo.darknet.cfg import read_cfg_file
from zoo.darknet.net import DarknetNet, build_darknet
from zoo.darknet.weights import read_weights, write_weights


def load_darknet(cfg_path: str | os.PathLike, weights_path: str | os.PathLike | None = None, *,
                 cutoff: int | None = None) -> DarknetNet:
    """Build the network of a ``.cfg`` file and, if given, load its ``.weights``."""
    path = Path(cfg_path)
    net = build_darknet(read_cfg_file(path), source=str(path))
    if weights_path is not None:
        read_weights(net, weights_path, cutoff=cutoff)
    return net


def save_darknet(net: DarknetNet, cfg_path: str | os.PathLike, weights_path: str | os.PathLike | None = None,
                 *, overwrite: bool = False) -> None:
    """Write ``net.cfg_text()`` and (if a path is given) its weights: both destinations are
    checked first, and either both files appear or neither (:func:`surgery.core.files.atomic_write`)."""

    paths = [cfg_path] + ([weights_path] if weights_path is not None else [])

    def write(tmps):
        tmps[0].write_text(net.cfg_text(darknet=True))
        if weights_path is not None:
            write_weights(net, tmps[1], overwrite=True)

    atomic_write(paths, write, force=overwrite)
