"""HPatches-style patch pairs (surgery.datasets.patch_pairs): positives are the reference
photograph under the recorded homography (checked with scikit-image's own warp), no held-out
photograph reaches training, counts and labels balance, the same seed writes the same bytes,
the folder reads back through the training loader, bad arguments are one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surgery.core.errors import SurgeryError
from surgery.datasets import patch_pairs as pp

N = 240
SURGERY = str(Path(sys.executable).with_name("surgery"))


@pytest.fixture(scope="module")
def warps():
    return pp.make_patch_pairs(N, source="warps", seed=5)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Pairs with the photometric change switched off: the view windows are pure geometry."""
    mp = pytest.MonkeyPatch()
    for k, v in (("BLUR", (0.0, 0.0)), ("NOISE", (0.0, 0.0)), ("GAIN", (1.0, 1.0)), ("GAMMA", (1.0, 1.0)),
                 ("OFFSET", 0.0)):
        mp.setattr(pp, k, v)
    try:
        yield pp.make_patch_pairs(120, source="warps", seed=2)
    finally:
        mp.undo()


def _skimage_window(ref: np.ndarray, H: np.ndarray, c_yx) -> np.ndarray:
    """The view (reference under H) sampled on the 64 x 64 grid centred at c, by skimage."""
    from skimage.transform import ProjectiveTransform, warp

    tf = ProjectiveTransform(np.asarray(H))
    cy, cx = c_yx

    def inverse_map(xy):  # output (col, row) -> reference (col, row)
        return tf.inverse(xy + np.array([cx - 32, cy - 32]))

    return warp(ref, inverse_map, output_shape=(64, 64), order=1, preserve_range=True)


def test_positives_are_the_reference_under_the_homography(clean):
    """Independent resampling with skimage.transform.warp of the recorded H gives the same view
    window (to rounding), and the reference window is the photograph's own window."""
    splits, views = clean
    cache: dict = {}
    checked = 0
    for split in ("train", "val"):
        pairs, rows = splits[split]
        for pair, r in zip(pairs, rows):
            ref = cache.setdefault(r["photo"], pp.grey(r["photo"]))
            y, x = r["left"]
            assert np.array_equal(pair[0], ref[y - 32:y + 32, x - 32:x + 32].astype(np.uint8))
            H = np.asarray(views[r["photo"]][r["view"]]["H"])
            want = _skimage_window(ref, H, r["right"])
            assert np.abs(pair[1].astype(np.float64) - want).max() <= 1.0 + 1e-6
            if r["kind"] == "pos":  # the view centre is H(reference centre)
                assert np.allclose(pp.apply_h(H, np.array([y, x], float)), r["right"], atol=1e-3)
                checked += 1
    assert checked == 60


def test_positive_content_matches_and_negatives_do_not(warps):
    """With blur, noise and illumination on: the positive's view window correlates with the
    reference warped by H (normalised cross-correlation), the random negatives' do not."""
    splits, views = warps
    cache: dict = {}
    ncc = {"pos": [], "near": [], "random": []}
    for pair, r in zip(*splits["train"]):
        ref = cache.setdefault(r["photo"], pp.grey(r["photo"]))
        H = np.asarray(views[r["photo"]][r["view"]]["H"])
        true = _skimage_window(ref, H, pp.apply_h(H, np.array(r["left"], float)))[16:48, 16:48]
        got = pair[1].astype(np.float64)[16:48, 16:48]
        a, b = true - true.mean(), got - got.mean()
        ncc[r["kind"]].append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9)))
    assert np.median(ncc["pos"]) > 0.8
    assert np.median(ncc["random"]) < 0.3
    assert np.median(ncc["near"]) < np.median(ncc["pos"]) - 0.3


def test_split_by_photograph(warps):
    splits, _ = warps
    train = {r["photo"] for r in splits["train"][1]}
    val = {r["photo"] for r in splits["val"][1]}
    assert train and val and not train & val
    assert all(pp.PHOTOS[p] == "train" for p in train) and all(pp.PHOTOS[p] == "val" for p in val)


