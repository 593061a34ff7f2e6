"""Digit detection data from what ships inside installed wheels: scikit-learn's 8x8 handwritten
digits pasted onto the bundled photographs, 10 classes (``0``..``9``), YOLO labels.

Each image is a random square crop of one photograph (:data:`~surgery.datasets.paste.PHOTOS`)
resized to ``size`` x ``size``, with 1..``max_digits`` digits: each one a sample of
``sklearn.datasets.load_digits()`` upscaled (bicubic) to a random height
(:data:`HEIGHT_RANGE` of the image side), rotated within ±``max_angle`` degrees, and pasted
with its intensity as coverage in a colour contrasting with the pixels beneath, where it
overlaps no other digit (:func:`surgery.datasets.paste.paste`).

**Boxes** are the tight axis-aligned boxes of each digit's pixels at half coverage or more,
after scaling and rotation; the class is the digit.

**Split by photograph and by digit**: ``val`` images are cut from photographs no ``train``
image uses, and their digits are the held-out samples of the digits' own stratified split
(:func:`surgery.datasets.digits.digit_split`, the one ``surgery data digits`` writes), so the
held-out score measures new scenes and new handwriting.

Layout (what ``surgery train --data`` reads), as :mod:`surgery.datasets.synth_text`::

    OUT/{train,val}/images/<n>.jpg   OUT/{train,val}/labels/<n>.txt   (one 'digit cx cy w h' line per digit)
    OUT/classes.txt                  0..9, one a line
    OUT/synth.json                   how every image was made: photo, crop, digits (sample, size, angle, box), seed

Everything is a function of the arguments: the same arguments write the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from surgery.datasets.digits import digit_split
from surgery.datasets.paste import PastedReport, check_settings, paste, random_background, tight_box, write_yolo_folder

HEIGHT_RANGE = (0.1, 0.3)  # digit height as a fraction of the image side
CLASSES = tuple(str(d) for d in range(10))


def render_digit(glyph: np.ndarray, px: int, angle: float):
    """The coverage mask (Pillow ``L``) of an 8x8 uint8 ``glyph`` upscaled to ``px`` x ``px``
    (bicubic) and rotated by ``angle`` degrees (counter-clockwise, expanded), and its tight box
    (x1, y1, x2, y2) of pixels >= COVERAGE (exclusive right/bottom)."""
    from PIL import Image

    pad = max(2, px // 8)  # room for the bicubic overshoot and the rotation
    mask = Image.new("L", (px + 2 * pad, px + 2 * pad), 0)
    mask.paste(Image.fromarray(np.ascontiguousarray(glyph), mode="L").resize((px, px), Image.BICUBIC), (pad, pad))
    if angle:
        mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
    return mask, tight_box(mask)


def compose(rng: np.random.Generator, name: str, size: int, max_digits: int, max_angle: float, glyphs: np.ndarray,
            targets: np.ndarray, pool: np.ndarray, cache: dict):
    """One image: (Pillow RGB image, its record: photo, crop, digits with their boxes in pixels),
    the digits drawn from the samples ``pool`` (indices into ``glyphs``/``targets``)."""
    img, crop = random_background(rng, name, size, cache)
    digits, boxes = [], []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        sample = int(pool[int(rng.integers(0, len(pool)))])
        px = max(6, int(round(size * rng.uniform(*HEIGHT_RANGE))))
        angle = float(np.round(rng.uniform(-max_angle, max_angle), 2))
        mask, tight = render_digit(glyphs[sample], px, angle)
        if tight is None:
            continue
        placed = paste(rng, img, mask, tight, boxes)
        if placed is not None:  # else no room left for this digit at this size
            digits.append({"digit": int(targets[sample]), "sample": sample, "px": px, "angle": angle, **placed})
    return img, {"photo": name, "crop": list(crop), "digits": digits}


def write_digit_boxes(out_dir: str | Path, *, n_train: int = 1000, n_val: int = 200, size: int = 256,
                      max_digits: int = 10, max_angle: float = 10.0, seed: int = 0, force: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> PastedReport:
    """Write the folder (see the module docstring) atomically; ``progress(done, total)`` per image."""
    check_settings(n_train, n_val, size, max_digits, max_angle, "--max-digits")
    glyphs, targets, train_idx, val_idx = digit_split()
    pools = {"train": np.sort(train_idx), "val": np.sort(val_idx)}
    cache: dict = {}

    def one(rng, name, split):
        img, rec = compose(rng, name, size, max_digits, max_angle, glyphs, targets, pools[split], cache)
        return img, rec, [(d["digit"], d["box"]) for d in rec["digits"]]

    return write_yolo_folder(out_dir, counts={"train": n_train, "val": n_val}, size=size, classes=CLASSES,
                             compose=one, seed=seed, force=force, progress=progress,
                             manifest={"generator": "surgery data digit-boxes", "max_digits": max_digits,
                                       "max_angle": max_angle})
