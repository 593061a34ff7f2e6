"""SynthText-style text detection data from what ships inside installed wheels.

Gupta et al.'s SynthText renders words onto natural photographs and keeps their boxes. Here the
words are drawn with the DejaVu fonts matplotlib ships (``matplotlib/mpl-data/fonts/ttf``) onto
the photographs scikit-image, scikit-learn and matplotlib bundle (:data:`PHOTOS`): each image is
a random square crop of one photograph resized to ``size`` x ``size``, with 1..``max_words``
words of random font, height (:data:`HEIGHT_RANGE` of the image), colour (contrasting with the
pixels beneath: luminance at least :data:`MIN_CONTRAST` apart) and rotation (within
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

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from surgery.core.errors import SurgeryError
from surgery.datasets.folder import atomic_folder, check_new_folder

MANIFEST = "synth.json"
HEIGHT_RANGE = (0.07, 0.18)  # text height (font size) as a fraction of the image side
MIN_CONTRAST = 90  # luminance (0..255) between the text colour and the mean beneath it
COVERAGE = 128  # a rendered pixel counts towards the box from half coverage
JPEG_QUALITY = 92
MAX_TRIES = 30

# photograph -> split. Chosen to hold no text of their own (skimage's page/text/logo and the
# rocket's lettering would be unlabelled text) and to come from the wheels, not a download.
PHOTOS: dict[str, str] = {
    "skimage:astronaut": "train", "skimage:coffee": "train", "skimage:chelsea": "train",
    "skimage:hubble_deep_field": "train", "skimage:immunohistochemistry": "train", "skimage:coins": "train",
    "skimage:camera": "train", "skimage:brick": "train", "skimage:grass": "train", "skimage:gravel": "train",
    "skimage:cell": "train", "skimage:retina": "train", "sklearn:china.jpg": "train",
    "skimage:stereo_motorcycle": "val", "sklearn:flower.jpg": "val", "matplotlib:grace_hopper.jpg": "val",
    "skimage:moon": "val", "skimage:colorwheel": "val",
}

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


@dataclass(frozen=True)
class SynthTextReport:
    output: str
    train_images: int
    val_images: int
    train_boxes: int
    val_boxes: int
    image_shape: tuple[int, ...]  # C x H x W as written
    classes: tuple[str, ...]
    train_photos: tuple[str, ...]
    val_photos: tuple[str, ...]
    seed: int


def photo(name: str) -> np.ndarray:
    """A bundled photograph as uint8 H x W x 3 (grey ones repeated, alpha dropped)."""
    kind, _, key = name.partition(":")
    if kind == "skimage":
        from skimage import data

        a = getattr(data, key)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
    elif kind == "sklearn":
        from sklearn.datasets import load_sample_image

        a = load_sample_image(key)
    elif kind == "matplotlib":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(key) as f:
            a = np.asarray(Image.open(f).convert("RGB"))
    else:
        raise SurgeryError(f"unknown photograph {name!r}")
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return np.ascontiguousarray(a[..., :3])


def font_path(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def background(name: str, crop: tuple[int, int, int], size: int, cache: dict | None = None):
    """The ``size`` x ``size`` RGB Pillow image cut from photograph ``name`` at ``crop`` = (x, y, side)."""
    from PIL import Image

    a = cache[name] if cache is not None and name in cache else photo(name)
    if cache is not None:
        cache[name] = a
    x, y, side = crop
    return Image.fromarray(a[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)


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
    box = mask.point(lambda v: 255 if v >= COVERAGE else 0).getbbox()
    return mask, box


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _colour(rng: np.random.Generator, beneath: float) -> tuple[int, int, int]:
    for _ in range(20):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(_luma(c) - beneath) >= MIN_CONTRAST:
            return c
    return (0, 0, 0) if beneath > 127 else (255, 255, 255)


def _overlaps(box, boxes, margin: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin for b in boxes)


def compose(rng: np.random.Generator, name: str, size: int, max_words: int, max_angle: float, cache: dict):
    """One image: (Pillow RGB image, its record: photo, crop, words with their boxes in pixels)."""
    from PIL import Image

    a = cache[name] if name in cache else photo(name)
    cache[name] = a
    h, w = a.shape[:2]
    side = int(rng.integers(int(0.5 * min(h, w)), min(h, w) + 1))
    crop = (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side)
    img = background(name, crop, size, cache)
    arr = np.asarray(img, dtype=np.float64)
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
        mw, mh = mask.size
        placed = None
        for _ in range(MAX_TRIES):
            if mw > size or mh > size:
                break
            ox, oy = int(rng.integers(0, size - mw + 1)), int(rng.integers(0, size - mh + 1))
            box = (ox + tight[0], oy + tight[1], ox + tight[2], oy + tight[3])
            if not _overlaps(box, boxes):
                placed = (ox, oy, box)
                break
        if placed is None:
            continue  # no room left for this word at this size
        ox, oy, box = placed
        m = np.asarray(mask, dtype=np.float64) / 255.0
        region = arr[oy:oy + mh, ox:ox + mw]
        beneath = _luma((region * m[..., None]).sum((0, 1)) / max(m.sum(), 1e-9))
        colour = _colour(rng, beneath)
        img.paste(Image.new("RGB", mask.size, colour), (ox, oy), mask)
        arr = np.asarray(img, dtype=np.float64)
        boxes.append(box)
        words.append({"text": text, "font": font, "px": px, "angle": angle, "colour": list(colour),
                      "at": [ox, oy], "box": list(box)})
    return img, {"photo": name, "crop": list(crop), "words": words}


def _check(n_train: int, n_val: int, size: int, max_words: int, max_angle: float) -> None:
    if n_train < 1 or n_val < 1:
        raise SurgeryError(f"--train {n_train} / --val {n_val}: write at least 1 image of each")
    if n_train + n_val > 1_000_000:
        raise SurgeryError(f"{n_train + n_val:,} images is more than this generator writes (1,000,000); ask for fewer")
    if not 32 <= size <= 2048:
        raise SurgeryError(f"--size {size} must be 32..2048 pixels")
    if not 1 <= max_words <= 50:
        raise SurgeryError(f"--max-words {max_words} must be 1..50")
    if not 0 <= max_angle <= 45:
        raise SurgeryError(f"--max-angle {max_angle} must be 0..45 degrees")


def write_synth_text(out_dir: str | Path, *, n_train: int = 200, n_val: int = 50, size: int = 256,
                     max_words: int = 4, max_angle: float = 5.0, seed: int = 0, force: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> SynthTextReport:
    """Write the folder (see the module docstring) atomically; ``progress(done, total)`` per image."""
    _check(n_train, n_val, size, max_words, max_angle)
    out = check_new_folder(out_dir, force=force)
    splits = {s: sorted(n for n, v in PHOTOS.items() if v == s) for s in ("train", "val")}
    counts = {"train": n_train, "val": n_val}
    records: dict[str, list] = {"train": [], "val": []}
    boxes_n = {"train": 0, "val": 0}
    total, done = n_train + n_val, 0
    cache: dict = {}
    digits = len(str(max(n_train, n_val) - 1))
    with atomic_folder(out) as tmp:
        for split_id, split in enumerate(("train", "val")):
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "labels").mkdir(parents=True)
            names = splits[split]
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_id, i])
                name = names[int(rng.integers(0, len(names)))]
                img, rec = compose(rng, name, size, max_words, max_angle, cache)
                stem = f"{i:0{digits}d}"
                img.save(tmp / split / "images" / f"{stem}.jpg", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: thin coloured strokes
                lines = []
                for wd in rec["words"]:
                    x1, y1, x2, y2 = wd["box"]
                    lines.append(f"0 {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                                 f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}")
                (tmp / split / "labels" / f"{stem}.txt").write_text("".join(l + "\n" for l in lines))
                records[split].append({"file": f"{split}/images/{stem}.jpg", **rec})
                boxes_n[split] += len(lines)
                done += 1
                if progress is not None:
                    progress(done, total)
        (tmp / "classes.txt").write_text("text\n")
        manifest = {"generator": "surgery data synth-text", "seed": seed, "size": size, "max_words": max_words,
                    "max_angle": max_angle, "classes": ["text"], "photos": PHOTOS, "images": records}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return SynthTextReport(str(out), n_train, n_val, boxes_n["train"], boxes_n["val"], (3, size, size), ("text",),
                           tuple(splits["train"]), tuple(splits["val"]), seed)
