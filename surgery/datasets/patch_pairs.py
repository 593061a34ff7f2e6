"""HPatches-style patch pairs from the bundled photographs, alone or with the stereo pairs.

OnionNet's patch experiment (onionnet-bmvc2016 §4.1, Table 2) trains on ~500K Brown et al.
MVSD pairs; :mod:`surgery.datasets.stereo_patches` cuts pairs from the one Middlebury pair
that ships here (one viewpoint change, strongly correlated windows). This module adds a
second source in the manner of HPatches (Balntas et al. 2017): each photograph that
scikit-image, scikit-learn or matplotlib ship (:data:`PHOTOS`, no download) is the
*reference*; :data:`VIEWS` *views* of it are the reference under a known random homography
``H`` (rotation, scale, anisotropy, shear, perspective, translation), then Gaussian blur,
Gaussian noise and an illumination change (gain, gamma, offset). The views are never
materialised: every view pixel a window needs is sampled (bilinear) from the reference at
``H⁻¹`` of its position, so tens of thousands of pairs take seconds.

**A pair** is a 64 x 64 greyscale reference window centred at ``p = (y, x)`` (rows
``y-32 .. y+31``, as in the stereo pairs; ``p`` on a textured spot: the window's grey-level
standard deviation is at least :data:`MIN_STD`) and a 64 x 64 view window centred at ``c``:

- *positive* (label 1, ``pos``): ``c = H(p)`` exactly (sub-pixel; the view window's pixel
  ``(i, j)`` is the view at ``c + (i - 32, j - 32)``), so the centre pixels correspond;
- *hard negative* (``near``): ``c = H(p) + d`` with ``|d|`` uniform in
  :data:`NEAR` = 8..64 px (a few pixels to a window away), any direction;
- *random negative* (``random``): ``c`` anywhere in the view at least 64 px from ``H(p)``.

Half the pairs are positive, the negatives half ``near`` and half ``random``. Every view
window's pre-image (with the blur's margin) lies inside the reference photograph.

**Split by photograph.** :data:`PHOTOS` names each photograph's split; no ``val`` photograph
gives any ``train`` pair. ``--source stereo`` is :mod:`~surgery.datasets.stereo_patches`
(train/val split by a band of image rows of the Middlebury pair; that photograph is therefore
not among :data:`PHOTOS`); ``both`` splits the pairs of each split evenly between the sources.

**Written as** the stereo pairs are (so ``surgery onion train|calibrate`` read it unchanged):
``OUT/{train,val}/{neg,pos}/<n>.png`` two-channel PNGs (Pillow ``LA``: reference window =
channel 0, view window = channel 1) and ``OUT/pairs.json`` (every pair's source, photograph,
view, centres and kind; every view's homography and photometric change; the seed).
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
from surgery.datasets.stereo_patches import HALF, MANIFEST, PATCH, PairSet
from surgery.datasets.stereo_patches import SOURCE as STEREO_SOURCE
from surgery.datasets.stereo_patches import MAX_HIDDEN as STEREO_MAX_HIDDEN
from surgery.datasets.stereo_patches import TEST_ROWS, make_pairs

SOURCES = ("stereo", "warps", "both")
# photograph -> split. Textured photographs from the wheels (skimage's `cat` is `chelsea`; the
# Middlebury left view belongs to the stereo source and its own row split, so it is not here).
PHOTOS: dict[str, str] = {
    "skimage:astronaut": "train", "skimage:camera": "train", "skimage:coins": "train", "skimage:brick": "train",
    "skimage:grass": "train", "skimage:hubble_deep_field": "train", "skimage:immunohistochemistry": "train",
    "skimage:retina": "train", "skimage:cell": "train", "skimage:chelsea": "train", "skimage:moon": "train",
    "skimage:page": "train", "skimage:clock": "train", "skimage:text": "train", "sklearn:china.jpg": "train",
    "skimage:coffee": "val", "skimage:gravel": "val", "skimage:rocket": "val", "sklearn:flower.jpg": "val",
    "matplotlib:grace_hopper.jpg": "val",
}
VIEWS = 6  # warped views per photograph (HPatches: 5 targets per reference)
NEAR = (8, 64)  # px between a hard negative's view window and the true match
MIN_STD = 8.0  # grey levels: a reference window must hold some texture
MAX_ROTATION = 25.0  # degrees
SCALE = (0.8, 1.25)  # log-uniform
ANISOTROPY, SHEAR = 0.1, 0.1
PERSPECTIVE = 0.25  # the perspective terms change the local scale by up to ±this across the image
BLUR = (0.0, 1.5)  # Gaussian sigma, px
NOISE = (0.0, 6.0)  # Gaussian sigma, grey levels
GAIN, GAMMA, OFFSET = (0.7, 1.3), (0.7, 1.4), 20.0
MARGIN = 5  # px sampled around a view window for the blur (ceil(3 * max blur) + 1)
CHUNK = 2048  # pairs sampled at once (bounds the float coordinate arrays)
BYTES_PER_PAIR = 2 * PATCH * PATCH + 512  # on disk, at most: raw LA pixels plus PNG and manifest overhead
MAX_PAIRS = 2_000_000  # a request above this is refused before anything is computed


@dataclass(frozen=True)
class View:
    """A reference photograph under a homography and a photometric change."""

    H: np.ndarray  # (3, 3) float64: reference (x, y, 1) -> view, x = column
    blur: float
    noise: float
    gain: float
    gamma: float
    offset: float

    def to_json(self) -> dict:
        return {"H": [[float(v) for v in r] for r in self.H], "blur": self.blur, "noise": self.noise,
                "gain": self.gain, "gamma": self.gamma, "offset": self.offset}


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # (H, W) float32 grey levels 0..255
    centres: np.ndarray  # (K, 2) int64 (y, x): textured window centres
    views: tuple[View, ...]


def grey(name: str) -> np.ndarray:
    """A bundled photograph as Pillow's ``L`` grey levels (float32, 0..255)."""
    from PIL import Image

    from surgery.datasets.paste import photo

    return np.asarray(Image.fromarray(photo(name)).convert("L"), dtype=np.float32)


