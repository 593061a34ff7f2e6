"""Darknet's output sections: the detection heads ``[yolo]``, ``[region]`` (YOLOv2 / YOLO9000, its
``tree=`` and ``map=`` files) and ``[detection]`` (YOLOv1), and ``[softmax]`` (its ``tree=``
hierarchical softmax included). The tree and map files are read as Darknet reads them and
inlined into the cfg text so a checkpoint rebuilds without them."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from zoo.darknet.layers import INT_PREFIX, Ctx, DarknetLayer, PassLayer, identity_forward


class YoloLayer(DarknetLayer):
    """Identity in forward (raw predictions); :meth:`decode` turns them into boxes."""

    section = "yolo"

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.need_image()
        self.classes, self.num = ctx.int("classes", 20), ctx.int("num", 1)
        self.mask = tuple(ctx.ints("mask")) if "mask" in ctx.opts else tuple(range(self.num))
        anchors = ctx.floats("anchors") if "anchors" in ctx.opts else [0.5] * (2 * self.num)
        if len(anchors) != 2 * self.num:
            raise ctx.error(f"{len(anchors)} anchor values for num={self.num}; give num pairs w,h")
        if any(not 0 <= m < self.num for m in self.mask):
            raise ctx.error(f"mask={ctx.opts.get('mask')} refers to anchors outside 0..{self.num - 1}")
        want = len(self.mask) * (self.classes + 5)
        if c != want:
            raise ctx.error(f"input has {c} channels but {len(self.mask)} masks x ({self.classes} classes + 5) = {want}; set the previous filters={want}")
        super().__init__(ctx, (ctx.index - 1,), (want, h, w))
        self.anchors = tuple((anchors[2 * m], anchors[2 * m + 1]) for m in self.mask)
        self.net_hw = ctx.net_hw

    forward = identity_forward

    def decode(self, p: torch.Tensor, net_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, masks*H*W, 5+classes): x, y, w, h relative to the network input (0..1),
        objectness and class scores after the logistic, as Darknet's get_yolo_box."""
        nh, nw = net_hw or self.net_hw
        b, _, h, w = p.shape
        p = p.reshape(b, len(self.mask), self.classes + 5, h, w).permute(0, 1, 3, 4, 2)
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
        anchors = torch.tensor(self.anchors, dtype=p.dtype, device=p.device).view(1, -1, 1, 1, 2)
        xy = (torch.sigmoid(p[..., :2]) + torch.stack((gx, gy), -1)) / torch.tensor([w, h], dtype=p.dtype, device=p.device)
        wh = torch.exp(p[..., 2:4]) * anchors / torch.tensor([nw, nh], dtype=p.dtype, device=p.device)
        out = torch.cat((xy, wh, torch.sigmoid(p[..., 4:])), -1)
        return out.reshape(b, -1, self.classes + 5)


class RegionLayer(DarknetLayer):
    """YOLOv2 detection head; identity in forward (raw predictions).

    YOLO9000's ``tree=FILE`` (a hierarchical softmax over the classes) and ``map=FILE`` (dataset
    class -> tree node, used by Darknet's loss and detection decoding) change no tensor here. Both
    files are read as parse_region reads them, next to the cfg, then in the working directory:
    the tree must have one node per class, the map name classes that exist. Their contents are
    inlined into the cfg text (``surgery_tree_groups=``, ``surgery_map=``) so a checkpoint
    rebuilds without the files; a Darknet export writes the ``tree=``/``map=`` lines as they were."""

    section = "region"

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.need_image()
        self.classes, self.coords, self.num = ctx.int("classes", 20), ctx.int("coords", 4), ctx.int("num", 1)
        want = self.num * (self.classes + self.coords + 1)
        if c != want:
            raise ctx.error(f"input has {c} channels but num x (classes + coords + 1) = {want}; set the previous filters={want}")
        super().__init__(ctx, (ctx.index - 1,), (want, h, w))
        self.anchors = tuple(ctx.floats("anchors"))
        self.tree: tuple[int, ...] | None = None
        self.map: tuple[int, ...] | None = None
        self.inline_options: dict[str, str] = {}
        if "tree" in ctx.opts:
            sizes, inline = tree_option(ctx)
            if sum(sizes) != self.classes:  # forward_region_layer's softmax_tree walks tree nodes as class entries
                raise ctx.error(f"tree={ctx.opts['tree']} has {sum(sizes)} nodes but classes={self.classes}; "
                                f"a region tree needs one node per class")
            self.tree, self.inline_options = tuple(sizes), {**self.inline_options, **inline}
        if "map" in ctx.opts:
            entries, inline = map_option(ctx)
            bad = next((v for v in entries if not 0 <= v < self.classes), None)
            if bad is not None:
                raise ctx.error(f"map={ctx.opts['map']} maps a class to {bad}, outside the {self.classes} classes "
                                f"(Darknet would read another anchor's values)")
            self.map, self.inline_options = tuple(entries), {**self.inline_options, **inline}

    forward = identity_forward


