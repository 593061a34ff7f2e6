"""surgery.core.verify: the one "how far did it move" measure (max abs/rel with an absolute
floor, top-1 agreement), checked on hand-built models whose answers are known."""

import torch
from torch import nn

from surgery.core.verify import compare, probe_inputs


class Fixed(nn.Module):
    """Returns a fixed tensor per call, in order, whatever the input."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)
        self.calls = 0

    def forward(self, x):
        o = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return o


def test_agreement_counts_rows_with_the_same_argmax():
    a = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [5.0, 4.0, 0.0]])
    b = a.clone()
    b[1] = torch.tensor([3.0, 2.0, 1.0])  # row 1 now picks class 0
    b[3] = torch.tensor([4.0, 5.0, 0.0])  # row 3 now picks class 1
    v = compare(Fixed([a]), Fixed([b]), (1,), probes=1, batch=4)
    assert v.top1_agreement == 0.5
    assert v.max_abs == 3.0  # |0 - 3| in row 1
    assert v.max_rel == 3.0 / 5.0


def test_agreement_of_single_scores_is_sign_agreement_and_none_for_maps():
    a = torch.tensor([[0.5], [-1.0], [2.0], [-0.1]])
    b = torch.tensor([[0.4], [0.3], [2.0], [-0.2]])
    assert compare(Fixed([a]), Fixed([b]), (1,), probes=1, batch=4).top1_agreement == 0.75
    # (B, C, 1, 1) is a classifier; (B, C, H, W) is not
    c = torch.randn(2, 5, 1, 1)
    assert compare(Fixed([c]), Fixed([c]), (1,), probes=1).top1_agreement == 1.0
    m = torch.randn(2, 5, 3, 3)
    assert compare(Fixed([m]), Fixed([m]), (1,), probes=1).top1_agreement is None


def test_absolute_floor_passes_near_zero_outputs_with_rounding_noise():
    a = torch.full((2, 4, 2, 2), 1e-9)
    b = a + 5e-8  # relatively huge, absolutely rounding noise
    v = compare(Fixed([a]), Fixed([b]), (1,), probes=1)
    assert v.max_rel > 1
    assert v.ok(rtol=1e-5)
    assert not v.ok(rtol=1e-5, atol=0.0)


def test_probe_inputs_are_seeded():
    x = probe_inputs((3, 4, 4), probes=2, batch=2, seed=7)
    y = probe_inputs((3, 4, 4), probes=2, batch=2, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(x, y))