def random_view(rng: np.random.Generator, h: int, w: int) -> View:
    """A homography about the image centre and a photometric change, drawn from ``rng``."""
    th = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    s = np.exp(rng.uniform(*np.log(SCALE)))
    a = np.exp(rng.uniform(-ANISOTROPY, ANISOTROPY))
    sh = rng.uniform(-SHEAR, SHEAR)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lin = s * rot @ np.array([[a, sh], [0.0, 1.0 / a]])
    persp = rng.uniform(-PERSPECTIVE, PERSPECTIVE, size=2) / np.array([w, h])
    shift = rng.uniform(-0.05, 0.05, size=2) * np.array([w, h])
    ctr = np.array([(w - 1) / 2, (h - 1) / 2])
    to0 = np.array([[1, 0, -ctr[0]], [0, 1, -ctr[1]], [0, 0, 1.0]])
    core = np.eye(3)
    core[:2, :2] = lin
    core[2, :2] = persp
    back = np.array([[1, 0, ctr[0] + shift[0]], [0, 1, ctr[1] + shift[1]], [0, 0, 1.0]])
    H = back @ core @ to0
    return View(H / H[2, 2], float(rng.uniform(*BLUR)), float(rng.uniform(*NOISE)), float(rng.uniform(*GAIN)),
                float(rng.uniform(*GAMMA)), float(rng.uniform(-OFFSET, OFFSET)))


def apply_h(H: np.ndarray, yx: np.ndarray) -> np.ndarray:
    """``H`` applied to (..., 2) points given as (y, x); returns (y, x)."""
    x, y = yx[..., 1], yx[..., 0]
    d = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    return np.stack([(H[1, 0] * x + H[1, 1] * y + H[1, 2]) / d, (H[0, 0] * x + H[0, 1] * y + H[0, 2]) / d], -1)


def _textured(img: np.ndarray) -> np.ndarray:
    """Window centres (y, x) whose 64 x 64 reference window fits and has std >= MIN_STD."""
    from scipy.ndimage import uniform_filter

    m = uniform_filter(img, PATCH, mode="constant")
    m2 = uniform_filter(img * img, PATCH, mode="constant")
    std = np.sqrt(np.maximum(m2 - m * m, 0))
    # uniform_filter of even size centres the box at rows y-32..y+31: the window convention
    ok = std >= MIN_STD
    h, w = img.shape
    ok[:HALF], ok[h - HALF + 1:], ok[:, :HALF], ok[:, w - HALF + 1:] = False, False, False, False
    return np.argwhere(ok).astype(np.int64)


def load_photo(name: str, seed: int) -> Photo:
    img = grey(name)
    rng = np.random.default_rng([seed, sorted(PHOTOS).index(name) if name in PHOTOS else 0, 1])
    centres = _textured(img)
    if len(centres) == 0:
        raise SurgeryError(f"photograph {name!r} has no textured {PATCH}x{PATCH} window")
    return Photo(name, img, centres, tuple(random_view(rng, *img.shape) for _ in range(VIEWS)))


