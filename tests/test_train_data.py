"""Image folders, per-sample seeded augmentation, the resumable distributed sampler."""

from __future__ import annotations

import random

import pytest
import torch

from surgery.core.errors import SurgeryError
from surgery.datasets import write_digits
from surgery.train import data as tdata


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits", per_class=3).output


def test_folders_use_train_and_val_and_label_by_sub_folder(digits):
    train_f, val_f = tdata.folders(digits, None, labels=True)
    assert len(train_f) == 30 and len(val_f) == 30
    assert train_f.classes == tuple(str(i) for i in range(10))
    assert all(train_f.classes[l] == f.split("/")[0] for f, l in zip(train_f.files, train_f.labels))


def test_loose_files_cannot_be_labelled_and_holdout_is_deterministic(tmp_path, digits):
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((tdata.Path(digits) / "train").rglob("*.png")):
        shutil.copy(p, flat / p.name)
    with pytest.raises(SurgeryError, match="not inside a class sub-folder"):
        tdata.folders(flat, None, labels=True)
    a, b = tdata.folders(flat, None, labels=False)
    assert len(a) + len(b) == 30 and len(b) > 0 and not set(a.files) & set(b.files)
    assert tdata.folders(flat, None, labels=False)[1].files == b.files


def test_crop_box_is_inside_and_follows_torchvision_fallback():
    rng = random.Random(0)
    for _ in range(200):
        top, left, h, w = tdata.crop_box(rng, 32, 24, (0.25, 1.0))
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 24 and h > 0 and w > 0
    # scale 1 on a square image: every try needs aspect exactly 1, so the fallback: the whole image
    assert tdata.crop_box(random.Random(1), 32, 32, (1.0, 1.0)) == (0, 0, 32, 32)


def test_sample_augmentation_depends_on_seed_epoch_index_only(digits):
    train_f, _ = tdata.folders(digits, None, labels=True)
    ds = tdata.FolderDataset(train_f, (1, 32, 32), train=True, seed=5)
    a, b = ds[(7, 2)], ds[(7, 2)]
    assert torch.equal(a["box"], b["box"]) and a["flip"] == b["flip"]
    boxes = {tuple(ds[(7, e)]["box"].flatten().tolist()) for e in range(6)}
    assert len(boxes) > 1
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (1, 32, 32) and a["label"] == train_f.labels[7]


def test_two_rank_batches_are_the_one_rank_batch(digits):
    train_f, _ = tdata.folders(digits, None, labels=True)
    ds = tdata.FolderDataset(train_f, (1, 32, 32), train=False)
    one = tdata.EpochSampler(ds, num_replicas=1, rank=0, seed=0)
    ranks = [tdata.EpochSampler(ds, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    for s in (one, *ranks):
        s.set_epoch(3)
    full = [i for i, _ in one]
    halves = [[i for i, _ in s] for s in ranks]
    batch = 6  # global batch; 3 per rank
    for k in range(len(full) // batch):
        assert sorted(full[k * batch:(k + 1) * batch]) == sorted(halves[0][k * 3:(k + 1) * 3] + halves[1][k * 3:(k + 1) * 3])
    one.start = 12  # a resumed run skips what it already took
    assert [i for i, _ in one] == full[12:]


def test_prepare_normalises_and_crops(digits):
    sample = {"image": torch.full((2, 1, 4, 4), 255, dtype=torch.uint8),
              "box": torch.tensor([[[0, 0], [1, 0], [1, 1], [0, 1]]] * 2, dtype=torch.float32),
              "flip": torch.tensor([False, True])}
    x = tdata.prepare(sample, tdata.Normalization((0.5,), (0.25,)), (4, 4), train=True, device="cpu")
    assert x.shape == (2, 1, 4, 4)
    assert torch.allclose(x, torch.full_like(x, (1.0 - 0.5) / 0.25))
