"""surgery.partition: balanced channel partitions that keep the most energy in kept blocks.

Expected values are structural (a hidden block structure is recovered exactly: retained 1.0),
closed-form (1/G for unstructured weights, the kept energy recomputed with an explicit mask)
or the baseline itself (never below it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery.core.errors import SurgeryError
from surgery.partition import Partition, contiguous, permutation, search, search_chain

EYE = {g: torch.eye(g, dtype=torch.bool) for g in (2, 4, 8)}
ONION = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)


def hidden_blocks(out_sizes, in_sizes, keep, seed=0):
    """An energy matrix that is exactly zero outside the kept blocks of a hidden assignment,
    with rows and columns shuffled; returns it and the hidden assignment."""
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor(contiguous(out_sizes))
    b = torch.tensor(contiguous(in_sizes))
    e = torch.rand(len(a), len(b), generator=g, dtype=torch.float64) + 0.05
    e = e * keep[a][:, b]
    po, pi = torch.randperm(len(a), generator=g), torch.randperm(len(b), generator=g)
    return e[po][:, pi], a[po], b[pi]


def mask_fraction(e, out_groups, in_groups, keep):
    """Kept fraction with an explicit loop over blocks (independent of the search's algebra)."""
    e = e.double().numpy()
    kept = 0.0
    for i, gi in enumerate(out_groups):
        for j, gj in enumerate(in_groups):
            if keep[gi, gj]:
                kept += e[i, j]
    return kept / e.sum()


def test_contiguous_and_permutation():
    assert contiguous([2, 3]) == (0, 0, 1, 1, 1)
    assert contiguous([0, 2]) == (1, 1)
    assert permutation((1, 0, 1, 0)) == [1, 3, 0, 2]


@pytest.mark.parametrize("out_n,in_n,G", [(16, 16, 2), (64, 32, 4), (64, 64, 8)])
def test_hidden_block_diagonal_is_recovered(out_n, in_n, G):
    e, ha, hb = hidden_blocks([out_n // G] * G, [in_n // G] * G, EYE[G], seed=G)
    p = search(e, [out_n // G] * G, [in_n // G] * G, EYE[G])
    assert isinstance(p, Partition)
    assert p.retained == pytest.approx(1.0, abs=1e-12)
    assert mask_fraction(e, p.out_groups, p.in_groups, EYE[G]) == pytest.approx(1.0, abs=1e-12)
    # the found groups are the hidden ones up to renaming
    for g in range(G):
        assert len({int(h) for h, q in zip(ha, p.out_groups) if q == g}) == 1
    assert p.baseline < 0.6  # the shuffle destroyed the contiguous structure


@pytest.mark.parametrize("G", [2, 4, 8])
def test_random_energy_keeps_at_least_the_baseline_and_about_one_over_g(G):
    e = torch.rand(64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = search(e, [64 // G] * G, [64 // G] * G, EYE[G], seed=3)
    assert p.retained >= p.baseline
    assert p.baseline == pytest.approx(mask_fraction(e, contiguous([64 // G] * G), contiguous([64 // G] * G), EYE[G]))
    assert p.retained == pytest.approx(mask_fraction(e, p.out_groups, p.in_groups, EYE[G]), rel=1e-9)
    assert 1 / G <= p.retained < 1.5 / G  # unstructured weights: close to 1/G
    assert sorted(np.bincount(p.out_groups)) == [64 // G] * G and sorted(np.bincount(p.in_groups)) == [64 // G] * G


def test_contiguous_optimum_is_kept_on_ties():
    e = torch.block_diag(*[torch.ones(4, 4)] * 4)  # already block-diagonal in contiguous order
    p = search(e, [4] * 4, [4] * 4, EYE[4])
    assert p.retained == p.baseline == 1.0
    assert p.out_groups == contiguous([4] * 4) and p.in_groups == contiguous([4] * 4)


def test_fixed_sides_are_honoured():
    e, ha, hb = hidden_blocks([8] * 4, [8] * 4, EYE[4], seed=5)
    fixed_in = tuple(int(x) for x in hb)  # the hidden input grouping, given
    p = search(e, [8] * 4, [8] * 4, EYE[4], fixed_in=fixed_in)
    assert p.in_groups == fixed_in
    assert p.retained == pytest.approx(1.0)  # the outputs follow exactly
    assert p.baseline == pytest.approx(mask_fraction(e, contiguous([8] * 4), fixed_in, EYE[4]))
    both = search(e, [8] * 4, [8] * 4, EYE[4], fixed_in=contiguous([8] * 4), fixed_out=contiguous([8] * 4))
    assert both.retained == both.baseline


def test_unequal_onion_groups():
    e, ha, hb = hidden_blocks([3, 5], [4, 6], ONION, seed=2)
    p = search(e, [3, 5], [4, 6], ONION)
    assert p.retained == pytest.approx(1.0, abs=1e-12)
    assert list(np.bincount(p.out_groups, minlength=2)) == [3, 5]
    assert list(np.bincount(p.in_groups, minlength=2)) == [4, 6]


def test_chain_coupling_and_recovery():
    G = 4
    # a chain whose interfaces share hidden groupings: x0 -> layer0 -> x1 -> layer1 -> x2
    g = torch.Generator().manual_seed(7)
    groups = [torch.tensor(contiguous([n // G] * G))[torch.randperm(n, generator=g)] for n in (8, 16, 12)]
    es = []
    for l in range(2):
        e = torch.rand(len(groups[l + 1]), len(groups[l]), generator=g, dtype=torch.float64) + 0.05
        es.append(e * EYE[G][groups[l + 1]][:, groups[l]])
    parts = search_chain(es, [[4] * G, [3] * G], EYE[G])
    assert parts[0].out_groups == parts[1].in_groups
    assert [p.retained for p in parts] == pytest.approx([1.0, 1.0], abs=1e-12)
    # a fixed first input and a fixed last output are honoured
    fixed0 = tuple(int(x) for x in groups[0])
    fixed2 = tuple(int(x) for x in groups[2])
    parts = search_chain(es, [[4] * G, [3] * G], EYE[G], first_in=fixed0, last_out=fixed2)
    assert parts[0].in_groups == fixed0 and parts[1].out_groups == fixed2
    assert [p.retained for p in parts] == pytest.approx([1.0, 1.0], abs=1e-12)  # the interior follows them
    parts = search_chain(es, [[4] * G, [3] * G], EYE[G], first_in=fixed0, last_out=contiguous([3] * G))
    assert parts[0].in_groups == fixed0 and parts[1].out_groups == contiguous([3] * G)
    assert parts[0].out_groups == parts[1].in_groups
    assert sum(p.retained for p in parts) >= sum(p.baseline for p in parts)


def test_one_layer_search_is_a_chain_of_one():
    e, _, _ = hidden_blocks([4] * 4, [6] * 4, EYE[4], seed=3)
    e = e + 0.01  # off-block energy too: the result is not the trivial optimum
    p = search(e, [4] * 4, [6] * 4, EYE[4], seed=2)
    (q,) = search_chain([e], [[4] * 4], EYE[4], seed=2)
    assert (p.out_groups, p.in_groups, p.retained, p.baseline) == (q.out_groups, q.in_groups, q.retained, q.baseline)
    assert p.retained == pytest.approx(mask_fraction(e, p.out_groups, p.in_groups, EYE[4]))
    # unequal, non-square (onion) groups: only one layer may have them
    with pytest.raises(SurgeryError, match="square keep mask"):
        search_chain([e[:8, :8], e[:8, :8]], [[3, 5], [3, 5]], torch.ones(2, 3, dtype=torch.bool))


def test_chain_with_onion_mask_and_image_input():
    es = [torch.rand(16, 3, dtype=torch.float64), torch.rand(8, 16, dtype=torch.float64)]
    parts = search_chain(es, [[6, 10], [3, 5]], ONION, first_in=(0, 0, 0))
    assert parts[0].in_groups == (0, 0, 0) and parts[0].retained == 1.0  # everyone reads the image
    assert list(np.bincount(parts[0].out_groups, minlength=2)) == [6, 10]
    assert parts[1].retained >= parts[1].baseline
    assert parts[1].retained == pytest.approx(mask_fraction(es[1], parts[1].out_groups, parts[1].in_groups, ONION))


def test_bad_input_is_one_error():
    e = torch.rand(8, 8)
    with pytest.raises(SurgeryError, match="sum to 8"):
        search(e, [4, 3], [4, 4], EYE[2])
    with pytest.raises(SurgeryError, match="keep mask"):
        search(e, [4, 4], [4, 4], EYE[4])
    with pytest.raises(SurgeryError, match="group sizes"):
        search(e, [4, 4], [4, 4], EYE[2], fixed_out=(0,) * 8)
    with pytest.raises(SurgeryError, match="non-negative"):
        search(-e, [4, 4], [4, 4], EYE[2])
    with pytest.raises(SurgeryError, match="reads 8 channels"):
        search_chain([torch.rand(4, 8), torch.rand(4, 8)], [[2, 2], [2, 2]], EYE[2])


def test_two_group_sort_equals_slot_assignment():
    """The two-group fast path (a sort by gain) is the exact optimum: it equals the general
    linear-sum assignment onto slots on random scores, incl. unequal sizes and ties."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from surgery.partition import _assign

    rng = np.random.default_rng(0)
    for n, n0 in ((7, 3), (16, 8), (33, 1), (20, 19)):
        score = rng.random((n, 2))
        score[::4] = score[::4].round(1)  # some ties
        fast = _assign(score, [n0, n - n0])
        slots = np.repeat([0, 1], [n0, n - n0])
        r, c = linear_sum_assignment(score[:, slots], maximize=True)
        best = score[r, slots[c]].sum()
        assert np.bincount(fast, minlength=2).tolist() == [n0, n - n0]
        assert score[np.arange(n), fast].sum() == pytest.approx(best, abs=1e-12)
