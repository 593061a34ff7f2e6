"""synth-text (determinism, split by photograph, boxes that match the pixels), the YOLO label
reader's errors, and letterbox + augmentation moving boxes with the pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from surgery.core.errors import SurgeryError
from surgery.datasets.synth_text import MANIFEST, background, render_word, write_synth_text
from surgery.detect.data import Augment, DetectionDataset, prepare
from surgery.detect.labels import DetectionFolder, parse_label_file, scan_split, yolo_folders
from surgery.train.data import Normalization


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "text"
    rep = write_synth_text(out, n_train=10, n_val=4, size=96, seed=3)
    return out, rep


def test_same_seed_same_bytes_other_seed_other_images(synth, tmp_path):
    out, rep = synth
    again = write_synth_text(tmp_path / "again", n_train=10, n_val=4, size=96, seed=3)
    assert _files(out) == _files(tmp_path / "again") and again.train_boxes == rep.train_boxes
    other = write_synth_text(tmp_path / "other", n_train=10, n_val=4, size=96, seed=4)
    a, b = _files(out), _files(tmp_path / "other")
    assert a.keys() == b.keys() and a["train/images/0.jpg"] != b["train/images/0.jpg"]


def test_layout_split_by_photograph_and_labels_read_back(synth):
    out, rep = synth
    man = json.loads((out / MANIFEST).read_text())
    train_photos = {r["photo"] for r in man["images"]["train"]}
    val_photos = {r["photo"] for r in man["images"]["val"]}
    assert train_photos and val_photos and not train_photos & val_photos
    assert (out / "classes.txt").read_text() == "text\n"
    tr, va = yolo_folders(out, classes=1)
    assert (len(tr), len(va)) == (10, 4) and tr.classes == ("text",)
    assert tr.num_boxes == rep.train_boxes and va.num_boxes == rep.val_boxes > 0
    for rec, boxes in zip(man["images"]["train"], tr.boxes):
        px = np.array([w["box"] for w in rec["words"]], dtype=np.float64).reshape(-1, 4)
        want = np.stack([(px[:, 0] + px[:, 2]) / 2, (px[:, 1] + px[:, 3]) / 2, px[:, 2] - px[:, 0],
                         px[:, 3] - px[:, 1]], -1) / 96
        assert np.allclose(boxes[:, 1:], want, atol=1e-6) and (boxes[:, 0] == 0).all()


def _luma(a):
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def test_boxes_are_tight_around_the_rendered_words(synth):
    """Each word re-rendered from the manifest: where its coverage is nearly full the written image
    has the word's colour (the word is painted where the box says), its box is the extent of the
    pixels covered at least half, and outside the boxes (with a margin for antialiasing and JPEG)
    the image is its background photograph (rebuilt from the manifest)."""
    out, _ = synth
    man = json.loads((out / MANIFEST).read_text())
    cache: dict = {}
    words = 0
    for split in ("train", "val"):
        for rec in man["images"][split]:
            img = np.asarray(Image.open(out / rec["file"]).convert("RGB"), dtype=np.float64)
            bg = np.asarray(background(rec["photo"], tuple(rec["crop"]), 96, cache), dtype=np.float64)
            inside = np.zeros(img.shape[:2], dtype=bool)
            for w in rec["words"]:
                mask, _ = render_word(w["text"], w["font"], w["px"], w["angle"])
                m = np.asarray(mask, dtype=np.float64) / 255
                ox, oy = w["at"]
                full = np.zeros(img.shape[:2])
                full[oy:oy + m.shape[0], ox:ox + m.shape[1]] = m
                ys, xs = np.nonzero(full >= 0.5)
                assert w["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                solid = full > 0.95
                assert solid.sum() > 0
                assert np.abs(_luma(img[solid]) - _luma(np.array(w["colour"], dtype=np.float64))).mean() < 20, w
                x1, y1, x2, y2 = w["box"]
                inside[max(0, y1 - 3):y2 + 3, max(0, x1 - 3):x2 + 3] = True
                words += 1
            diff = np.abs(_luma(img) - _luma(bg))
            assert diff[~inside].max(initial=0) < 60, rec["file"]
    assert words > 14


def test_generator_refuses_bad_sizes_and_existing_folders(tmp_path):
    with pytest.raises(SurgeryError, match="--size"):
        write_synth_text(tmp_path / "a", n_train=1, n_val=1, size=8)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("x")
    with pytest.raises(SurgeryError, match="--force"):
        write_synth_text(tmp_path / "b", n_train=1, n_val=1, size=64)


# ---------------------------------------------------------------------------- labels


def _label(tmp_path, text):
    p = tmp_path / "x.txt"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, match", [
    ("0 0.5 0.5 0.2\n", r"x.txt:1: .* has 4 fields"),
    ("0 0.5 0.5 0.2 0.2\nzero 0.5 0.5 0.2 0.2\n", r"x.txt:2: .* not 'class cx cy w h'"),
    ("\n3 0.5 0.5 0.2 0.2\n", r"x.txt:2: class 3 is out of range: the model has 2 classes"),
    ("-1 0.5 0.5 0.2 0.2\n", r"x.txt:1: class -1 is out of range"),
    ("0 0.5 0.5 0 0.2\n", r"x.txt:1: box size 0 x 0.2 must be positive"),
    ("0 0.95 0.5 0.2 0.2\n", r"x.txt:1: box .* reaches outside the image"),
    ("0 0.5 0.5 nan 0.2\n", r"x.txt:1: box size nan"),
])
def test_label_errors_name_file_and_line(tmp_path, text, match):
    with pytest.raises(SurgeryError, match=match):
        parse_label_file(_label(tmp_path, text), classes=2)


def test_labels_clip_rounding_and_missing_file_means_no_boxes(tmp_path):
    b = parse_label_file(_label(tmp_path, "1 0.5 0.1 0.4 0.205\n\n"), classes=2)  # top edge -0.0025: clipped
    assert b.shape == (1, 5) and b[0, 0] == 1
    assert np.allclose(b[0, 1:], [0.5, 0.10125, 0.4, 0.2025], atol=1e-6)
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "labels").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "images" / "b.png")
    (tmp_path / "d" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    f = scan_split(tmp_path / "d", classes=1)
    assert f.files == ("a.png", "b.png") and [len(x) for x in f.boxes] == [1, 0]


# ---------------------------------------------------------------------------- letterbox + augmentation


def _white_box_folder(tmp_path) -> DetectionFolder:
    """A 200 x 100 black image with a white rectangle at x 40..100, y 20..60."""
    root = tmp_path / "images"
    root.mkdir()
    a = np.zeros((100, 200, 3), np.uint8)
    a[20:60, 40:100] = 255
    Image.fromarray(a).save(root / "a.png")
    box = np.array([[0, 70 / 200, 40 / 100, 60 / 200, 40 / 100]], np.float32)
    return DetectionFolder(root, ("a.png",), (box,), ("0",))


def _white_extent(x: torch.Tensor):
    m = (x[0] > 0.75).nonzero()
    return m[:, 1].min().item(), m[:, 0].min().item(), m[:, 1].max().item() + 1, m[:, 0].max().item() + 1


def _target_xyxy(t, size=64):
    c, cx, cy, w, h = t[0].tolist()
    return [(cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size]


def test_letterbox_keeps_aspect_and_moves_the_box(tmp_path):
    ds = DetectionDataset(_white_box_folder(tmp_path), (3, 64, 64), train=False)
    s = ds[0]
    # scale 64/200 = 0.32: 64 x 32 centred, 16 px of grey above and below
    assert s["letterbox"].tolist() == pytest.approx([0.32, 0, 16])
    assert s["image"][:, 0, 0].tolist() == [128, 128, 128]
    x = s["image"].float() / 255
    assert _target_xyxy(s["targets"]) == pytest.approx([12.8, 22.4, 32.0, 35.2])
    got = _white_extent(x)
    assert all(abs(a - b) <= 1 for a, b in zip(got, _target_xyxy(s["targets"]))), got


@pytest.mark.parametrize("epoch", range(4))
def test_augmentation_moves_boxes_with_the_pixels(tmp_path, epoch):
    aug = Augment(flip=True, scale_jitter=0.3, translate=0.1, hue=0.0, saturation=1.0, exposure=1.0)
    ds = DetectionDataset(_white_box_folder(tmp_path), (3, 64, 64), train=True, seed=1, augment=aug)
    s = ds[(0, epoch)]
    batch = {k: (v[None] if torch.is_tensor(v) else torch.tensor([v])) for k, v in s.items()}
    x = prepare(batch, Normalization((0.0,) * 3, (1.0,) * 3), train=True, device="cpu")[0]
    got = _white_extent(x)
    want = _target_xyxy(s["targets"])
    assert all(abs(a - b) <= 1.5 for a, b in zip(got, want)), (got, want, s["affine"])
    assert ds[(0, epoch)]["affine"].tolist() == s["affine"].tolist()  # a function of (seed, epoch, index)
