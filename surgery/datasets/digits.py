"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as an image folder.

Layout (the ImageFolder convention: class = sub-folder name)::

    OUT/train/<digit>/<index>.png      1,437 images
    OUT/val/<digit>/<index>.png          360 images

``<index>`` is the sample's index in ``sklearn.datasets.load_digits()``. The split is
stratified and deterministic (``train_test_split(test_size=0.2, stratify=y,
random_state=0)``), so every writer of the folder produces the same files. Pixel values
0..16 are scaled to 0..255 (``round(v * 255 / 16)``) and written as 8-bit grayscale PNG at
the native 8x8; the training pipeline resizes to the model's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.core.errors import SurgeryError
from surgery.datasets.folder import atomic_folder, check_new_folder

VAL_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsReport:
    output: str
    train_images: int
    val_images: int
    classes: tuple[str, ...]
    image_shape: tuple[int, ...]  # C x H x W as written


def digit_split():
    """(images uint8 (1797, 8, 8) scaled to 0..255, targets, train indices, val indices): the
    stratified deterministic split every writer of the digits uses."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    train_idx, val_idx = train_test_split(np.arange(len(images)), test_size=VAL_FRACTION, stratify=d.target,
                                          random_state=SPLIT_SEED)
    return images, d.target, train_idx, val_idx


def write_digits(out_dir: str | Path, *, per_class: int | None = None, force: bool = False) -> DigitsReport:
    """Write the digits image folder to ``out_dir`` atomically (a temporary sibling folder,
    renamed into place). An existing non-empty ``out_dir`` is refused without ``force``.
    ``per_class``: keep only the first N images (by index) of each class in each split — a
    small folder for quick examples and tests."""
    from PIL import Image

    out = check_new_folder(out_dir, force=force)
    images, target, train_idx, val_idx = digit_split()
    if per_class is not None and per_class < 1:
        raise SurgeryError(f"per-class {per_class} must be at least 1")
    splits = {}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        kept, seen = [], {}
        for i in sorted(int(j) for j in idx):
            c = int(target[i])
            if per_class is None or seen.get(c, 0) < per_class:
                kept.append(i)
                seen[c] = seen.get(c, 0) + 1
        splits[split] = kept
    with atomic_folder(out) as tmp:
        for split, idx in splits.items():
            for i in idx:
                folder = tmp / split / str(int(target[i]))
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    return DigitsReport(str(out), len(splits["train"]), len(splits["val"]), tuple(str(c) for c in range(10)), (1, 8, 8))