_OFF = np.arange(-HALF - MARGIN, HALF + MARGIN, dtype=np.float64)  # view offsets of a window plus margin


def _preimages(ph: Photo, views: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Reference (y, x) of every pixel of the margin-padded view windows centred at ``c``:
    (n, S, S, 2), S = 64 + 2 * MARGIN."""
    grid = np.stack(np.meshgrid(_OFF, _OFF, indexing="ij"), -1)  # (S, S, 2) (dy, dx)
    pts = c[:, None, None, :] + grid[None]  # view coordinates
    out = np.empty_like(pts)
    for v in np.unique(views):
        sel = views == v
        out[sel] = apply_h(np.linalg.inv(ph.views[v].H), pts[sel])
    return out  # (n, S, S, 2)


def _inside(ph: Photo, views: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Whether each padded view window's pre-image lies inside the reference (corners suffice:
    a homography maps the window's square to a convex quadrilateral when it keeps orientation)."""
    h, w = ph.image.shape
    e = np.array([_OFF[0], _OFF[-1]])
    corners = np.stack(np.meshgrid(e, e, indexing="ij"), -1).reshape(4, 2)
    ok = np.ones(len(c), bool)
    for v in np.unique(views):
        sel = np.flatnonzero(views == v)
        q = apply_h(np.linalg.inv(ph.views[v].H), c[sel, None, :] + corners[None])  # (k, 4, 2)
        ok[sel] = ((q[..., 0] >= 0) & (q[..., 0] <= h - 1) & (q[..., 1] >= 0) & (q[..., 1] <= w - 1)).all(1)
    return ok


def _view_windows(ph: Photo, views: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 64 x 64 view windows centred at ``c`` (float view coordinates), uint8."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    out = np.empty((len(c), PATCH, PATCH), np.uint8)
    for s in range(0, len(c), CHUNK):
        sl = slice(s, s + CHUNK)
        pre = _preimages(ph, views[sl], c[sl])
        win = map_coordinates(ph.image, [pre[..., 0], pre[..., 1]], order=1, mode="nearest").astype(np.float32)
        noise = rng.standard_normal((len(win), PATCH, PATCH), dtype=np.float32)
        vs = views[sl]
        for v in np.unique(vs):
            k = np.flatnonzero(vs == v)
            vw = ph.views[v]
            x = gaussian_filter(win[k], (0, vw.blur, vw.blur), mode="nearest") if vw.blur > 0 else win[k]
            x = x[:, MARGIN:MARGIN + PATCH, MARGIN:MARGIN + PATCH]
            x = 255.0 * vw.gain * (x / 255.0) ** vw.gamma + vw.offset + vw.noise * noise[k]
            out[s + k] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


def _draw(ph: Photo, rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` (view, reference centre, view centre) of one kind, rejection-sampled in bulk."""
    h, w = ph.image.shape
    got_v, got_p, got_c, have = [], [], [], 0
    for _ in range(200):
        if have >= n:
            break
        k = 4 * (n - have) + 16
        v = rng.integers(0, VIEWS, size=k)
        p = ph.centres[rng.integers(0, len(ph.centres), size=k)]
        m = np.empty((k, 2))
        for vi in np.unique(v):
            sel = v == vi
            m[sel] = apply_h(ph.views[vi].H, p[sel].astype(np.float64))
        if kind == "pos":
            c = m
        elif kind == "near":
            r = rng.uniform(*NEAR, size=k)
            a = rng.uniform(0, 2 * np.pi, size=k)
            c = m + np.stack([r * np.sin(a), r * np.cos(a)], -1)
        else:
            c = np.stack([rng.uniform(0, h - 1, size=k), rng.uniform(0, w - 1, size=k)], -1)
        ok = _inside(ph, v, c)
        if kind == "random":
            ok &= np.hypot(*(c - m).T) >= PATCH
        got_v.append(v[ok])
        got_p.append(p[ok])
        got_c.append(c[ok])
        have += int(ok.sum())
    if have < n:
        raise SurgeryError(f"photograph {ph.name!r}: could not place {n} {kind} pairs inside it; the warps are too "
                           f"strong for its size")
    return np.concatenate(got_v)[:n], np.concatenate(got_p)[:n], np.concatenate(got_c)[:n]


@dataclass(frozen=True)
class WarpPairs:
    """Pairs of one split. ``coords[i] = (y, x, y_view, x_view)``: reference and view window centres."""

    pairs: np.ndarray  # (N, 2, 64, 64) uint8
    labels: np.ndarray  # (N,) int64
    coords: np.ndarray  # (N, 4) float64
    kinds: tuple[str, ...]  # "pos", "near" or "random"
    photos: tuple[str, ...]
    views: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def _counts(n: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` split over photographs by ``weights`` (multinomial: deterministic from ``rng``)."""
    return rng.multinomial(n, weights / weights.sum())


def warp_pairs(photos: list[Photo], n: int, rng: np.random.Generator) -> WarpPairs:
    """``n`` pairs (n/2 positive, n/4 near, n/4 random negatives) from these photographs,
    in a random order; photographs weighted by the square root of their textured area."""
    n_pos = n // 2
    n_near = (n - n_pos) // 2
    wts = np.sqrt([len(p.centres) for p in photos]).astype(np.float64)
    parts = []
    for kind, k in (("pos", n_pos), ("near", n_near), ("random", n - n_pos - n_near)):
        for ph, m in zip(photos, _counts(k, wts, rng)):
            if m:
                v, p, c = _draw(ph, rng, int(m), kind)
                left = np.stack([ph.image[y - HALF:y + HALF, x - HALF:x + HALF] for y, x in p]).astype(np.uint8) \
                    if m else np.empty((0, PATCH, PATCH), np.uint8)
                right = _view_windows(ph, v, c, rng)
                parts.append((np.stack([left, right], 1), np.full(m, kind == "pos", np.int64),
                              np.concatenate([p.astype(np.float64), c], 1), [kind] * int(m), [ph.name] * int(m), v))
    pairs = np.concatenate([q[0] for q in parts])
    order = rng.permutation(n)
    cat = lambda i: np.concatenate([q[i] for q in parts])[order]  # noqa: E731
    flat = lambda i: tuple(x for q in parts for x in q[i])  # noqa: E731
    kinds, names = flat(3), flat(4)
    return WarpPairs(pairs[order], cat(1), cat(2), tuple(kinds[j] for j in order), tuple(names[j] for j in order),
                     cat(5).astype(np.int64))


def split_counts(n_pairs: int, val_fraction: float, source: str) -> dict[str, dict[str, int]]:
    """Pairs per source and split: {source: {"train": n, "val": n}}, every count even and >= 2."""
    if source not in SOURCES:
        raise SurgeryError(f"--source {source!r}: choose {', '.join(SOURCES)}")
    if not 0.0 < val_fraction < 1.0:
        raise SurgeryError(f"--val-fraction {val_fraction}: give a fraction in (0, 1)")
    if n_pairs > MAX_PAIRS:
        raise SurgeryError(f"--pairs {n_pairs:,} is more than {MAX_PAIRS:,}; ask for fewer pairs")
    srcs = ("stereo", "warps") if source == "both" else (source,)
    need = 4 * len(srcs)
    if n_pairs < need or n_pairs % (2 * len(srcs)):
        raise SurgeryError(f"--pairs {n_pairs}: give a multiple of {2 * len(srcs)} of at least {need} (half "
                           f"corresponding, in both splits{' of both sources' if len(srcs) > 1 else ''})")
    per = n_pairs // len(srcs)
    n_val = min(max(2, 2 * round(per * val_fraction / 2)), per - 2)
    return {s: {"train": per - n_val, "val": n_val} for s in srcs}


@dataclass(frozen=True)
class PatchPairsReport:
    output: str
    source: str
    train_pairs: int
    val_pairs: int
    train_positives: int
    val_positives: int
    train_photos: tuple[str, ...]  # photographs (and the stereo pair's row band) giving training pairs
    val_photos: tuple[str, ...]
    image_shape: tuple[int, ...]  # C x H x W of every sample
    bytes_on_disk: int
    seed: int


def _stereo_rows(ps: PairSet) -> list[dict]:
    return [{"source": "stereo", "label": int(ps.labels[i]), "kind": ps.kinds[i], "photo": STEREO_SOURCE,
             "left": [int(v) for v in ps.coords[i, :2]], "right": [int(v) for v in ps.coords[i, 2:]]}
            for i in range(len(ps))]


def _warp_rows(wp: WarpPairs) -> list[dict]:
    return [{"source": "warps", "label": int(wp.labels[i]), "kind": wp.kinds[i], "photo": wp.photos[i],
             "view": int(wp.views[i]), "left": [int(v) for v in wp.coords[i, :2]],
             "right": [round(float(v), 4) for v in wp.coords[i, 2:]]} for i in range(len(wp))]


def make_patch_pairs(n_pairs: int, *, source: str = "both", val_fraction: float = 0.2, seed: int = 0):
    """Pairs and manifest rows per split: ``{"train": (pairs, rows), "val": (pairs, rows)}`` and the
    views of every photograph used (``{photo: [view json]}``)."""
    counts = split_counts(n_pairs, val_fraction, source)
    safety.check_memory(n_pairs * 2 * PATCH * PATCH + CHUNK * (PATCH + 2 * MARGIN) ** 2 * 40,
                        f"{n_pairs:,} pairs of {PATCH}x{PATCH} windows", "ask for fewer pairs")
    ss = np.random.SeedSequence(seed)
    stereo_seed, warp_seed, mix_seed = (int(s.generate_state(1)[0]) for s in ss.spawn(3))
    parts: dict[str, list] = {"train": [], "val": []}
    views: dict[str, list] = {}
    if "stereo" in counts:
        sp = make_pairs(counts["stereo"]["train"], counts["stereo"]["val"], seed=stereo_seed, test_rows=TEST_ROWS)
        for split, ps in (("train", sp.train), ("val", sp.val)):
            parts[split].append((ps.pairs, ps.labels, _stereo_rows(ps)))
    if "warps" in counts:
        rng = np.random.default_rng(warp_seed)
        for split in ("train", "val"):
            photos = [load_photo(name, warp_seed) for name in sorted(PHOTOS) if PHOTOS[name] == split]
            views.update({ph.name: [v.to_json() for v in ph.views] for ph in photos})
            wp = warp_pairs(photos, counts["warps"][split], rng)
            parts[split].append((wp.pairs, wp.labels, _warp_rows(wp)))
    mix = np.random.default_rng(mix_seed)
    out = {}
    for split, ps in parts.items():
        pairs = np.concatenate([p[0] for p in ps])
        rows = [r for p in ps for r in p[2]]
        order = mix.permutation(len(rows)) if len(ps) > 1 else np.arange(len(rows))
        rows = [rows[j] for j in order]
        for i, r in enumerate(rows):
            r["file"] = f"{split}/{'pos' if r['label'] else 'neg'}/{i:06d}.png"
        out[split] = (pairs[order], rows)
    return out, views


def write_patch_pairs(out_dir: str | Path, n_pairs: int, *, source: str = "both", val_fraction: float = 0.2,
                      seed: int = 0, force: bool = False) -> PatchPairsReport:
    """Write the pair folder (module docstring) atomically; refuses a request whose pairs would not
    fit in memory or on disk before computing anything, and a non-empty ``out_dir`` without ``force``."""
    from PIL import Image

    out = check_new_folder(out_dir, force=force)
    split_counts(n_pairs, val_fraction, source)  # bad arguments first
    need = n_pairs * BYTES_PER_PAIR
    free = shutil.disk_usage(out.parent.resolve()).free
    if need > free:
        raise SurgeryError(f"{n_pairs:,} pairs need up to {safety.fmt_bytes(need)} on disk but "
                           f"{out.parent.resolve()} has {safety.fmt_bytes(free)} free; ask for fewer pairs")
    splits, views = make_patch_pairs(n_pairs, source=source, val_fraction=val_fraction, seed=seed)
    manifest = {"source": source, "patch": PATCH, "seed": seed, "val_fraction": val_fraction,
                "photos": {**({STEREO_SOURCE: f"both: its bottom {TEST_ROWS} rows give the val pairs, the rest train"}
                              if source != "warps" else {}), **({k: PHOTOS[k] for k in sorted(PHOTOS)}
                                                                if source != "stereo" else {})},
                "max_hidden": {"stereo": STEREO_MAX_HIDDEN},
                "correspondence": {"stereo": "right = (y, round(x - disparity[y, x]))",
                                   "warps": "right = H(left) in view coordinates (y, x); H maps (x, y, 1)"},
                "views": views, "train": splits["train"][1], "val": splits["val"][1]}
    with atomic_folder(out) as tmp:
        for split, (pairs, rows) in splits.items():
            for sub in ("neg", "pos"):
                (tmp / split / sub).mkdir(parents=True)
            for row, pair in zip(rows, pairs):
                Image.fromarray(np.ascontiguousarray(pair.transpose(1, 2, 0))).save(tmp / row["file"],
                                                                                    compress_level=1)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=None, separators=(",", ":")) + "\n")
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())

    def photos_of(rows):
        return tuple(sorted({r["photo"] for r in rows}))

    tr, va = splits["train"][1], splits["val"][1]
    return PatchPairsReport(str(out), source, len(tr), len(va), sum(r["label"] for r in tr),
                            sum(r["label"] for r in va), photos_of(tr), photos_of(va), (2, PATCH, PATCH), size, seed)
