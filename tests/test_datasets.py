"""The bundled digits written as an image folder (shared by tests, README and benchmarks)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from surgery.core.errors import SurgeryError
from surgery.datasets import write_digits


def test_full_digits_folder(tmp_path):
    from sklearn.datasets import load_digits

    rep = write_digits(tmp_path / "d")
    d = load_digits()
    assert (rep.train_images, rep.val_images) == (1437, 360)  # 1797 split 80/20
    files = sorted((tmp_path / "d").rglob("*.png"))
    assert len(files) == 1797
    counts = np.bincount([int(p.parent.name) for p in files], minlength=10)
    assert counts.tolist() == np.bincount(d.target).tolist()
    # every sample once, in its class folder, pixels 0..16 scaled to 0..255
    assert sorted(int(p.stem) for p in files) == list(range(1797))
    p = next(p for p in files if p.stem == "0000")
    assert p.parent.name == str(d.target[0])
    assert np.asarray(Image.open(p)).tolist() == np.rint(d.images[0] * 255 / 16).astype(int).tolist()


def test_split_is_deterministic_and_per_class_is_a_prefix(tmp_path):
    write_digits(tmp_path / "a", per_class=3)
    write_digits(tmp_path / "b", per_class=3)

    def listing(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))

    a = listing(tmp_path / "a")
    assert a == listing(tmp_path / "b") and len(a) == 60
    for split in ("train", "val"):
        for c in range(10):
            assert len(list((tmp_path / "a" / split / str(c)).glob("*.png"))) == 3


def test_existing_folder_needs_force(tmp_path, cli):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("mine")
    with pytest.raises(SurgeryError, match="--force"):
        write_digits(tmp_path / "d")
    # a folder surgery did not write is never replaced, --force or not
    res = cli("data", "digits", tmp_path / "d", "--per-class", "1", "--force", "--json")
    assert res.code == 2 and "not written by `surgery data`" in res.err and (tmp_path / "d" / "x.txt").exists()
    # one it wrote (its .surgery-data marker inside) is replaced with --force
    assert cli("data", "digits", tmp_path / "e", "--per-class", "1").code == 0
    assert (tmp_path / "e" / ".surgery-data").is_file()
    res = cli("data", "digits", tmp_path / "e", "--per-class", "2", "--force", "--json")
    assert res.code == 0, res.err
    assert res.json()["train_images"] == 20
