"""zoo.onion_runtime: the compacted cascade forward equals the uncompacted one on survivors,
does no S2 work for rejected samples, and the cost analyzer sees the smaller batch."""

from __future__ import annotations

import pytest
import torch

from analyzers import cost
from surgery.core.errors import SurgeryError
from cli_commands.onion import parse_thresholds
from zoo.onion_runtime import ForcedPass, forced_mask, run, run_uncompacted, two_pass_plan
from zoo import registry


@pytest.fixture(scope="module", params=["onion_p", "onion_p_ns"])
def cascade(request):
    torch.manual_seed(0)
    return registry.get(request.param).build().eval()


MASKS = {
    "all": [True] * 9,
    "none": [False] * 9,
    "first": [True] + [False] * 8,
    "last": [False] * 8 + [True],
    "alternate": [i % 2 == 0 for i in range(9)],
}


@pytest.mark.parametrize("compaction", ["inplace", "gather"])
@pytest.mark.parametrize("kind", [*MASKS, "random0", "random1", "random2"])
def test_compacted_equals_uncompacted_on_survivors(cascade, compaction, kind):
    x = torch.randn(9, 2, 64, 64, generator=torch.Generator().manual_seed(3))
    if kind.startswith("random"):
        g = torch.Generator().manual_seed(int(kind[-1]))
        mask = torch.rand(9, generator=g) < 0.5
    else:
        mask = torch.tensor(MASKS[kind])
    x0 = x.clone()
    res = run(cascade, x, mask=mask, compaction=compaction)
    ref = run_uncompacted(cascade, x, mask)
    assert torch.equal(x, x0)  # the caller's input is never written to
    assert res.n_passed == int(mask.sum())
    assert torch.equal(res.passed, mask)
    assert torch.isnan(res.output[~mask]).all()
    torch.testing.assert_close(res.output[mask], ref[mask], rtol=1e-5, atol=1e-6)
    # rejected samples keep their S1 scores
    torch.testing.assert_close(res.s1_logits, cascade.stage1(x)[0])


def test_two_pass_plan_moves_only_misplaced_survivors():
    mask = torch.tensor([True, False, True, False, False, True, True])
    k, holes, movers = two_pass_plan(mask)
    assert k == 4 and holes.tolist() == [1, 3] and movers.tolist() == [5, 6]


def test_thresholds_decide_who_passes(cascade):
    x = torch.randn(6, 2, 64, 64)
    with torch.no_grad():
        scores = cascade.pass_scores(cascade.stage1(x)[0])
    cut = scores[:, 0].median()
    res = run(cascade, x, thresholds=torch.tensor([float(cut), float("inf")]))
    assert torch.equal(res.passed, scores[:, 0] >= cut)
    assert run(cascade, x).n_passed == 6  # stored default: -inf, every sample passes


def test_parse_thresholds():
    assert parse_thresholds("0.5", 2) == [0.5, 0.5]
    assert parse_thresholds("0.5,inf", 2) == [0.5, float("inf")]
    with pytest.raises(SurgeryError, match="2 S1-classes"):
        parse_thresholds("0.1,0.2,0.3", 2)


# per-sample conv MACs of P's stages, closed form k² · c_in · c_out · m² over Table 1 widths
# and P_M's output sizes 21, 19, 17, 15, (pool) 6, 4, 2, 1
_K = [4, 3, 3, 3, 3, 3, 3, 2]
_M = [21, 19, 17, 15, 6, 4, 2, 1]
_N1 = [32, 32, 32, 32, 64, 64, 64, 2]
_N2 = [64, 64, 64, 64, 128, 128, 128, 1]


def _stage_macs():
    s1 = sum(_K[l] ** 2 * (2 if l == 0 else _N1[l - 1]) * _N1[l] * _M[l] ** 2 for l in range(8))
    s2 = sum(_K[l] ** 2 * (2 if l == 0 else _N1[l - 1] + _N2[l - 1]) * _N2[l] * _M[l] ** 2 for l in range(8))
    return s1, s2


@pytest.mark.parametrize("n_pass", [0, 3, 10])
def test_cost_analyzer_sees_s2_at_the_survivors_batch(n_pass):
    s1, s2 = _stage_macs()
    with torch.device("meta"):
        m = registry.get("onion_p").build()
    rep = cost.analyze(ForcedPass(m, n_pass), (2, 64, 64), batch=10)
    assert rep.totals.conv_macs == 10 * s1 + n_pass * s2


def test_forced_mask_has_exactly_round_p_b_survivors():
    assert int(forced_mask(120, 0.54).sum()) == 65
    with pytest.raises(SurgeryError):
        forced_mask(10, 1.5)
