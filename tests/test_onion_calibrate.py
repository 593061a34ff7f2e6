"""S1 thresholds at a TPR (§3.3): the requested recall within one example, the pass rule the
runtime applies, the checkpoint carrying the thresholds, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from surgery.core import io as sio
from surgery.core.errors import SurgeryError
from surgery.core.net import ArchSpec, Net
from surgery.datasets.stereo_patches import write_stereo_patches
from surgery.onion import calibrate as cal
from zoo.onion_runtime import run
from surgery.train import data as tdata
from zoo.onion import from_monolithic


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                                      nn.Conv2d(8, 1, 4))

    def forward(self, x):
        return self.features(x).flatten(1)


def tiny_net(metadata=None) -> Net:
    torch.manual_seed(0)
    return Net(from_monolithic(_Chain(), (4, 4), 2).eval(), ArchSpec("zoo", "tiny"), (2, 16, 16), source="tiny",
               metadata=metadata or {})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stereo") / "pairs"
    write_stereo_patches(out, n_train=64, n_val=32, seed=1)
    return out


# ----------------------------------------------------------------------------- the ROC threshold


@pytest.mark.parametrize("tpr", [0.99, 0.95, 0.9, 0.5, 1.0, 0.013])
@pytest.mark.parametrize("p,n", [(137, 400), (50, 0), (1, 9)])
def test_threshold_keeps_ceil_tpr_positives(tpr, p, n):
    rng = np.random.default_rng(p + n)
    scores = rng.random(p + n).astype(np.float32)
    scores[:p] += 0.25  # positives score higher on average, with overlap
    pos = np.arange(p + n) < p
    c = cal.threshold_at_tpr(scores, pos, tpr)
    kept = int((scores[pos] >= np.float32(c.threshold)).sum())
    assert kept == math.ceil(round(tpr * p, 9))  # the fewest positives that reach the TPR
    assert c.tpr == kept / p
    if n:
        assert c.fpr == (scores[~pos] >= np.float32(c.threshold)).sum() / n
    # the highest such threshold: above the lowest positive kept, the TPR falls short
    lowest = scores[pos][scores[pos] >= np.float32(c.threshold)].min()
    assert (scores[pos] > lowest).sum() < math.ceil(round(tpr * p, 9))
    # and every score below that positive is rejected (the threshold sits between them)
    below = scores[scores < lowest]
    assert not below.size or np.float32(c.threshold) > below.max()


def test_no_positives_refused():
    with pytest.raises(SurgeryError, match="no positive example"):
        cal.threshold_at_tpr(np.array([0.1, 0.2], np.float32), np.array([False, False]), 0.99)


@pytest.mark.parametrize("text,why", [("0", "outside"), ("1.5", "outside"), ("-0.2", "outside"), ("abc", "bad --tpr"),
                                      ("", "at least one"), ("0.99,1.01", "1.01 is outside")])
def test_bad_tpr_refused(text, why):
    from cli_commands.onion import parse_tprs

    with pytest.raises(SurgeryError, match=why):
        cal.check_tprs(parse_tprs(text))


def test_tprs_keep_their_order_without_repeats():
    assert cal.check_tprs([0.95, 0.99, 0.95]) == (0.95, 0.99) and cal.check_tprs(1) == (1.0,)


# ----------------------------------------------------------------------------- calibrated cascade


def test_calibration_on_real_pairs_and_the_runtime_rule(pairs):
    net = tiny_net()
    out, rep = cal.calibrate(net, str(pairs), tprs=[0.9, 0.5])
    assert [r.tpr_target for r in rep.operating_points] == [0.9, 0.5] and rep.interest == (1,) and rep.s1_map == "binary"
    train_f, val_f = tdata.folders(pairs, None, labels=True)
    labels = torch.tensor(train_f.labels)
    p = int(labels.sum())
    row = rep.operating_points[0]
    assert row.classes[0].positives == p == 32 and row.classes[0].negatives == 32
    assert row.calibration.tpr == math.ceil(0.9 * p) / p  # 29 of 32: within one example of 0.9
    assert math.isinf(row.thresholds[0]) and row.thresholds[1] == row.classes[0].threshold
    # the checkpoint's buffer holds the first TPR's thresholds; the input is untouched
    assert out.module.thresholds.tolist() == list(row.thresholds)
    assert bool(torch.isneginf(net.module.thresholds).all())
    assert out.recipe[-1].op == "onion_calibrate" and out.metadata["onion_calibration"]["active_tpr"] == 0.9

    # calibrated inference on the calibration images: rejects exactly the examples whose
    # softmax score of S1-class 1 is below the threshold, and survivors equal the full cascade
    norm = tdata.Normalization.from_metadata(out.metadata, 2)
    batch = next(iter(torch.utils.data.DataLoader(tdata.FolderDataset(train_f, (2, 16, 16), train=False),
                                                  batch_size=len(train_f))))
    x = tdata.prepare(batch, norm, (16, 16), train=False, device="cpu")
    res = run(out.module, x)
    with torch.no_grad():
        s1_logits, full = out.module(x)
    expected = torch.softmax(s1_logits, 1)[:, 1] >= row.thresholds[1]
    assert torch.equal(res.passed, expected)
    assert int(res.passed[labels == 1].sum()) == math.ceil(0.9 * p)
    assert res.n_passed / len(labels) == pytest.approx(row.calibration.pass_fraction)
    assert torch.equal(res.output[res.passed], full[res.passed])
    assert bool(torch.isnan(res.output[~res.passed]).all())
    # the held-out pairs are scored with the same thresholds
    assert row.val is not None and row.val.examples == len(val_f) == 32


def test_class_of_interest_without_positives_refused(pairs):
    # a map that sends every class to S1-class 0 leaves S1-class 1 without positives
    meta = {"onion_s1_classes": {"kind": "map", "classes": ["neg", "pos"], "of_class": [0, 0], "k": 2}}
    with pytest.raises(SurgeryError, match="S1-class 1 has no positive"):
        cal.calibrate(tiny_net(meta), str(pairs), tprs=[0.99])


# ----------------------------------------------------------------------------- CLI


def test_cli_calibrate_and_run_calibrated(cli, pairs, tmp_path):
    r = cli("onion", "run", "zoo:onion_p", "--calibrated", cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "no pass thresholds" in r.err
    r = cli("onion", "calibrate", "zoo:onion_p", "--data", str(pairs), "--tpr", "0.99,0.95", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    j = r.json()
    assert j["output"] == "onion_p-calibrated.pt" and j["active_tpr"] == 0.99
    assert [row["tpr_target"] for row in j["operating_points"]] == [0.99, 0.95]
    assert j["operating_points"][0]["thresholds"][0] is None  # S1-class 0 never passes
    assert j["operating_points"][0]["calibration"]["tpr"] == 32 / 32  # ceil(0.99 * 32) = 32
    assert j["operating_points"][1]["calibration"]["tpr"] == math.ceil(0.95 * 32) / 32
    net = sio.load(tmp_path / "onion_p-calibrated.pt")
    assert net.module.thresholds[1].item() == pytest.approx(j["operating_points"][0]["thresholds"][1])
    r = cli("onion", "run", "onion_p-calibrated.pt", "--calibrated", "--batch", "2", "--json", cwd=tmp_path)
    assert r.code == 0, r.err


@pytest.mark.parametrize("tpr", ["0", "1.5"])
def test_cli_bad_tpr_writes_nothing(cli, pairs, tmp_path, tpr):
    r = cli("onion", "calibrate", "zoo:onion_p", "--data", str(pairs), "--tpr", tpr, cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "outside (0, 1]" in r.err
    assert list(tmp_path.iterdir()) == []


def test_cli_no_positives_writes_nothing(cli, pairs, tmp_path):
    net = sio.load("zoo:onion_p")
    meta = {"onion_s1_classes": {"kind": "map", "classes": ["neg", "pos"], "of_class": [0, 0], "k": 2}}
    sio.save(net.evolve(net.module, metadata=meta), tmp_path / "c.pt")
    r = cli("onion", "calibrate", "c.pt", "--data", str(pairs), cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and "no positive example" in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


@pytest.mark.parametrize("classes, why", [("x", "give S1-class indices"), ("5", "not one of 0..1")])
def test_cli_bad_classes_of_interest_write_nothing(cli, pairs, tmp_path, classes, why):
    r = cli("onion", "calibrate", "zoo:onion_p", "--data", str(pairs), "--classes", classes, cwd=tmp_path)
    assert r.code == 2 and r.err.count("\n") == 1 and why in r.err, r.err
    assert list(tmp_path.iterdir()) == []


def test_classes_of_interest_are_typed_and_checked_in_the_library(pairs):
    from surgery.onion import s1classes

    s1 = s1classes.S1Map("binary", ("neg", "pos"), (0, 1), 2)
    assert s1classes.check_interest(None, s1) == s1.default_interest()
    assert s1classes.check_interest((1, 1, 0), s1) == (0, 1)
    with pytest.raises(SurgeryError, match="integer indices"):
        s1classes.check_interest("1", s1)
