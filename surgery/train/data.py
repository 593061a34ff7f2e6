"""Image folders for training: scanning, Pillow decoding, kornia augmentation, DataLoader.

**Folders.** Any depth of ``.png``/``.jpg``/``.jpeg`` files. Labels (only when a loss needs
them) follow torchvision's ImageFolder: the class of a file is its first sub-folder under the
root, classes sorted by name. A root holding ``train/`` and ``val/`` sub-folders is split
that way (what ``surgery data digits`` writes); otherwise ``--val DIR`` names the held-out
folder, or a deterministic 10% of files (by a hash of the relative path) is held out.
Unreadable images are skipped and counted.

**Decoding and augmentation.** Workers decode with Pillow, convert to the model's channel
count (L or RGB) and resize to the model's H x W, so every sample has one shape. The usual
training augmentation (torchvision's RandomResizedCrop algorithm: area scale ``crop_scale``..1,
aspect 3/4..4/3; a horizontal flip with probability 1/2) is applied to whole batches by
kornia (``crop_and_resize``, ``hflip``, ``normalize``) on the training device.

Why the crop and flip *parameters* are drawn here rather than by kornia's own random
generators: they are drawn per sample from a generator seeded by (seed, epoch, sample index),
so a sample is augmented identically however the data is split between processes (torchrun)
and after a resume — kornia's generators draw from the global RNG in batch order.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler

from surgery.core.errors import SurgeryError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HOLDOUT_PERCENT = 10
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageFolder:
    """The readable images of a folder (relative paths, sorted) and their labels."""

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...] | None  # class index per file; None when the folder is unlabelled
    classes: tuple[str, ...]
    skipped: tuple[str, ...]  # files that Pillow cannot read

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, keep: Sequence[int]) -> "ImageFolder":
        return ImageFolder(self.root, tuple(self.files[i] for i in keep),
                           None if self.labels is None else tuple(self.labels[i] for i in keep),
                           self.classes, self.skipped)


def _listing(root: Path) -> tuple[list[str], list[str]]:
    """(image files, other entries with an image name) under ``root``, relative and sorted; only
    regular files are images: a FIFO, socket or device named ``x.png`` would block or never end
    a read, so it is listed as skipped, never opened. Hidden names are left out."""
    out, odd = [], []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():  # not into linked folders (as os.walk): no loops
                    if not e.is_symlink():
                        stack.append(Path(e.path))
                    continue
                image = e.name.lower().endswith(IMAGE_SUFFIXES)
                if image and e.is_file():
                    out.append(os.path.relpath(e.path, root))
                elif image:
                    odd.append(os.path.relpath(e.path, root))
            except OSError:
                continue
    return sorted(out), sorted(odd)


def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: a huge image is still one sample
            with Image.open(path) as im:
                im.verify()  # header and (PNG) checksums without a full decode
        return True
    except Exception:  # Pillow raises many types for a damaged file
        return False


# Called as fn(done, total, what) while a folder is checked (the CLI shows progress; the library
# never prints). Set by :func:`reporting`.
_PROGRESS: list = []


@contextlib.contextmanager
def reporting(fn):
    """Report folder scans to ``fn(done, total, what)`` inside this block."""
    _PROGRESS.append(fn)
    try:
        yield
    finally:
        _PROGRESS.remove(fn)


def scan(root: str | Path, *, labels: bool, what: str = "data folder") -> ImageFolder:
    """The images under ``root``; ``labels``: class = first sub-folder (refused for loose files).
    Linear in the number of files; non-regular files and images Pillow cannot read are skipped."""
    root = Path(root)
    if not root.exists():
        raise SurgeryError(f"{what} {str(root)!r} does not exist")
    if not root.is_dir():
        raise SurgeryError(f"{what} {str(root)!r} is not a directory; give a folder of .png/.jpg images")
    files, odd = _listing(root)
    if not files:
        raise SurgeryError(f"{what} {str(root)!r} holds no .png/.jpg/.jpeg images")
    good, bad = [], list(odd)
    report = _PROGRESS[-1] if _PROGRESS else None
    for i, f in enumerate(files):
        (good if _readable(root / f) else bad).append(f)
        if report is not None and (i % 500 == 0 or i == len(files) - 1):
            report(i + 1, len(files), f"checking {root}")
    skipped = tuple(sorted(bad))
    if not good:
        raise SurgeryError(f"{what} {str(root)!r}: none of its {len(files)} images can be read by Pillow")
    classes: tuple[str, ...] = ()
    idx = None
    if labels:
        loose = [f for f in good if len(Path(f).parts) < 2]
        if loose:
            raise SurgeryError(f"{what} {str(root)!r}: {loose[0]} is not inside a class sub-folder; labels (--loss ce) "
                               "need one sub-folder per class, as torchvision's ImageFolder")
        classes = tuple(sorted({Path(f).parts[0] for f in good}))
        pos = {c: i for i, c in enumerate(classes)}
        idx = tuple(pos[Path(f).parts[0]] for f in good)
    return ImageFolder(root, tuple(good), idx, classes, skipped)


def folders(data: str | Path, val: str | Path | None, *, labels: bool) -> tuple[ImageFolder, ImageFolder]:
    """(train, held-out) folders for ``--data`` and ``--val`` (see the module docstring)."""
    root = Path(data)
    if val is not None:
        return scan(root, labels=labels), scan(val, labels=labels, what="validation folder")
    if (root / "train").is_dir() and (root / "val").is_dir():
        return (scan(root / "train", labels=labels),
                scan(root / "val", labels=labels, what="validation folder"))
    return hold_out(scan(root, labels=labels), root)


def hold_out(full, root):
    """(train, held-out) of a folder without a split: a deterministic ``HOLDOUT_PERCENT`` of its
    files by a hash of the relative path. ``full`` has ``files``, ``__len__`` and ``subset``
    (an :class:`ImageFolder`, a detection folder)."""
    def held(f: str) -> bool:
        return int(hashlib.sha256(f.encode()).hexdigest(), 16) % 100 < HOLDOUT_PERCENT

    keep = [i for i, f in enumerate(full.files) if not held(f)]
    out = [i for i, f in enumerate(full.files) if held(f)]
    if not keep or not out:
        raise SurgeryError(f"data folder {str(root)!r} has too few images ({len(full)}) to hold out "
                           f"{HOLDOUT_PERCENT}% for evaluation; pass --val DIR")
    return full.subset(keep), full.subset(out)


def digest(*fs: ImageFolder) -> str:
    """sha256 of the folders' listings (relative path and byte size of every file used).

    A listing hash, not a content hash: reading every byte of a large dataset only to name it
    would cost as much as an epoch."""
    h = hashlib.sha256()
    for f in fs:
        for rel in f.files:
            h.update(f"{rel}\0{(f.root / rel).stat().st_size}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TrainData:
    """What a run trains and evaluates on: the folders, the model's input and its normalisation."""

    train: ImageFolder
    val: ImageFolder | None
    shape: tuple[int, int, int]  # C x H x W the model takes
    norm: "Normalization"
    crop_scale: float = 0.25
    flip: bool = True
    # Another kind of sample (e.g. :class:`surgery.detect.task.DetectionTask`: YOLO folders, boxes,
    # mAP): it makes the datasets (``dataset``), the batches (``batch``) and the held-out metrics
    # (``evaluate``); None: image folders for classification and distillation.
    task: Any = None

    def validate(self) -> None:
        if not 0 < self.crop_scale <= 1:
            raise SurgeryError(f"--crop-scale {self.crop_scale} must be in (0, 1]")
        if len(self.shape) != 3:
            raise SurgeryError(f"training needs an image model (input C x H x W); this one takes {list(self.shape)}")


