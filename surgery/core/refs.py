"""Model references as text: ``zoo:NAME[:k=v,...]`` arguments (shared by ``py:`` references)
and the default output name made from the references a command read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from surgery.core.errors import SurgeryError

def parse_zoo_ref(ref: str) -> tuple[str, dict[str, str]]:
    """``zoo:NAME[:k=v,k=v]`` -> (NAME, {k: v}). Values may contain commas (anchors)."""
    body = ref[len("zoo:"):]
    name, _, args = body.partition(":")
    kwargs: dict[str, str] = {}
    if args:
        # split on commas that start a new key=... so "anchors=10,13,16,30" stays whole
        for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", args):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise SurgeryError(f"bad zoo argument {part!r} in {ref!r}; write zoo:NAME:key=value,key=value")
            kwargs[key.strip()] = value.strip()
    if not name:
        raise SurgeryError(f"bad zoo reference {ref!r}; write zoo:NAME, e.g. zoo:resnet50")
    return name, kwargs


def default_output(sources: Iterable[str], tag: str, suffix: str = ".pt") -> Path:
    """The output name a command uses when the user gives no ``-o``: in the current directory,
    made of the inputs' stems and what was done, e.g. ``base-text@74.pt`` for
    ``share --at 74 base.pt text.pt`` (tag ``"@74"``), ``resnet50-root8.pt`` for a regroup
    (tag ``"-root8"``). Zoo references contribute their name (``zoo:resnet50:root=8`` ->
    ``resnet50``). Never a ``+``: ``surgery profile`` reads ``A.pt+B.pt`` as two models."""
    stems = []
    for s in sources:
        s = str(s)
        if s.startswith("zoo:"):
            stems.append(parse_zoo_ref(s)[0])
        elif s.startswith("py:"):  # py:pkg.mod:factory -> factory
            stems.append(s.split(":")[2] if s.count(":") >= 2 else "model")
        else:
            stems.append(Path(s).stem or "model")
    name = "-".join(stems) + tag
    name = re.sub(r"[^\w.@=,-]", "_", name)
    return Path(name + suffix)
