"""Patch pairs for learning to compare patches, cut from a real rectified stereo pair.

OnionNet's patch-matching experiment (onionnet-bmvc2016 §4.1, Table 2) trains on the Brown
et al. multi-view stereo patches, which no installed package ships. scikit-image ships a
Middlebury 2014 pair with ground-truth disparity (``skimage.data.stereo_motorcycle``,
500 x 741, disparities 7..60 px, ``inf`` where unknown), so the pairs are cut from it.

**Correspondence.** For a left-image pixel ``(y, x)`` with finite disparity ``d`` the
corresponding right-image pixel is ``(y, x - d)`` (rows are rectified; Middlebury's ``disp0``
is the left view's disparity). skimage's docstring states the opposite sign; the images
say otherwise: 7x7 windows differ by 0.036 mean absolute grey level at ``x - d`` and by
0.19 at ``x + d`` (checked in tests/test_stereo_patches.py).

**A pair** is a 64 x 64 greyscale window of the left image centred at ``(y, x)`` (rows
``y-32 .. y+31``) and one of the right image:

- *positive* (label 1, ``pos``): centred at ``(y, round(x - d))``;
- *negative* (label 0, ``neg``), half of them ``shift``: the same row, the right window
  displaced from the true match by 16..64 px (a wrong disparity); the other half
  ``random``: anywhere in the same region of the right image, at least 16 px (row or
  column) away from the true match.

Half the pairs are positive (MVSD is balanced). Greyscale is Pillow's ``L`` (ITU-R 601-2).

**Only what both cameras see.** MVSD's patches are projections of 3D points seen in both
views. Here a left pixel is *hidden* from the right camera when its disparity is unknown
(``inf``: Middlebury marks occlusions so) or when it is occluded: a nearer surface (a larger
disparity, by more than 1 px) lands on the same right-image pixel — the z-buffer test of
forward warping, :func:`hidden_pixels`. A window centre must be seen, and at most
:data:`MAX_HIDDEN` (10 %) of its left window hidden: windows straddling an occlusion were the
tail of "positives" whose two windows do not look alike (docs/BENCHMARKS.md, onion Table 2).

**Held-out region.** The bottom ``test_rows`` rows (default 160: rows 340..499) are the
test region; every pixel of every ``val`` pair (both windows) lies in it and no pixel of any
``train`` pair does (rectified pairs share rows, so a band of rows separates both images).

**Written as** an image folder the training loop reads (ImageFolder labels: ``neg`` = 0,
``pos`` = 1), one two-channel PNG per pair (Pillow mode ``LA``: left window = channel 0,
right window = channel 1)::

    OUT/train/{neg,pos}/<n>.png
    OUT/val/{neg,pos}/<n>.png
    OUT/pairs.json      how every pair was cut (centres, kind), the region and the seed

Everything is a function of the seed: the same arguments write the same bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.core import safety
from surgery.core.errors import SurgeryError
from surgery.datasets.folder import atomic_folder, check_new_folder

PATCH = 64
HALF = PATCH // 2
TEST_ROWS = 160
MIN_OFFSET, MAX_OFFSET = 16, 64  # px between a negative's right window and the true match
DEFAULT_TRAIN, DEFAULT_VAL = 4000, 1000
MAX_HIDDEN = 0.10  # the most of a left window the right camera may not see (unknown or occluded)
MANIFEST = "pairs.json"
SOURCE = "skimage.data.stereo_motorcycle"


@dataclass(frozen=True)
class StereoScene:
    left: np.ndarray  # (H, W) uint8
    right: np.ndarray  # (H, W) uint8
    disparity: np.ndarray  # (H, W) float32, inf where unknown


def scene() -> StereoScene:
    """The Middlebury motorcycle pair as greyscale uint8 and its disparity map."""
    from PIL import Image
    from skimage import data

    left, right, disp = data.stereo_motorcycle()
    gray = [np.asarray(Image.fromarray(a).convert("L"), dtype=np.uint8) for a in (left, right)]
    return StereoScene(gray[0], gray[1], np.asarray(disp, dtype=np.float32))


@dataclass(frozen=True)
class PairSet:
    """Pairs as arrays. ``coords[i] = (y, x_left, y_right, x_right)`` are window centres."""

    pairs: np.ndarray  # (N, 2, 64, 64) uint8: left window, right window
    labels: np.ndarray  # (N,) int64: 1 = corresponding, 0 = not
    coords: np.ndarray  # (N, 4) int64
    kinds: tuple[str, ...]  # "pos", "shift" or "random" per pair

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class StereoPatches:
    train: PairSet
    val: PairSet
    test_rows: tuple[int, int]  # [start, stop) image rows of the held-out region
    seed: int


def hidden_pixels(disparity: np.ndarray, *, tolerance: float = 1.0) -> np.ndarray:
    """(H, W) bool: the left pixels the right camera does not see — unknown disparity, or a
    match ``(y, round(x - d))`` that a nearer left pixel (disparity larger by ``tolerance``)
    also lands on, or one outside the right image."""
    h, w = disparity.shape
    known = np.isfinite(disparity)
    d = np.where(known, disparity, 0.0)
    rows, xs = np.mgrid[0:h, 0:w]
    xr = np.rint(xs - d).astype(np.int64)
    lands = known & (xr >= 0) & (xr < w)
    nearest = np.full((h, w), -np.inf)
    np.maximum.at(nearest, (rows[lands], xr[lands]), d[lands])  # z-buffer: the largest disparity wins
    seen = np.zeros((h, w), dtype=bool)
    seen[lands] = d[lands] >= nearest[rows[lands], xr[lands]] - tolerance
    return ~seen


def window(img: np.ndarray, y: int, x: int) -> np.ndarray:
    """The 64 x 64 window centred at (y, x): rows y-32..y+31, columns x-32..x+31."""
    return img[y - HALF:y + HALF, x - HALF:x + HALF]


def _check_counts(n_train: int, n_val: int, test_rows: int, height: int) -> None:
    for name, n in (("train pairs", n_train), ("val pairs", n_val)):
        if n < 2 or n % 2:
            raise SurgeryError(f"{name} = {n}: give an even number of at least 2 (half positive, half negative)")
    # refused up front, with the amount: the pairs are held in memory before they are written
    safety.check_memory((n_train + n_val) * 2 * PATCH * PATCH, f"{n_train + n_val:,} pairs of {PATCH}x{PATCH} windows",
                        "ask for fewer pairs")
    if not 2 * PATCH <= test_rows <= height - 2 * PATCH:
        raise SurgeryError(f"test rows = {test_rows}: the held-out band needs {2 * PATCH}..{height - 2 * PATCH} rows "
                           f"so that both regions fit {PATCH}x{PATCH} windows")


def _cut(sc: StereoScene, rng: np.random.Generator, n: int, rows: tuple[int, int],
         max_hidden: float = MAX_HIDDEN) -> PairSet:
    """``n`` pairs (n/2 positive) whose windows lie inside image rows [rows[0], rows[1]), centred
    on left pixels the right camera sees, with at most ``max_hidden`` of the window hidden."""
    from scipy.ndimage import uniform_filter  # scikit-image's dependency

    h, w = sc.disparity.shape
    hidden = hidden_pixels(sc.disparity)
    # share of hidden pixels in the window rows y-32..y+31, columns x-32..x+31 of each centre
    hidden_share = uniform_filter(hidden.astype(np.float64), PATCH, mode="constant", cval=1.0)
    y_lo, y_hi = rows[0] + HALF, rows[1] - HALF  # centres: y-32 >= start, y+31 < stop
    disp = sc.disparity
    # candidate left centres with a right match whose window fits the image
    ys, xs = np.mgrid[y_lo:y_hi + 1, HALF:w - HALF + 1]
    d = disp[ys, xs]
    ok = np.isfinite(d) & ~hidden[ys, xs] & (hidden_share[ys, xs] <= max_hidden)
    xr = np.where(ok, np.rint(xs - np.where(ok, d, 0)), -1).astype(np.int64)
    ok &= (xr >= HALF) & (xr <= w - HALF)
    cy, cx, cxr = ys[ok], xs[ok], xr[ok]
    if len(cy) == 0:
        raise SurgeryError(f"image rows {rows[0]}..{rows[1] - 1} hold no window the right camera sees "
                           f"(at most {max_hidden:.0%} hidden)")
    n_pos = n // 2
    n_shift = (n - n_pos) // 2
    n_rand = n - n_pos - n_shift
    coords, kinds = [], []
    pick = rng.integers(0, len(cy), size=n_pos)
    for i in pick:
        coords.append((cy[i], cx[i], cy[i], cxr[i]))
        kinds.append("pos")
    while len(coords) < n_pos + n_shift:
        i = int(rng.integers(0, len(cy)))
        off = int(rng.integers(MIN_OFFSET, MAX_OFFSET + 1)) * (1 if rng.random() < 0.5 else -1)
        x2 = cxr[i] + off
        if HALF <= x2 <= w - HALF:
            coords.append((cy[i], cx[i], cy[i], x2))
            kinds.append("shift")
    while len(coords) < n:
        i = int(rng.integers(0, len(cy)))
        y2 = int(rng.integers(y_lo, y_hi + 1))
        x2 = int(rng.integers(HALF, w - HALF + 1))
        if abs(y2 - cy[i]) >= MIN_OFFSET or abs(x2 - cxr[i]) >= MIN_OFFSET:
            coords.append((cy[i], cx[i], y2, x2))
            kinds.append("random")
    c = np.asarray(coords, dtype=np.int64)
    order = rng.permutation(n)  # interleave positives and negatives
    c, kinds = c[order], tuple(kinds[j] for j in order)
    pairs = np.stack([np.stack([window(sc.left, a, b), window(sc.right, e, f)]) for a, b, e, f in c])
    labels = np.asarray([1 if k == "pos" else 0 for k in kinds], dtype=np.int64)
    return PairSet(pairs, labels, c, kinds)


def make_pairs(n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL, *, seed: int = 0,
               test_rows: int = TEST_ROWS) -> StereoPatches:
    """Cut the training pairs from the rows above the held-out band and the val pairs from it."""
    sc = scene()
    h = sc.disparity.shape[0]
    _check_counts(n_train, n_val, test_rows, h)
    rng = np.random.default_rng(seed)
    start = h - test_rows
    train = _cut(sc, rng, n_train, (0, start))
    val = _cut(sc, rng, n_val, (start, h))
    return StereoPatches(train, val, (start, h), seed)


@dataclass(frozen=True)
class StereoPatchesReport:
    output: str
    train_pairs: int
    val_pairs: int
    train_positives: int
    val_positives: int
    test_rows: tuple[int, int]  # [start, stop) image rows held out for val
    image_shape: tuple[int, ...]  # C x H x W of every sample
    seed: int


def _rows(ps: PairSet, split: str) -> list[dict]:
    out = []
    for i in range(len(ps)):
        y, x, y2, x2 = (int(v) for v in ps.coords[i])
        out.append({"file": f"{split}/{'pos' if ps.labels[i] else 'neg'}/{i:06d}.png", "label": int(ps.labels[i]),
                    "kind": ps.kinds[i], "left": [y, x], "right": [y2, x2]})
    return out


def write_stereo_patches(out_dir: str | Path, *, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL,
                         seed: int = 0, test_rows: int = TEST_ROWS, force: bool = False) -> StereoPatchesReport:
    """Write the pair folder (see the module docstring) atomically: a temporary sibling folder
    renamed into place. A non-empty ``out_dir`` is refused without ``force``."""
    from PIL import Image

    out = check_new_folder(out_dir, force=force)
    _check_counts(n_train, n_val, test_rows, scene().disparity.shape[0])
    need = (n_train + n_val) * (2 * PATCH * PATCH + 512)  # an upper bound: raw LA pixels plus PNG and manifest overhead
    free = shutil.disk_usage(out.parent.resolve()).free
    if need > free:
        raise SurgeryError(f"{n_train + n_val:,} pairs need up to {safety.fmt_bytes(need)} on disk but "
                           f"{out.parent.resolve()} has {safety.fmt_bytes(free)} free; ask for fewer pairs")
    sp = make_pairs(n_train, n_val, seed=seed, test_rows=test_rows)
    manifest = {"source": SOURCE, "patch": PATCH, "seed": seed, "test_rows": list(sp.test_rows),
                "correspondence": "right = (y, round(x - disparity[y, x])); windows rows y-32..y+31",
                "max_hidden": MAX_HIDDEN,
                "train": _rows(sp.train, "train"), "val": _rows(sp.val, "val")}
    with atomic_folder(out) as tmp:
        for split, ps in (("train", sp.train), ("val", sp.val)):
            for sub in ("neg", "pos"):
                (tmp / split / sub).mkdir(parents=True)
            for row, pair in zip(manifest[split], ps.pairs):
                Image.fromarray(np.ascontiguousarray(pair.transpose(1, 2, 0))).save(tmp / row["file"])  # mode LA
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=None, separators=(",", ":")) + "\n")
    return StereoPatchesReport(str(out), len(sp.train), len(sp.val), int(sp.train.labels.sum()),
                               int(sp.val.labels.sum()), sp.test_rows, (2, PATCH, PATCH), seed)


def read_manifest(root: str | Path) -> dict:
    """The ``pairs.json`` of a folder written by :func:`write_stereo_patches`."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise SurgeryError(f"{str(root)!r} has no {MANIFEST}; write the folder with `surgery data stereo-patches`")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SurgeryError(f"{path}: cannot read it ({e}); write the folder again") from None
