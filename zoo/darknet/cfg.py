"""Darknet ``.cfg`` text: ``parse_cfg`` reads sections the way Darknet's ``read_cfg`` does,
``write_cfg`` is its inverse."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from surgery.core.errors import SurgeryError, suggest


Shape = tuple[int, int, int]

# pjreddie's CPU/GPU inference normalises with (x - mean) / (sqrt(var) + .000001f)
# (blas.c normalize_cpu, blas_kernels.cu normalize_kernel); AlexeyAB's darknet and the cuDNN
# path use (x - mean) / sqrt(var + .00001f). nn.BatchNorm2d can only express the second, so
# we match AlexeyAB/cuDNN exactly; against pjreddie's CPU path the relative difference is
# about 5e-6 for var ~ 1 (it grows only for near-zero variances).
BN_EPS = 1e-5
BN_MOMENTUM = 0.01  # Darknet: rolling = .99 * rolling + .01 * batch statistic

# ------------------------------------------------------------------------------------
# cfg text
# ------------------------------------------------------------------------------------

_ALIASES = {"network": "net", "conv": "convolutional", "conn": "connected", "max": "maxpool",
            "avg": "avgpool", "soft": "softmax", "deconv": "deconvolutional", "lrn": "normalization"}
SECTIONS = ("net", "convolutional", "connected", "maxpool", "avgpool", "route", "shortcut",  # layers.py
            "upsample", "reorg", "yolo", "region", "detection", "dropout", "softmax", "crop",
            "local", "cost", "activation",
            "rnn", "gru", "lstm", "crnn",  # recurrent.py
            "normalization", "l2norm", "batchnorm",  # norm_layers.py
            "deconvolutional", "logistic", "iseg")  # seg_layers.py
# Sections AlexeyAB's darknet adds that this builder does not implement (every pjreddie section is built).
_UNSUPPORTED = set("conv_lstm scale_channels sam gaussian_yolo reorg3d implicit_add implicit_mul empty silence "
                   "contrastive local_avgpool history".split())
OUTPUT_SECTIONS = ("yolo", "region", "detection")  # layers whose outputs a DarknetNet returns
TYPE_OPTION = "@type"  # where an option named `type` (e.g. [cost] type=sse) is kept; "type" is the section


def decode_cfg(data: bytes, source: str = "<cfg>") -> str:
    """Cfg text from the bytes of a file, read as Darknet reads it: bytes, ASCII keys and
    section names, anything in comments. A UTF-8 byte-order mark is dropped; bytes that are
    not UTF-8 (a Latin-1 comment) are kept as Latin-1 characters, so they can only matter
    where Darknet would also choke on them (keys, numbers), and there they are reported."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(data) >= 4 and data[0] and not data[1] and not data[3]):
        raise SurgeryError(f"{source}: the cfg is UTF-16 text; Darknet reads cfgs as ASCII bytes; "
                           f"save it as ASCII or UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_cfg_file(path: str | os.PathLike) -> str:
    """The text of a Darknet cfg file (:func:`decode_cfg`); SurgeryError naming the file
    when it cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SurgeryError(f"{p}: no such cfg file") from None
    except IsADirectoryError:
        raise SurgeryError(f"{p}: is a directory, not a cfg file") from None
    except OSError as e:
        raise SurgeryError(f"{p}: cannot read the cfg ({e.strerror or e})") from None
    return decode_cfg(data, str(p))


def _clip(text: str, n: int = 60) -> str:
    """A quoted input line, cut to ``n`` characters (a line of random bytes can be huge)."""
    return text if len(text) <= n else text[:n] + "..."


_SPACE = str.maketrans("", "", " \t\r\v\f")  # Darknet's strip(): ASCII whitespace only


def parse_cfg(text: str, source: str = "<cfg>") -> list[dict]:
    """Sections in file order: ``[{"type": "net", "width": "416", ...}, {"type": "convolutional", ...}]``.

    Like Darknet's ``read_cfg``: every whitespace character is removed from a line, lines
    starting with ``#`` or ``;`` are comments; an inline ``# ...`` is dropped too. Section
    aliases (``[conv]``, ``[network]``...) become their canonical names. If a key repeats,
    the first value wins (Darknet's ``option_find``). Values stay strings. An option
    called ``type`` is stored as :data:`TYPE_OPTION` (``"type"`` holds the section name).
    """
    blocks: list[dict] = []
    if text.startswith("\ufeff"):  # a BOM that survived decoding: Darknet tools emit none
        text = text[1:]
    for lineno, raw in enumerate(text.split("\n"), 1):
        raw = raw.split("\x00", 1)[0]  # fgets/C strings end at NUL
        line = raw.translate(_SPACE).split("#", 1)[0]
        if not line or line[0] == ";":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise SurgeryError(f"{source}:{lineno}: malformed section header {_clip(raw.strip())!r}; write it as [name]")
            name = line[1:-1]
            canon = _ALIASES.get(name.lower(), name.lower())
            if canon not in SECTIONS:
                what = "is not supported by surgery" if canon in _UNSUPPORTED else "is not a Darknet section"
                raise SurgeryError(
                    f"{source}:{lineno}: section [{name}] {what}{suggest(canon, SECTIONS)}; "
                    f"supported: {', '.join(SECTIONS)}"
                )
            blocks.append({"type": canon})
            continue
        if not blocks:
            raise SurgeryError(f"{source}:{lineno}: option {_clip(line)!r} before the first section; start the file with [net]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise SurgeryError(f"{source}:{lineno}: cannot parse {_clip(raw.strip())!r}; options are written key=value")
        if not (key.isascii() and key.isprintable()):
            raise SurgeryError(f"{source}:{lineno}: option name {key!r} is not plain ASCII; Darknet keys are ASCII words")
        blocks[-1].setdefault(TYPE_OPTION if key == "type" else key, value)
    if not blocks:
        raise SurgeryError(f"{source}: no sections; a Darknet cfg starts with [net]")
    if blocks[0]["type"] != "net":
        raise SurgeryError(f"{source}: the first section is [{blocks[0]['type']}]; a Darknet cfg starts with [net]")
    return blocks


def write_cfg(blocks: Iterable[dict]) -> str:
    """Cfg text for ``blocks``; ``parse_cfg(write_cfg(b)) == b`` for parsed blocks. Values
    may be numbers or sequences (written comma-separated)."""
    lines: list[str] = []
    for block in blocks:
        lines.append(f"[{block['type']}]")
        for key, value in block.items():
            if key == "type":
                continue
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            lines.append(f"{'type' if key == TYPE_OPTION else key}={value}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------
# activations
# ------------------------------------------------------------------------------------
