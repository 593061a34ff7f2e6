"""Darknet ``.cfg`` text: ``parse_cfg`` reads sections the way Darknet's ``read_cfg`` does,
``write_cfg`` is its inverse."""

from __future__ import annotations

from typing import Iterable


from surgery.errors import SurgeryError, suggest


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
            "avg": "avgpool", "soft": "softmax"}
SECTIONS = ("net", "convolutional", "connected", "maxpool", "avgpool", "route", "shortcut",
            "upsample", "reorg", "yolo", "region", "detection", "dropout", "softmax", "crop",
            "local", "cost", "activation")
# Sections Darknet (pjreddie or AlexeyAB) knows but this builder does not implement.
_UNSUPPORTED = set("deconvolutional deconv logistic l2norm crnn gru lstm rnn conv_lstm normalization lrn batchnorm "
                   "iseg scale_channels sam gaussian_yolo reorg3d implicit_add implicit_mul empty silence "
                   "contrastive local_avgpool history".split())
_OUTPUT_SECTIONS = ("yolo", "region", "detection")
TYPE_OPTION = "@type"  # where an option named `type` (e.g. [cost] type=sse) is kept; "type" is the section


def parse_cfg(text: str, source: str = "<cfg>") -> list[dict]:
    """Sections in file order: ``[{"type": "net", "width": "416", ...}, {"type": "convolutional", ...}]``.

    Like Darknet's ``read_cfg``: every whitespace character is removed from a line, lines
    starting with ``#`` or ``;`` are comments; an inline ``# ...`` is dropped too. Section
    aliases (``[conv]``, ``[network]``...) become their canonical names. If a key repeats,
    the first value wins (Darknet's ``option_find``). Values stay strings. An option
    called ``type`` is stored as :data:`TYPE_OPTION` (``"type"`` holds the section name).
    """
    blocks: list[dict] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = "".join(raw.split()).split("#", 1)[0]
        if not line or line[0] == ";":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise SurgeryError(f"{source}:{lineno}: malformed section header {raw.strip()!r}; write it as [name]")
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
            raise SurgeryError(f"{source}:{lineno}: option {line!r} before the first section; start the file with [net]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise SurgeryError(f"{source}:{lineno}: cannot parse {raw.strip()!r}; options are written key=value")
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
