"""Detection data made by pasting shapes onto the bundled photographs, written as YOLO folders:
the machinery :mod:`surgery.datasets.synth_text` (words) and :mod:`surgery.datasets.digit_boxes`
(scikit-learn's digits) share.

- :func:`photo` / :func:`background`: the photographs scikit-image, scikit-learn and matplotlib
  ship (:data:`PHOTOS`, nothing downloaded) and square crops of them; :func:`random_background`
  draws the crop.
- :func:`paste`: one coverage mask (Pillow ``L``, 255 = opaque) pasted in a colour whose luminance
  is at least :data:`MIN_CONTRAST` from the mean of the pixels beneath, at a place where its
  tight box overlaps no earlier box (:data:`MAX_TRIES` draws).
- :func:`write_yolo_folder`: the ``train``/``val`` folders (``images/<n>.jpg`` +
  ``labels/<n>.txt``, one ``class cx cy w h`` line per object), ``classes.txt`` and the manifest
  :data:`MANIFEST`, written atomically. Image ``i`` of split ``s`` draws everything from
  ``numpy.random.default_rng([seed, s, i])`` — first its photograph among the split's
  (:data:`PHOTOS` says which: ``val`` photographs are never used for ``train``), then whatever
  the generator's ``compose`` draws — so the same arguments write the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from surgery.core.errors import SurgeryError
from surgery.datasets.folder import atomic_folder, check_new_folder

MANIFEST = "synth.json"
MIN_CONTRAST = 90  # luminance (0..255) between the pasted colour and the mean beneath it
COVERAGE = 128  # a mask pixel counts towards the box from half coverage
JPEG_QUALITY = 92
MAX_TRIES = 30

# photograph -> split. Chosen to hold no text or digits of their own (skimage's page/text/logo
# and the rocket's lettering would be unlabelled objects) and to come from the wheels.
PHOTOS: dict[str, str] = {
    "skimage:astronaut": "train", "skimage:coffee": "train", "skimage:chelsea": "train",
    "skimage:hubble_deep_field": "train", "skimage:immunohistochemistry": "train", "skimage:coins": "train",
    "skimage:camera": "train", "skimage:brick": "train", "skimage:grass": "train", "skimage:gravel": "train",
    "skimage:cell": "train", "skimage:retina": "train", "sklearn:china.jpg": "train",
    "skimage:stereo_motorcycle": "val", "sklearn:flower.jpg": "val", "matplotlib:grace_hopper.jpg": "val",
    "skimage:moon": "val", "skimage:colorwheel": "val",
}
SPLITS = ("train", "val")


@dataclass(frozen=True)
class PastedReport:
    """What :func:`write_yolo_folder` wrote (``surgery data synth-text`` / ``digit-boxes``)."""

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


def _cached(name: str, cache: dict | None) -> np.ndarray:
    a = cache[name] if cache is not None and name in cache else photo(name)
    if cache is not None:
        cache[name] = a
    return a


def background(name: str, crop: tuple[int, int, int], size: int, cache: dict | None = None):
    """The ``size`` x ``size`` RGB Pillow image cut from photograph ``name`` at ``crop`` = (x, y, side)."""
    from PIL import Image

    a = _cached(name, cache)
    x, y, side = crop
    return Image.fromarray(a[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)


def random_background(rng: np.random.Generator, name: str, size: int, cache: dict):
    """(image, crop): a random square crop of ``name`` (at least half its shorter side) at ``size``."""
    a = _cached(name, cache)
    h, w = a.shape[:2]
    side = int(rng.integers(int(0.5 * min(h, w)), min(h, w) + 1))
    crop = (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side)
    return background(name, crop, size, cache), crop


def tight_box(mask) -> tuple[int, int, int, int] | None:
    """The box (x1, y1, x2, y2; exclusive right/bottom) of a mask's pixels >= :data:`COVERAGE`."""
    return mask.point(lambda v: 255 if v >= COVERAGE else 0).getbbox()


def luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def contrasting_colour(rng: np.random.Generator, beneath: float) -> tuple[int, int, int]:
    for _ in range(20):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(luma(c) - beneath) >= MIN_CONTRAST:
            return c
    return (0, 0, 0) if beneath > 127 else (255, 255, 255)


def overlaps(box, boxes, margin: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin for b in boxes)


