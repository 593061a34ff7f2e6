"""SynthText-style text detection data from what ships inside installed wheels.

Gupta et al.'s SynthText renders words onto natural photographs and keeps their boxes. Here the
words are drawn with the DejaVu fonts matplotlib ships (``matplotlib/mpl-data/fonts/ttf``) onto
the photographs scikit-image, scikit-learn and matplotlib bundle (:data:`PHOTOS`): each image is
a random square crop of one photograph resized to ``size`` x ``size``, with 1..``max_words``
words of random font, height (:data:`HEIGHT_RANGE` of the image), colour (contrasting with the
pixels beneath: luminance at least :data:`~surgery.datasets.paste.MIN_CONTRAST` apart) and rotation (within
±``max_angle`` degrees), placed without overlapping.

**Boxes** are the tight axis-aligned boxes of each word's rendered pixels (coverage above half,
after rotation), in YOLO format (class 0 = ``text``).

**Split by photograph**: the ``val`` images are cut from photographs no ``train`` image uses
(:data:`PHOTOS` says which), so the held-out score measures new scenes, not new crops of seen ones.

Layout (what ``surgery train --data`` reads)::

    OUT/train/images/<n>.jpg   OUT/train/labels/<n>.txt   (one 'class cx cy w h' line per word)
    OUT/val/images/<n>.jpg     OUT/val/labels/<n>.txt
    OUT/classes.txt            text
    OUT/synth.json             how every image was made: photo, crop, words, fonts, boxes, seed

Everything is a function of the arguments: the same arguments write the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from surgery.datasets.paste import (COVERAGE, MANIFEST, MIN_CONTRAST, PHOTOS, PastedReport, background,  # noqa: F401
                                    check_settings, paste, photo, random_background, tight_box, write_yolo_folder)

HEIGHT_RANGE = (0.07, 0.18)  # text height (font size) as a fraction of the image side

WORDS = tuple("""the of and to in is you that it he was for on are as with his they at be this have from or one had
by word but not what all were we when your can said there use an each which she do how their if will up other
about out many then them these so some her would make like him into time has look two more write go see number no
way could people my than first water been call who oil its now find long down day did get come made may part over
new sound take only little work know place year live me back give most very after thing our just name good sentence
man think say great where help through much before line right too mean old any same tell boy follow came want show
also around form three small set put end does another well large must big even such because turn here why ask went
men read need land different home us move try kind hand picture again change off play spell air away animal house
point page letter mother answer found study still learn should america world high every near add food between own
below country plant last school father keep tree never start city earth eye light thought head under story saw left
open exit stop sale hotel coffee taxi bank cafe menu""".split())
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")

SynthTextReport = PastedReport  # what write_synth_text returns


def font_path(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def render_word(text: str, font: str, px: int, angle: float):
    """The coverage mask (Pillow ``L``) of ``text`` in ``font`` at ``px`` pixels, rotated by
    ``angle`` degrees (counter-clockwise), and its tight box (x1, y1, x2, y2) of pixels >= COVERAGE
    (exclusive right/bottom)."""
    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(str(font_path(font)), px)
    l, t, r, b = f.getbbox(text)
    pad = max(2, px // 4)
    mask = Image.new("L", (r - l + 2 * pad, b - t + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - l, pad - t), text, fill=255, font=f)
    if angle:
        mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
    return mask, tight_box(mask)


def compose(rng: np.random.Generator, name: str, size: int, max_words: int, max_angle: float, cache: dict):
    """One image: (Pillow RGB image, its record: photo, crop, words with their boxes in pixels)."""
    img, crop = random_background(rng, name, size, cache)
    words, boxes = [], []
    for _ in range(int(rng.integers(1, max_words + 1))):
        text = str(rng.choice(WORDS))
        text = (text.upper(), text.capitalize(), text)[int(rng.integers(0, 3))]
        font = FONTS[int(rng.integers(0, len(FONTS)))]
        px = max(6, int(round(size * rng.uniform(*HEIGHT_RANGE))))
        angle = float(np.round(rng.uniform(-max_angle, max_angle), 2))
        mask, tight = render_word(text, font, px, angle)
        if tight is None:
            continue
        placed = paste(rng, img, mask, tight, boxes)
        if placed is not None:  # else no room left for this word at this size
            words.append({"text": text, "font": font, "px": px, "angle": angle, **placed})
    return img, {"photo": name, "crop": list(crop), "words": words}


def write_synth_text(out_dir: str | Path, *, n_train: int = 200, n_val: int = 50, size: int = 256,
                     max_words: int = 4, max_angle: float = 5.0, seed: int = 0, force: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> PastedReport:
    """Write the folder (see the module docstring) atomically; ``progress(done, total)`` per image."""
    check_settings(n_train, n_val, size, max_words, max_angle, "--max-words")
    cache: dict = {}

    def one(rng, name, split):
        img, rec = compose(rng, name, size, max_words, max_angle, cache)
        return img, rec, [(0, w["box"]) for w in rec["words"]]

    return write_yolo_folder(out_dir, counts={"train": n_train, "val": n_val}, size=size, classes=("text",),
                             compose=one, seed=seed, force=force, progress=progress,
                             manifest={"generator": "surgery data synth-text", "max_words": max_words,
                                       "max_angle": max_angle})
