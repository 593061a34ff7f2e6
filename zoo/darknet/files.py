"""Reading and writing a Darknet network as files: ``.cfg`` + ``.weights``."""

from __future__ import annotations

import os
from pathlib import Path


from surgery.errors import SurgeryError
from zoo.darknet.net import DarknetNet, build_darknet
from zoo.darknet.weights import _atomic_write, _check_writable, read_weights, write_weights


def load_darknet(cfg_path: str | os.PathLike, weights_path: str | os.PathLike | None = None, *,
                 cutoff: int | None = None) -> DarknetNet:
    """Build the network of a ``.cfg`` file and, if given, load its ``.weights``."""
    path = Path(cfg_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SurgeryError(f"{path}: no such cfg file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SurgeryError(f"{path}: cannot read the cfg ({getattr(e, 'strerror', None) or e})") from None
    net = build_darknet(text, source=str(path))
    if weights_path is not None:
        read_weights(net, weights_path, cutoff=cutoff)
    return net


def save_darknet(net: DarknetNet, cfg_path: str | os.PathLike, weights_path: str | os.PathLike | None = None,
                 *, overwrite: bool = False) -> None:
    """Write ``net.cfg_text()`` and (if a path is given) its weights. Both destinations are
    checked before anything is written; each file is written atomically."""
    cfg = Path(cfg_path)
    paths = [cfg] + ([Path(weights_path)] if weights_path is not None else [])
    for p in paths:
        _check_writable(p, overwrite)
    if weights_path is not None:
        write_weights(net, weights_path, overwrite=True)
    _atomic_write(cfg, net.cfg_text().encode())