# --------------------------------------------------------------------------- samples


def crop_box(rng: random.Random, h: int, w: int, scale: tuple[float, float],
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width), 10 tries,
    then a centre crop clamped to the ratio range."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class FolderDataset(Dataset):
    """Decoded samples of an :class:`ImageFolder` at a fixed C x H x W (uint8).

    Keys are ``(index, epoch)`` pairs (see :class:`EpochSampler`) or plain indices (epoch 0).
    Each sample is a dict: ``image`` (uint8 C x H x W), ``label`` (-1 when unlabelled),
    ``box`` (4 x 2 crop corners, kornia's order), ``flip`` (bool), ``index``, ``undecodable``
    (the index of a file that passed ``verify()`` but failed to decode and was replaced by the
    next one, else -1).
    """

    def __init__(self, folder: ImageFolder, shape: tuple[int, int, int], *, train: bool, seed: int = 0,
                 crop_scale: float = 0.25, flip: bool = True):
        self.folder, self.shape, self.train = folder, tuple(shape), train
        self.seed, self.crop_scale, self.flip = seed, crop_scale, flip

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        c, h, w = self.shape
        arr, index, bad = first_decodable(self.folder, index, lambda path: self._decode(path, c, h, w))
        image = torch.from_numpy(arr.copy())
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        if c not in (1, 2, 3):  # e.g. a 4-channel model: repeat the gray plane
            image = image[:1].expand(c, h, w).contiguous()
        top, left, ch, cw = 0, 0, h, w
        flip = False
        if self.train:
            rng = random.Random(f"{self.seed}:{epoch}:{index}")
            top, left, ch, cw = crop_box(rng, h, w, (self.crop_scale, 1.0))
            flip = self.flip and rng.random() < 0.5
        x0, y0, x1, y1 = left, top, left + cw - 1, top + ch - 1
        box = torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=torch.float32)
        label = -1 if self.folder.labels is None else self.folder.labels[index]
        return {"image": image, "label": label, "box": box, "flip": flip, "index": index, "undecodable": bad}

    @staticmethod
    def _decode(path: Path, c: int, h: int, w: int):
        """The image at ``path`` as a uint8 H x W (x C) array at the model's size, None when Pillow
        cannot decode it (counted by the loop as skipped)."""
        import numpy as np

        im = read_image(path, c, size=(w, h))
        return None if im is None else np.asarray(im, dtype=np.uint8)


