"""The files a Darknet cfg names besides itself: the ``tree=`` of a [softmax]/[region] layer
(YOLO9000's hierarchical-softmax tree, ``9k.tree``) and the ``map=`` of a [region] layer (a class
map, ``coco9k.map``).

A :class:`DarknetNet` carries what it read from them (``layer.tree``: the tree's group sizes,
``layer.map``: the class indices; inlined in its cfg text as ``surgery_tree_groups=``/
``surgery_map=``), so a checkpoint rebuilds without them. Darknet itself reads the files:
:func:`side_files` lists the ones a network names with the values it carries, :func:`find_file`
looks one up as the builder does, and :meth:`SideFile.text` writes a file Darknet's readers turn
into exactly those values when the original is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from surgery.core.errors import SurgeryError
from zoo.darknet.head_layers import map_entries, tree_group_sizes

# option -> (the layer attribute holding its values, what the file is, how Darknet reads it)
_OPTIONS = {
    "tree": ("tree", "hierarchical-softmax tree file", tree_group_sizes),  # tree.c read_tree
    "map": ("map", "class map file", map_entries),  # utils.c read_map
}


@dataclass(frozen=True)
class SideFile:
    """One file a network's cfg names: ``option=name`` in the cfg of ``layers``."""

    option: str  # "tree" | "map"
    name: str  # as the cfg writes it (Darknet opens it relative to where it runs)
    layers: tuple[int, ...]  # the layers naming it
    values: tuple[int, ...]  # what the network carries: group sizes (tree) or class indices (map)

    @property
    def what(self) -> str:
        return _OPTIONS[self.option][1]

    def reads(self, text: str) -> tuple[int, ...]:
        """The values Darknet's reader takes from ``text`` (the file read as Latin-1 bytes)."""
        return tuple(_OPTIONS[self.option][2](text))

    def text(self) -> str:
        """A file that Darknet reads back to exactly :attr:`values`: :func:`tree_text` or
        :func:`map_text`."""
        return tree_text(self.values) if self.option == "tree" else map_text(self.values)


def side_files(net) -> list[SideFile]:
    """The ``tree=``/``map=`` files the layers of the DarknetNet ``net`` name, in layer order, one
    entry per file name. Two layers naming one file with different carried values (only an
    edited checkpoint can) are refused: no single file serves both."""
    found: dict[tuple[str, str], SideFile] = {}
    for layer in net.layers:
        for option, (attr, what, _) in _OPTIONS.items():
            values = getattr(layer, attr, None)
            if option not in layer.options or values is None:  # e.g. [softmax] has no map=: Darknet ignores it
                continue
            name = str(layer.options[option])
            key = (option, name)
            prev = found.get(key)
            if prev is not None and prev.values != tuple(values):
                raise SurgeryError(f"layers {prev.layers[0]} and {layer.index} both name {option}={name} but carry "
                                   f"different {what} contents; no one file can serve both")
            found[key] = SideFile(option, name, (*(prev.layers if prev else ()), layer.index), tuple(values))
    return list(found.values())


def find_file(name: str, dirs: Iterable[str | Path]) -> Path | None:
    """The file ``name`` as the builder looks it up (layers.py ``_side_file``): in each of
    ``dirs`` (the cfg's directory first), then in the working directory; None if none is a file."""
    for path in [*(Path(d) / name for d in dirs), Path(name)]:
        if path.is_file():
            return path
    return None


def tree_text(sizes: Iterable[int]) -> str:
    """A Darknet tree file (``name parent`` a line) whose groups, as tree.c ``read_tree`` forms
    them (:func:`tree_group_sizes`), are exactly ``sizes``.

    The tree's node names and its shape beyond the group sizes are not carried by a network, so
    this file is a stand-in: nodes are named ``node0``, ``node1``, ...; the first group's nodes
    are roots (parent -1) and group ``g >= 1`` holds the children of node ``g - 1`` (consecutive
    groups thus have different parents, which is all ``read_tree`` uses to cut groups). A first
    group of size 0 (a file whose first node has a parent) gives its successor parent 0, as
    such a file does in Darknet. ``read_tree`` never forms an empty group after the first, so
    such sizes are refused."""
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) < 0 or 0 in sizes[1:]:
        raise SurgeryError(f"tree group sizes {','.join(map(str, sizes))}: Darknet's read_tree forms no such groups "
                           f"(only the first may be empty), so no tree file gives them")
    lines, n = [], 0
    for g, size in enumerate(sizes):
        parent = -1 if g == 0 else g - 1
        for _ in range(size):
            lines.append(f"node{n} {parent}\n")
            n += 1
    return "".join(lines)


def map_text(entries: Iterable[int]) -> str:
    """A Darknet class map file (utils.c ``read_map``: one ``atoi`` a line) of ``entries``."""
    return "".join(f"{int(v)}\n" for v in entries)
