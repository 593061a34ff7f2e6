"""Loss terms against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from surgery.core.errors import SurgeryError
from surgery.train import losses
from surgery.train.loop import Batch, Forward


def test_kd_temperature_one_by_hand():
    # q = softmax([ln 3, 0]) = [3/4, 1/4], p = softmax([0, 0]) = [1/2, 1/2]
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert losses.kd(s, t, 1.0).item() == pytest.approx(want, rel=1e-6)


def test_kd_temperature_scaling_and_batch_mean_by_hand():
    # T = 2: q = softmax([ln 3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1); the term is multiplied by T^2;
    # a second row equal to its teacher adds 0 and halves the batch mean.
    r3 = math.sqrt(3.0)
    q = (r3 / (r3 + 1), 1 / (r3 + 1))
    kl = q[0] * math.log(q[0] / 0.5) + q[1] * math.log(q[1] / 0.5)
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [1.0, -1.0]])
    assert losses.kd(s, t, 2.0).item() == pytest.approx(4 * kl / 2, rel=1e-6)


def test_attention_transfer_one_channel_by_hand():
    # student |A|^2 = [1, 0] -> [1, 0]; teacher [0, 4] -> [0, 1]; mean squared difference (1 + 1)/2 = 1
    s = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    t = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    assert losses.at([s], [t], beta=1.0).item() == pytest.approx(1.0)
    assert losses.at([s], [t], beta=1000.0).item() == pytest.approx(1000.0)


def test_attention_transfer_two_channels_and_pairs_by_hand():
    # student channels [1, 1] and [1, -1]: mean of squares [1, 1] -> [1/sqrt2, 1/sqrt2]
    # teacher channels [2, 0] and [0, 0]: mean of squares [2, 0] -> [1, 0]
    s = torch.tensor([[1.0, 1.0], [1.0, -1.0]]).view(1, 2, 1, 2)
    t = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    one = ((1 - 1 / math.sqrt(2)) ** 2 + 0.5) / 2
    assert losses.at([s], [t], beta=1000.0).item() == pytest.approx(1000 * one, rel=1e-6)
    # pairs add up (Σ over j in eq. 6.1)
    assert losses.at([s, s], [t, t], beta=1.0).item() == pytest.approx(2 * one, rel=1e-6)


def test_feat_and_ce_by_hand():
    s = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    assert losses.feat([s], [torch.zeros_like(s)]).item() == pytest.approx(2.5)
    assert losses.ce(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(math.log(2))


def test_distillation_callback_names_weighted_terms():
    spec = losses.LossSpec.parse("kd,ce", kd_weight=2.0, ce_weight=0.5, temperature=1.0)
    s = Forward(torch.tensor([[0.0, 0.0]]))
    t = Forward(torch.tensor([[math.log(3.0), 0.0]]))
    terms = losses.distillation(spec)(s, t, Batch(torch.zeros(1, 1, 2, 2), torch.tensor([0]), torch.tensor([0])))
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert set(terms) == {"kd", "ce"}
    assert terms["kd"].item() == pytest.approx(2 * kl, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(0.5 * math.log(2), rel=1e-6)


def test_detector_outputs_distil_on_raw_heads():
    # outputs that are not (B, classes) logits: mean over heads of the MSE
    spec = losses.LossSpec.parse("kd")
    s = Forward((torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1)))
    t = Forward((torch.ones(1, 2, 2, 2), torch.full((1, 1, 1, 1), 3.0)))
    terms = losses.distillation(spec)(s, t, None)
    assert terms["kd"].item() == pytest.approx((1.0 + 9.0) / 2)


@pytest.mark.parametrize("text", ["kl", "", "kd,bogus"])
def test_unknown_losses_refused(text):
    with pytest.raises(SurgeryError, match="loss"):
        losses.LossSpec.parse(text)


def test_one_registry_of_terms():
    """Every term the training commands use is registered once, by name, with what it needs; heal's
    LossSpec reads its needs from there."""
    assert set(losses.LOSSES) >= {"kd", "at", "feat", "ce", "hinge", "joint"}
    assert losses.term("hinge").fn is losses.hinge and losses.term("joint").fn is losses.joint_terms
    assert losses.term("at").needs == {"teacher", "features"} and losses.term("ce").needs == {"labels"}
    spec = losses.LossSpec.parse("kd,ce")
    assert spec.needs_teacher and spec.needs_labels and not spec.needs_features
    with pytest.raises(SurgeryError, match="unknown loss 'nope'; choose from kd, at"):
        losses.term("nope")
    with pytest.raises(ValueError, match="twice"):
        losses.register("kd")(lambda s, t: s)


def test_single_score_distils_by_squared_error():
    # OnionNet's L_S2 towards a teacher's single score: the squared error (feat of the one pair)
    s, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    assert losses.s2_term("kd", s, None, t, 4.0).item() == pytest.approx((1 + 4) / 2)