class DetectionLayer(DarknetLayer):
    section = "detection"  # YOLOv1 head; identity in forward (raw predictions)

    def __init__(self, ctx: "Ctx"):
        c, h, w = ctx.in_shape
        coords, classes, num, side = ctx.int("coords", 1), ctx.int("classes", 1), ctx.int("num", 1), ctx.int("side", 7)
        want = side * side * ((1 + coords) * num + classes)
        if c * h * w != want:
            raise ctx.error(f"input has {c * h * w} values but side^2 x ((1+coords) x num + classes) = {want}")
        super().__init__(ctx, (ctx.index - 1,), (c, h, w))

    forward = identity_forward


TREE_GROUPS_OPTION = "surgery_tree_groups"  # a [softmax]/[region] tree's group sizes, inlined so the cfg text is self-contained


def tree_group_sizes(text: str) -> list[int]:
    """The group sizes of a Darknet tree file (``9k.tree``), exactly as tree.c ``read_tree``
    forms them: one node a line (``name parent_index``, read with ``sscanf("%s %d")``; a line
    without a parent has parent -1), consecutive nodes with the same parent form a group.
    A first node whose parent is not -1 opens with an empty group, as in Darknet."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # fgetl: no line after the final newline
    sizes, size, last = [], 0, -1
    for line in lines:
        m = _TREE_LINE.match(line.split("\x00", 1)[0])
        parent = int(m.group(1)) if m and m.group(1) is not None else -1
        if parent != last:
            sizes.append(size)
            size, last = 0, parent
        size += 1
    sizes.append(size)
    return sizes


_TREE_LINE = re.compile(r"\s*\S+(?:\s+([+-]?\d+))?")
MAP_OPTION = "surgery_map"  # a [region] map file's entries, inlined like the tree's groups


def map_entries(text: str) -> list[int]:
    """The entries of a Darknet class map file (``coco9k.map``) as utils.c ``read_map`` reads them:
    one ``atoi`` per line (a line without a leading integer reads 0)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # fgetl: no line after the final newline
    return [int(m.group(0)) if (m := INT_PREFIX.match(line)) else 0 for line in lines]


def _side_file(ctx: "Ctx", key: str, what: str) -> str:
    """The text of the file an option names (``tree=``, ``map=``), looked up next to the cfg, then
    in the working directory (Darknet opens it relative to where it runs)."""
    from pathlib import Path

    name = ctx.opts[key]
    src = Path(ctx.source)
    candidates = ([src.parent / name] if ctx.source and not ctx.source.startswith("<") else []) + [Path(name)]
    for path in candidates:
        if path.is_file():
            try:
                return path.read_bytes().decode("latin-1")
            except OSError as e:
                raise ctx.error(f"{key}={name}: cannot read {path} ({e.strerror or e})") from None
    where = " or ".join(dict.fromkeys(str(p) for p in candidates))
    raise ctx.error(f"{key}={name}: no such {key} file (looked for {where}); put the {what} there")


def _inlined(ctx: "Ctx", option: str, what: str) -> list[int]:
    """The integers a checkpoint's cfg text carries in place of a file (``surgery_...=``)."""
    values = ctx.ints(option)
    if not values or min(values) < 0:
        raise ctx.error(f"{option}= must list the {what} (integers >= 0)")
    return values


