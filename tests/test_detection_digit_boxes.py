"""digit-boxes: scikit-learn's digits pasted onto the bundled photographs as YOLO detection data —
labels that match the pasted digits (re-rendered independently from the manifest, and visible
in the pixels), split by photograph and by digit sample, the same seed writing the same bytes;
and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from surgery.core.errors import SurgeryError
from surgery.datasets.digit_boxes import CLASSES, write_digit_boxes
from surgery.datasets.paste import MANIFEST, PHOTOS, background
from surgery.detect.labels import yolo_folders

SIZE = 96


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "digits"
    rep = write_digit_boxes(out, n_train=12, n_val=5, size=SIZE, seed=2)
    return out, rep, json.loads((out / MANIFEST).read_text())


def test_same_seed_same_bytes_other_seed_other_images(boxes, tmp_path):
    out, rep, _ = boxes
    again = write_digit_boxes(tmp_path / "again", n_train=12, n_val=5, size=SIZE, seed=2)
    assert _files(out) == _files(tmp_path / "again")
    assert (again.train_boxes, again.val_boxes) == (rep.train_boxes, rep.val_boxes)
    write_digit_boxes(tmp_path / "other", n_train=12, n_val=5, size=SIZE, seed=3)
    a, b = _files(out), _files(tmp_path / "other")
    assert a.keys() == b.keys() and a["train/images/00.jpg"] != b["train/images/00.jpg"]


def test_labels_are_the_pasted_digits(boxes):
    """Each label line: the class of the sklearn sample the manifest names, the box of that sample
    upscaled and rotated here (bicubic in Pillow, coverage >= 128) at the recorded place."""
    from sklearn.datasets import load_digits

    out, rep, man = boxes
    d = load_digits()
    train, val = yolo_folders(out, classes=10)
    assert train.classes == CLASSES and (out / "classes.txt").read_text() == "".join(f"{c}\n" for c in range(10))
    assert (len(train), len(val)) == (12, 5) and (train.num_boxes, val.num_boxes) == (rep.train_boxes, rep.val_boxes)
    n = 0
    for split, folder in (("train", train), ("val", val)):
        for rec, labels in zip(man["images"][split], folder.boxes):
            want = []
            for dg in rec["digits"]:
                glyph = np.rint(d.images[dg["sample"]] * 255 / 16).astype(np.uint8)
                px, pad = dg["px"], max(2, dg["px"] // 8)
                mask = Image.new("L", (px + 2 * pad,) * 2, 0)
                mask.paste(Image.fromarray(glyph).resize((px, px), Image.BICUBIC), (pad, pad))
                mask = mask.rotate(dg["angle"], resample=Image.BICUBIC, expand=True) if dg["angle"] else mask
                ys, xs = np.nonzero(np.asarray(mask) >= 128)
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                ox, oy = dg["at"]
                assert dg["box"] == [ox + x1, oy + y1, ox + x2, oy + y2]
                assert dg["digit"] == int(d.target[dg["sample"]]) and abs(dg["angle"]) <= 10
                bx = np.array(dg["box"], dtype=np.float64)
                want.append([dg["digit"], (bx[0] + bx[2]) / 2 / SIZE, (bx[1] + bx[3]) / 2 / SIZE,
                             (bx[2] - bx[0]) / SIZE, (bx[3] - bx[1]) / SIZE])
                n += 1
            assert np.allclose(labels, np.array(want).reshape(-1, 5), atol=1e-6)
    assert n == rep.train_boxes + rep.val_boxes > 17  # several digits an image


def test_digits_are_in_the_pixels_and_nowhere_else(boxes):
    """Inside a digit's box the image departs from the photograph crop beneath it (a contrasting
    colour was pasted there); away from every box it is the crop (up to JPEG's error)."""
    out, _, man = boxes
    cache: dict = {}
    for rec in man["images"]["train"][:6]:
        img = np.asarray(Image.open(out / rec["file"]).convert("RGB"), dtype=np.float64)
        bg = np.asarray(background(rec["photo"], tuple(rec["crop"]), SIZE, cache), dtype=np.float64)
        diff = np.abs(img - bg).mean(-1)
        far = np.ones(diff.shape, dtype=bool)
        for dg in rec["digits"]:
            x1, y1, x2, y2 = dg["box"]
            assert diff[y1:y2, x1:x2].max() > 60, dg  # the stroke's colour is >= 90 luminance from the mean beneath
            far[max(0, y1 - 4):y2 + 4, max(0, x1 - 4):x2 + 4] = False
        assert diff[far].mean() < 6


def test_split_by_photograph_and_by_digit_sample(boxes):
    from surgery.datasets.digits import digit_split

    _, rep, man = boxes
    _, _, train_idx, val_idx = digit_split()
    photos = {s: {r["photo"] for r in man["images"][s]} for s in ("train", "val")}
    assert photos["train"] and photos["val"] and not photos["train"] & photos["val"]
    assert all(PHOTOS[p] == s for s in photos for p in photos[s])
    assert set(rep.train_photos) == {p for p, s in PHOTOS.items() if s == "train"}
    samples = {s: {dg["sample"] for r in man["images"][s] for dg in r["digits"]} for s in ("train", "val")}
    assert samples["train"] <= set(train_idx.tolist()) and samples["val"] <= set(val_idx.tolist())


@pytest.mark.parametrize("kw, msg", [
    ({"n_train": 0}, "--train 0 / --val 5"),
    ({"max_digits": 0}, "--max-digits 0 must be 1..50"),
    ({"max_angle": 50.0}, "--max-angle 50.0 must be 0..45"),
    ({"size": 16}, "--size 16 must be 32..2048"),
])
def test_bad_settings_refused_before_writing(tmp_path, kw, msg):
    args = {"n_train": 2, "n_val": 5, "size": SIZE, **kw}
    with pytest.raises(SurgeryError, match=msg.replace(".", r"\.")):
        write_digit_boxes(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_cli_writes_and_refuses(cli, tmp_path):
    res = cli("data", "digit-boxes", tmp_path / "db", "--train", "3", "--val", "2", "--size", "64", "--json")
    assert res.code == 0, res.err
    j = res.json()
    assert (j["train_images"], j["val_images"], j["classes"]) == (3, 2, list(CLASSES))
    assert sorted(p.name for p in (tmp_path / "db" / "train" / "labels").iterdir()) == ["0.txt", "1.txt", "2.txt"]
    res = cli("data", "digit-boxes", tmp_path / "db", "--train", "3", "--val", "2")
    assert res.code == 2 and "exists and is not empty; pass --force" in res.err
    res = cli("data", "digit-boxes", tmp_path / "db2", "--max-digits", "0")
    assert res.code == 2 and "--max-digits 0 must be 1..50" in res.err and not (tmp_path / "db2").exists()