def test_counts_and_labels_balance(warps):
    splits, _ = warps
    n = {s: len(splits[s][1]) for s in splits}
    assert n == {"train": N - 48, "val": 48}
    for s in splits:
        pairs, rows = splits[s]
        assert pairs.shape == (n[s], 2, 64, 64) and pairs.dtype == np.uint8
        kinds = [r["kind"] for r in rows]
        assert kinds.count("pos") == n[s] // 2 == sum(r["label"] for r in rows)
        assert abs(kinds.count("near") - kinds.count("random")) <= 1
        assert all((r["kind"] == "pos") == bool(r["label"]) for r in rows)
        assert all(r["file"].startswith(f"{s}/{'pos' if r['label'] else 'neg'}/") for r in rows)


def test_near_and_random_distances(warps):
    splits, views = warps
    for r in splits["train"][1]:
        H = np.asarray(views[r["photo"]][r["view"]]["H"])
        d = np.hypot(*(np.asarray(r["right"]) - pp.apply_h(H, np.array(r["left"], float))))
        if r["kind"] == "near":
            assert pp.NEAR[0] - 1e-3 <= d <= pp.NEAR[1] + 1e-3
        elif r["kind"] == "random":
            assert d >= 64 - 1e-3


def test_both_sources_split_evenly():
    splits, _ = pp.make_patch_pairs(80, source="both", seed=1)
    for s, want in (("train", 64), ("val", 16)):
        rows = splits[s][1]
        assert len(rows) == want
        assert sum(r["source"] == "stereo" for r in rows) == want // 2
        assert sum(r["label"] for r in rows) == want // 2


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_loader_reads_it(tmp_path):
    a = pp.write_patch_pairs(tmp_path / "a", 80, source="both", seed=7)
    pp.write_patch_pairs(tmp_path / "b", 80, source="both", seed=7)
    pp.write_patch_pairs(tmp_path / "c", 80, source="both", seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert a.train_pairs == 64 and a.val_pairs == 16 and a.bytes_on_disk > 0
    assert not set(a.train_photos) & set(a.val_photos) - {"skimage.data.stereo_motorcycle"}
    from surgery.train import data as tdata

    tr, va = tdata.folders(tmp_path / "a", None, labels=True)
    assert tuple(tr.classes) == ("neg", "pos") and len(tr) == 64 and len(va) == 16
    m = json.loads((tmp_path / "a" / "pairs.json").read_text())
    row = m["val"][0]
    img = np.asarray(Image.open(tmp_path / "a" / row["file"]))
    assert img.shape == (64, 64, 2)


@pytest.mark.parametrize("kw", [dict(n_pairs=2, source="warps"), dict(n_pairs=81, source="warps"),
                                dict(n_pairs=102, source="both"), dict(n_pairs=80, source="nope"),
                                dict(n_pairs=80, source="warps", val_fraction=1.5),
                                dict(n_pairs=pp.MAX_PAIRS + 2, source="warps")])
def test_bad_requests_refused(kw):
    with pytest.raises(SurgeryError):
        pp.split_counts(kw["n_pairs"], kw.get("val_fraction", 0.2), kw["source"])


def test_disk_footprint_refused_up_front(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SurgeryError, match="on disk"):
        pp.write_patch_pairs(tmp_path / "x", 400, source="warps")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, says", [
    (["--pairs", "7"], "--pairs 7"),
    (["--source", "mvsd"], "--source"),
    (["--val-fraction", "0"], "--val-fraction"),
])
def test_cli_bad_arguments_one_line_exit_2(tmp_path, args, says):
    r = subprocess.run([SURGERY, "data", "patch-pairs", str(tmp_path / "o"), *args], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_writes_and_refuses_overwrite(tmp_path):
    out = tmp_path / "pairs"
    r = subprocess.run([SURGERY, "data", "patch-pairs", str(out), "--pairs", "40", "--source", "warps", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["train_pairs"] + rep["val_pairs"] == 40 and rep["source"] == "warps"
    r = subprocess.run([SURGERY, "data", "patch-pairs", str(out), "--pairs", "40"], capture_output=True, text=True)
    assert r.returncode == 2 and "--force" in r.stderr