def tree_option(ctx: "Ctx") -> tuple[list[int], dict[str, str]]:
    """(group sizes of the ``tree=`` file, the options that inline them into the cfg text); a cfg
    text that already carries them (a checkpoint) needs no file."""
    if TREE_GROUPS_OPTION in ctx.opts:
        return _inlined(ctx, TREE_GROUPS_OPTION, "tree's group sizes"), {}
    sizes = tree_group_sizes(_side_file(ctx, "tree", "hierarchical-softmax tree file (e.g. 9k.tree)"))
    return sizes, {TREE_GROUPS_OPTION: ",".join(map(str, sizes))}


def map_option(ctx: "Ctx") -> tuple[list[int], dict[str, str]]:
    """(entries of the ``map=`` file, the options that inline them), as :func:`tree_option`."""
    if MAP_OPTION in ctx.opts:
        return _inlined(ctx, MAP_OPTION, "map's class indices"), {}
    entries = map_entries(_side_file(ctx, "map", "class map file (e.g. coco9k.map)"))
    if not entries:
        raise ctx.error(f"map={ctx.opts['map']}: the map file is empty; it lists one class index a line")
    return entries, {MAP_OPTION: ",".join(map(str, entries))}


class SoftmaxLayer(PassLayer):
    """Softmax over ``groups`` contiguous chunks of the flattened C*H*W input (``spatial=1``:
    over channels at each position). Darknet itself gives this layer no C/H/W (only
    outputs = inputs); ``out_shape`` repeats the input shape.

    ``tree=FILE`` (YOLO9000's hierarchical softmax, Darknet's ``softmax_tree``): a softmax
    within each group of the tree file (see :func:`tree_group_sizes`), consecutive in the
    flattened input; ``groups``/``spatial`` are then ignored, as in Darknet, and inputs past
    the tree's nodes are 0 (Darknet never writes them). The file is looked up next to the
    cfg, then in the working directory; its group sizes are inlined into the cfg text as
    ``surgery_tree_groups=`` (``inline_options``) so a checkpoint rebuilds without the file."""

    section = "softmax"

    def __init__(self, ctx: "Ctx"):
        super().__init__(ctx)
        self.groups, self.temperature = ctx.int("groups", 1), ctx.float("temperature", 1.0)
        self.spatial = bool(ctx.float("spatial", 0.0))
        n = math.prod(ctx.in_shape)
        self.tree: tuple[int, ...] | None = None
        self.inline_options: dict[str, str] = {}
        if "tree" in ctx.opts:
            sizes, self.inline_options = tree_option(ctx)
            self.tree = tuple(sizes)
            if sum(self.tree) > n:
                raise ctx.error(f"tree={ctx.opts['tree']} has {sum(self.tree)} nodes but the layer has only {n} inputs")
            return
        if self.groups < 1 or n % self.groups:
            raise ctx.error(f"groups={self.groups} does not divide the {n} inputs")

    def forward(self, x):
        t = x if self.temperature == 1 else x / self.temperature
        if self.tree is not None:
            return self._tree_softmax(t).reshape(x.shape)
        if self.spatial:
            return F.softmax(t, dim=1)
        return F.softmax(t.reshape(x.shape[0], self.groups, -1), dim=-1).reshape(x.shape)

    def _tree_softmax(self, t):
        """Darknet's softmax_tree: a softmax within each contiguous group (segment max, sum)."""
        b = t.shape[0]
        flat = t.reshape(b, -1)
        n = sum(self.tree)
        seg = torch.repeat_interleave(torch.arange(len(self.tree), device=t.device),
                                      torch.tensor(self.tree, device=t.device), output_size=n)
        idx = seg.expand(b, n)
        v = flat[:, :n]
        top = v.new_full((b, len(self.tree)), float("-inf")).scatter_reduce(1, idx, v, "amax")
        e = torch.exp(v - top.gather(1, idx))
        total = v.new_zeros((b, len(self.tree))).scatter_add(1, idx, e)
        out = e / total.gather(1, idx)
        if n < flat.shape[1]:
            out = torch.cat([out, flat.new_zeros((b, flat.shape[1] - n))], dim=1)
        return out

    def extra_repr(self) -> str:
        return f"tree={len(self.tree)} groups" if self.tree is not None else ""


HEAD_LAYERS: dict[str, type[DarknetLayer]] = {
    cls.section: cls for cls in (YoloLayer, RegionLayer, DetectionLayer, SoftmaxLayer)
}