def paste(rng: np.random.Generator, img, mask, tight, boxes: list) -> dict | None:
    """Paste ``mask`` (with tight box ``tight`` inside it) onto ``img`` in place, where its box
    overlaps none of ``boxes`` (appended to), in a colour contrasting with the pixels beneath.
    Returns ``{"colour", "at", "box"}`` (pixels), or None when no free place was drawn."""
    from PIL import Image

    size_w, size_h = img.size
    mw, mh = mask.size
    placed = None
    for _ in range(MAX_TRIES):
        if mw > size_w or mh > size_h:
            break
        ox, oy = int(rng.integers(0, size_w - mw + 1)), int(rng.integers(0, size_h - mh + 1))
        box = (ox + tight[0], oy + tight[1], ox + tight[2], oy + tight[3])
        if not overlaps(box, boxes):
            placed = (ox, oy, box)
            break
    if placed is None:
        return None
    ox, oy, box = placed
    m = np.asarray(mask, dtype=np.float64) / 255.0
    region = np.asarray(img, dtype=np.float64)[oy:oy + mh, ox:ox + mw]
    beneath = luma((region * m[..., None]).sum((0, 1)) / max(m.sum(), 1e-9))
    colour = contrasting_colour(rng, beneath)
    img.paste(Image.new("RGB", mask.size, colour), (ox, oy), mask)
    boxes.append(box)
    return {"colour": list(colour), "at": [ox, oy], "box": list(box)}


def check_settings(n_train: int, n_val: int, size: int, max_objects: int, max_angle: float, flag: str) -> None:
    """The settings every generator shares, refused before anything is written (``flag``: the
    option that sets ``max_objects``, e.g. ``--max-words``)."""
    if n_train < 1 or n_val < 1:
        raise SurgeryError(f"--train {n_train} / --val {n_val}: write at least 1 image of each")
    if n_train + n_val > 1_000_000:
        raise SurgeryError(f"{n_train + n_val:,} images is more than this generator writes (1,000,000); ask for fewer")
    if not 32 <= size <= 2048:
        raise SurgeryError(f"--size {size} must be 32..2048 pixels")
    if not 1 <= max_objects <= 50:
        raise SurgeryError(f"{flag} {max_objects} must be 1..50")
    if not 0 <= max_angle <= 45:
        raise SurgeryError(f"--max-angle {max_angle} must be 0..45 degrees")


# compose(rng, photo name, split) -> (Pillow RGB image, record for the manifest, [(class, (x1, y1, x2, y2))])
Compose = Callable[[np.random.Generator, str, str], tuple]


def write_yolo_folder(out_dir: str | Path, *, counts: dict[str, int], size: int, classes: Sequence[str],
                      compose: Compose, seed: int, manifest: dict, force: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> PastedReport:
    """Write the folder (see the module docstring) atomically; ``progress(done, total)`` per image.
    ``manifest``: the generator's settings, written to :data:`MANIFEST` with every image's record."""
    out = check_new_folder(out_dir, force=force)
    splits = {s: sorted(n for n, v in PHOTOS.items() if v == s) for s in SPLITS}
    records: dict[str, list] = {s: [] for s in SPLITS}
    boxes_n = {s: 0 for s in SPLITS}
    total, done = sum(counts.values()), 0
    digits = len(str(max(counts.values()) - 1))
    with atomic_folder(out) as tmp:
        for split_id, split in enumerate(SPLITS):
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "labels").mkdir(parents=True)
            names = splits[split]
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_id, i])
                name = names[int(rng.integers(0, len(names)))]
                img, rec, objects = compose(rng, name, split)
                stem = f"{i:0{digits}d}"
                img.save(tmp / split / "images" / f"{stem}.jpg", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: thin coloured strokes
                lines = [f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                         f"{(y2 - y1) / size:.6f}" for c, (x1, y1, x2, y2) in objects]
                (tmp / split / "labels" / f"{stem}.txt").write_text("".join(l + "\n" for l in lines))
                records[split].append({"file": f"{split}/images/{stem}.jpg", **rec})
                boxes_n[split] += len(lines)
                done += 1
                if progress is not None:
                    progress(done, total)
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
        settings = {k: v for k, v in manifest.items() if k != "generator"}
        full = {"generator": manifest.get("generator"), "seed": seed, "size": size, **settings,
                "classes": list(classes), "photos": PHOTOS, "images": records}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=1) + "\n")
    return PastedReport(str(out), counts["train"], counts["val"], boxes_n["train"], boxes_n["val"], (3, size, size),
                        tuple(classes), tuple(splits["train"]), tuple(splits["val"]), seed)