def read_image(path: Path, channels: int, *, size: tuple[int, int] | None = None):
    """The Pillow image at ``path`` converted to ``channels`` (L, LA — a two-channel image, patch
    pairs of :mod:`surgery.datasets.stereo_patches` — or RGB) and resized to ``size`` (w, h)
    when given; None when Pillow cannot decode it (counted as skipped)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning
            with Image.open(path) as im:
                im = im.convert({1: "L", 2: "LA"}.get(channels, "RGB"))
                return im.resize(size, Image.BILINEAR) if size is not None else im
    except Exception:  # Pillow raises many types for a damaged file
        return None


def first_decodable(folder, index: int, decode) -> tuple[Any, int, int]:
    """``(decode(path), index read, bad)`` for ``folder``'s file ``index`` — or, when a file that
    passed ``verify()`` fails to decode (``decode`` returns None), the next one that does; ``bad``:
    the first undecodable index, else -1."""
    bad = -1
    for _ in range(len(folder)):
        got = decode(folder.root / folder.files[index])
        if got is not None:
            return got, index, bad
        bad = index if bad < 0 else bad
        index = (index + 1) % len(folder)
    raise SurgeryError(f"{folder.root}: Pillow cannot decode any of its images")


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (shuffle seeded by seed + epoch, rank r takes every
    world-th index) that yields ``(index, epoch)`` keys and can start ``start`` samples into its
    share of an epoch (a resumed run)."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(i, self.epoch) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def default(cls, channels: int) -> "Normalization":
        if channels == 3:
            return cls(IMAGENET_MEAN, IMAGENET_STD)
        return cls((0.5,) * channels, (0.5,) * channels)

    @classmethod
    def from_metadata(cls, meta, channels: int) -> "Normalization":
        n = (meta or {}).get("normalization")
        if isinstance(n, dict) and len(n.get("mean", ())) == channels and len(n.get("std", ())) == channels:
            return cls(tuple(float(v) for v in n["mean"]), tuple(float(v) for v in n["std"]))
        return cls.default(channels)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def prepare(sample: dict, norm: Normalization, size: tuple[int, int], *, train: bool, device) -> torch.Tensor:
    """A collated batch -> normalised float images on ``device`` (crop and flip when training)."""
    from kornia.enhance import normalize
    from kornia.geometry.transform import crop_and_resize, hflip

    x = sample["image"].to(device, non_blocking=True).float().div_(255.0)  # (B, C, H, W)
    if train:
        x = crop_and_resize(x, sample["box"].to(device), size)
        flip = sample["flip"].to(device).view(-1, 1, 1, 1)
        x = torch.where(flip, hflip(x), x)
    mean = torch.tensor(norm.mean, device=device)
    std = torch.tensor(norm.std, device=device)
    return normalize(x, mean, std)
