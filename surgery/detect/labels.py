"""YOLO-format detection folders, as Darknet and ultralytics read them.

**Layout.** ``DIR/images/<name>.jpg`` (or .png/.jpeg, any depth) with ``DIR/labels/<name>.txt``
at the same relative path; or ``DIR/train/{images,labels}`` and ``DIR/val/{images,labels}``
(what ``surgery data synth-text`` writes), used as the split. ``DIR/classes.txt`` (Darknet's
``.names``: one class name a line), when present, names the classes.

**A label file** has one line per box: ``class cx cy w h``, the class a non-negative integer,
the box centre and size relative to the image (0..1). Blank lines are skipped. A missing label
file means an image with no boxes (Darknet's and ultralytics' rule: background images). A
malformed line, a class the model does not have, a non-positive size or a box reaching outside
the image (by more than :data:`EDGE_TOLERANCE` of its side, the rounding of label writers) is
refused with the file and line named.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from surgery.core.errors import SurgeryError
from surgery.train.data import hold_out

EDGE_TOLERANCE = 0.01  # a box edge may lie this far (relative) outside the image; it is clipped


@dataclass(frozen=True)
class DetectionFolder:
    """Images of a YOLO folder (relative to ``root``, sorted) and their boxes.

    Duck-types :class:`surgery.train.data.ImageFolder` where the training loop reads it
    (``root``, ``files``, ``skipped``, ``len``)."""

    root: Path  # the images/ folder
    files: tuple[str, ...]
    boxes: tuple[np.ndarray, ...]  # per image (n, 5) float32: class, cx, cy, w, h
    classes: tuple[str, ...]  # names (classes.txt) or "0".."k-1"
    skipped: tuple[str, ...] = ()
    labels = None  # no folder labels (classification)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, keep: Sequence[int]) -> "DetectionFolder":
        return DetectionFolder(self.root, tuple(self.files[i] for i in keep), tuple(self.boxes[i] for i in keep),
                               self.classes, self.skipped)

    @property
    def max_boxes(self) -> int:
        return max((len(b) for b in self.boxes), default=0)

    @property
    def num_boxes(self) -> int:
        return sum(len(b) for b in self.boxes)

    @property
    def max_class(self) -> int:
        return max((int(b[:, 0].max()) for b in self.boxes if len(b)), default=-1)


def is_yolo_folder(path: str | Path) -> bool:
    """Whether ``path`` is a YOLO-format folder (images/ + labels/, or train/ and val/ of them)."""
    p = Path(path)
    return (p / "images").is_dir() and (p / "labels").is_dir() or (
        (p / "train" / "images").is_dir() and (p / "train" / "labels").is_dir())


def parse_label_file(path: Path, classes: int | None = None) -> np.ndarray:
    """The boxes of one label file (n, 5): class, cx, cy, w, h; edges clipped to the image."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SurgeryError(f"{path}: not a text label file (expected lines 'class cx cy w h')") from None
    except OSError as e:
        raise SurgeryError(f"{path}: cannot be read ({e.strerror or e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{n}"
        if len(parts) != 5:
            raise SurgeryError(f"{where}: {line.strip()!r} has {len(parts)} fields; a YOLO label line is "
                               "'class cx cy w h' (5 numbers)")
        try:
            c = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise SurgeryError(f"{where}: {line.strip()!r} is not 'class cx cy w h' (an integer class, then 4 "
                               "numbers)") from None
        if c < 0 or (classes is not None and c >= classes):
            have = f"the model has {classes} class{'es' if classes != 1 else ''} (0..{classes - 1})" if classes else \
                "classes start at 0"
            raise SurgeryError(f"{where}: class {c} is out of range: {have}; retarget the model to the data's "
                               "class count or fix the label")
        if not all(math.isfinite(v) for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise SurgeryError(f"{where}: box size {w:g} x {h:g} must be positive (w and h are relative to the image)")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        t = EDGE_TOLERANCE
        if x1 < -t or y1 < -t or x2 > 1 + t or y2 > 1 + t:
            raise SurgeryError(f"{where}: box {cx:g} {cy:g} {w:g} {h:g} reaches outside the image (edges "
                               f"{x1:.3g}..{x2:.3g}, {y1:.3g}..{y2:.3g}); YOLO labels are relative to the image, 0..1")
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
        rows.append((c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def _class_names(root: Path) -> tuple[str, ...] | None:
    for cand in (root / "classes.txt", root.parent / "classes.txt"):
        if cand.is_file():
            return tuple(l.strip() for l in cand.read_text(encoding="utf-8").splitlines() if l.strip())
    return None


def scan_split(split: Path, *, classes: int | None = None, what: str = "data folder") -> DetectionFolder:
    """One ``images/`` + ``labels/`` folder (``split``), every label file parsed (errors name the
    file and line before anything trains)."""
    from surgery.train import data as tdata

    images = split / "images"
    if not images.is_dir():
        raise SurgeryError(f"{what} {str(split)!r} has no images/ folder; a YOLO-format folder holds images/*.jpg and "
                           "labels/*.txt")
    folder = tdata.scan(images, labels=False, what=what)
    names = _class_names(split)
    boxes = []
    for f in folder.files:
        lab = split / "labels" / Path(f).with_suffix(".txt")
        boxes.append(parse_label_file(lab, classes) if lab.is_file() else np.zeros((0, 5), np.float32))
    out = DetectionFolder(images, folder.files, tuple(boxes), (), folder.skipped)
    k = max(out.max_class + 1, len(names or ()), classes or 0)
    return DetectionFolder(images, folder.files, tuple(boxes), names or tuple(str(i) for i in range(k)),
                           folder.skipped)


def yolo_folders(data: str | Path, val: str | Path | None = None, *,
                 classes: int | None = None) -> tuple[DetectionFolder, DetectionFolder]:
    """(train, held-out) for ``--data DIR`` (and ``--val DIR``): DIR/train and DIR/val when both
    exist; else DIR with --val, or 10% of DIR held out by a hash of the path (as image folders)."""
    root = Path(data)
    if not root.is_dir():
        raise SurgeryError(f"data folder {str(root)!r} does not exist" if not root.exists() else
                           f"data folder {str(root)!r} is not a directory")
    if val is not None:
        return (scan_split(_split(root), classes=classes),
                scan_split(_split(Path(val)), classes=classes, what="validation folder"))
    if is_yolo_folder(root / "train") and is_yolo_folder(root / "val"):
        return (scan_split(root / "train", classes=classes),
                scan_split(root / "val", classes=classes, what="validation folder"))
    return hold_out(scan_split(root, classes=classes), root)  # the classification folders' own rule


def eval_split(data: str | Path, *, classes: int | None = None) -> DetectionFolder:
    """The images ``surgery eval --data DIR`` measures: DIR/val of a split folder, else all of DIR."""
    root = Path(data)
    if is_yolo_folder(root / "val"):
        root = root / "val"
    return scan_split(_split(root), classes=classes)


def _split(p: Path) -> Path:
    """``DIR`` or ``DIR/images`` named: the folder holding images/ and labels/."""
    return p.parent if p.name == "images" and (p.parent / "labels").is_dir() else p


def digest(*fs: DetectionFolder) -> str:
    """sha256 of the images' listing (path and size) and of every box: what the recipe records."""
    h = hashlib.sha256()
    for f in fs:
        for rel, b in zip(f.files, f.boxes):
            h.update(f"{rel}\0{(f.root / rel).stat().st_size}\n".encode())
            h.update(np.ascontiguousarray(b, dtype=np.float32).tobytes())
    return h.hexdigest()
