"""Patch pairs from the Middlebury motorcycle pair: true correspondences (checked against the
disparity map), a held-out band of rows that never reaches training, determinism, the
written folder and the loader reading both channels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from surgery.core.errors import SurgeryError
from surgery.datasets import stereo_patches as sp

N_TRAIN, N_VAL = 200, 100


@pytest.fixture(scope="module")
def raw():
    left, right, disp = data.stereo_motorcycle()
    gray = [np.asarray(Image.fromarray(a).convert("L")) for a in (left, right)]
    return gray[0], gray[1], disp


@pytest.fixture(scope="module")
def pairs():
    return sp.make_pairs(N_TRAIN, N_VAL, seed=3)


def test_disparity_sign_is_left_minus_d(raw):
    """The module's convention x_right = x_left - d, measured on the images: 7x7 windows agree
    far better there than at x + d (skimage's docstring suggests the latter)."""
    left, right, disp = (a.astype(np.float64) if a.dtype == np.uint8 else a for a in raw)
    rng = np.random.default_rng(0)
    err = {-1: [], 1: []}
    while len(err[1]) < 300:
        y, x = int(rng.integers(10, 490)), int(rng.integers(80, 660))
        if not np.isfinite(disp[y, x]):
            continue
        for sign in (-1, 1):
            xr = int(round(x + sign * disp[y, x]))
            err[sign].append(np.abs(left[y - 3:y + 4, x - 3:x + 4] - right[y - 3:y + 4, xr - 3:xr + 4]).mean())
    assert np.mean(err[-1]) * 3 < np.mean(err[1])


def test_positives_are_true_correspondences(pairs, raw):
    left, right, disp = raw
    for ps in (pairs.train, pairs.val):
        for (y, x, y2, x2), label, kind, pair in zip(ps.coords, ps.labels, ps.kinds, ps.pairs):
            d = disp[y, x]
            assert np.isfinite(d)  # every pair starts at a pixel with ground truth
            # the windows are the images' windows at the stated centres
            assert np.array_equal(pair[0], left[y - 32:y + 32, x - 32:x + 32])
            assert np.array_equal(pair[1], right[y2 - 32:y2 + 32, x2 - 32:x2 + 32])
            if label == 1:
                assert kind == "pos" and y2 == y and abs(x2 - (x - d)) <= 0.5
            else:
                assert kind in ("shift", "random")
                assert abs(y2 - y) >= 16 or abs(x2 - (x - d)) >= 15.5
                if kind == "shift":
                    assert y2 == y


def test_hidden_pixels_on_a_hand_made_occlusion():
    """A foreground strip (disparity 6, columns 20..29) over a background (disparity 2): the
    strip lands on right columns 14..23, so the background at 16..19 (which lands on 14..17) is
    occluded — as many columns as the disparities differ. Unknown disparity is hidden too, and
    so is a match outside the right image (columns 0..1 of the background)."""
    d = np.full((3, 40), 2.0)
    d[:, 20:30] = 6.0
    d[1, 35] = np.inf
    hidden = sp.hidden_pixels(d)
    expected = np.zeros((3, 40), dtype=bool)
    expected[:, 16:20] = True
    expected[:, 0:2] = True
    expected[1, 35] = True
    assert np.array_equal(hidden, expected), np.nonzero(hidden != expected)


def test_every_pair_starts_at_a_seen_pixel_in_a_mostly_seen_window(pairs, raw):
    """Positives are what both cameras see: the centre is not hidden and at most MAX_HIDDEN of
    the left window is (counted here directly, window by window)."""
    hidden = sp.hidden_pixels(raw[2])
    for ps in (pairs.train, pairs.val):
        for y, x, _, _ in ps.coords:
            assert not hidden[y, x]
            assert hidden[y - 32:y + 32, x - 32:x + 32].mean() <= sp.MAX_HIDDEN + 1e-12


def test_half_positive_and_both_negative_kinds(pairs):
    for ps, n in ((pairs.train, N_TRAIN), (pairs.val, N_VAL)):
        assert ps.pairs.shape == (n, 2, 64, 64) and ps.pairs.dtype == np.uint8
        assert int(ps.labels.sum()) == n // 2
        assert ps.kinds.count("shift") == n // 4 and ps.kinds.count("random") == n // 4


def test_test_region_never_in_training(pairs, raw):
    start, stop = pairs.test_rows
    assert (start, stop) == (500 - 160, 500)
    for y, x, y2, x2 in pairs.train.coords:  # windows cover rows y-32 .. y+31, both images
        assert y + 31 < start and y2 + 31 < start and y - 32 >= 0 and y2 - 32 >= 0
    for y, x, y2, x2 in pairs.val.coords:
        assert y - 32 >= start and y2 - 32 >= start and y + 31 < stop and y2 + 31 < stop
    # and by content: no training window equals any window of the held-out band
    left = raw[0]
    band = {left[r - 32:r + 32, c - 32:c + 32].tobytes() for r in range(start + 32, stop - 31, 4)
            for c in range(32, 741 - 31, 4)}
    assert not any(w.tobytes() in band for w in pairs.train.pairs[:, 0])


def test_deterministic_in_the_seed():
    a, b, c = sp.make_pairs(8, 4, seed=1), sp.make_pairs(8, 4, seed=1), sp.make_pairs(8, 4, seed=2)
    assert np.array_equal(a.train.pairs, b.train.pairs) and np.array_equal(a.val.coords, b.val.coords)
    assert not np.array_equal(a.train.coords, c.train.coords)


@pytest.mark.parametrize("kw", [dict(n_train=7), dict(n_val=0), dict(test_rows=20), dict(test_rows=480)])
def test_bad_counts_refused(kw):
    args = dict(n_train=8, n_val=4)
    args.update(kw)
    with pytest.raises(SurgeryError):
        sp.make_pairs(args.pop("n_train"), args.pop("n_val"), **args)


def test_written_folder_reads_back_through_the_loader(tmp_path):
    from surgery.train.data import FolderDataset, folders

    out = tmp_path / "pairs"
    rep = sp.write_stereo_patches(out, n_train=12, n_val=8, seed=5)
    assert (rep.train_pairs, rep.val_pairs, rep.train_positives, rep.val_positives) == (12, 8, 6, 4)
    mem = sp.make_pairs(12, 8, seed=5)
    manifest = json.loads((out / "pairs.json").read_text())
    assert manifest["test_rows"] == [340, 500] and len(manifest["train"]) == 12
    train, val = folders(out, None, labels=True)
    assert train.classes == ("neg", "pos") and len(train) == 12 and len(val) == 8
    ds = FolderDataset(train, (2, 64, 64), train=False)
    by_file = {r["file"]: r for r in manifest["train"]}
    for i in range(len(train)):
        s = ds[i]
        row = by_file["train/" + train.files[i]]
        j = [k for k, (y, x, y2, x2) in enumerate(mem.train.coords) if [y, x] == row["left"] and [y2, x2] == row["right"]]
        assert s["label"] == row["label"] == int(mem.train.labels[j[0]])
        assert np.array_equal(s["image"].numpy(), mem.train.pairs[j[0]])  # both channels, bit-exact


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    with pytest.raises(SurgeryError, match="not empty"):
        sp.write_stereo_patches(tmp_path / "x", n_train=4, n_val=4)
    assert (tmp_path / "x" / "keep").read_text() == "mine"
