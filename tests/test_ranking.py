"""Best-of-N rankings and the group rules, as pure functions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lore_rm.errors import DataError
from lore_rm.ranking import interval_z, order_within_groups, rank_groups
from lore_rm.social_choice import RULES, aggregate, borda, copeland, plurality, tiers, user_tiers

# small integer rewards make ties common
matrices = st.integers(1, 5).flatmap(
    lambda u: st.integers(1, 6).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=u, max_size=u
        )
    )
)


def _naive(r: list[list[int]], rule: str) -> list[float]:
    """The rules written pair by pair, as in a textbook."""
    n = len(r[0])
    if rule == "borda":
        return [
            sum(sum((row[c] > row[d]) + 0.5 * (row[c] == row[d]) for d in range(n) if d != c)
                for row in r)
            for c in range(n)
        ]  # fmt: skip
    if rule == "plurality":
        out = [0.0] * n
        for row in r:
            top = [c for c in range(n) if row[c] == max(row)]
            for c in top:
                out[c] += 1 / len(top)
        return out
    out = [0.0] * n
    for c, d in itertools.permutations(range(n), 2):
        net = sum((row[c] > row[d]) - (row[c] < row[d]) for row in r)
        out[c] += 1.0 if net > 0 else 0.5 if net == 0 else 0.0
    return out


@settings(max_examples=150, deadline=None)
@given(matrices)
def test_rules_match_their_pairwise_definitions(r):
    t = torch.tensor(r, dtype=torch.float64)
    for rule in RULES:
        scores, ranking = aggregate(t, rule)
        np.testing.assert_allclose(scores.numpy(), _naive(r, rule), atol=1e-9)
        assert sorted(i for tier in ranking for i in tier) == list(range(len(r[0])))
        flat = [scores[i] for tier in ranking for i in tier]
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(flat))
    u, n = t.shape
    assert float(borda(t).sum()) == pytest.approx(u * n * (n - 1) / 2)
    assert float(plurality(t).sum()) == pytest.approx(u)
    assert float(copeland(t).sum()) == pytest.approx(n * (n - 1) / 2)


@settings(max_examples=100, deadline=None)
@given(matrices)
def test_user_tiers_group_exactly_equal_rewards(r):
    for row, ranked in zip(r, user_tiers(torch.tensor(r, dtype=torch.float64)), strict=True):
        assert [sorted({row[i] for i in tier}) for tier in ranked] == [
            [v] for v in sorted(set(row), reverse=True)
        ]


def test_tiers_and_bad_input():
    assert tiers(torch.tensor([1.0, 3.0, 1.0, 2.0])) == [[1], [3], [0, 2]]
    assert tiers(torch.tensor([1.0, 1.0 + 1e-12]), tol=1e-9) == [[0, 1]]
    with pytest.raises(DataError, match="rule must be one of"):
        aggregate(torch.ones(2, 2), "condorcet")
    with pytest.raises(DataError, match="matrix"):
        borda(torch.ones(3))
    with pytest.raises(DataError, match="NaN"):
        copeland(torch.tensor([[1.0, float("nan")]]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=6), min_size=1, max_size=6))
def test_order_within_groups_is_a_stable_descending_sort_per_group(groups):
    values = torch.tensor([v for g in groups for v in g], dtype=torch.float64)
    order = order_within_groups(values, torch.tensor([len(g) for g in groups]))
    start = 0
    for g in groups:
        want = sorted(range(len(g)), key=lambda i: (-g[i], i))
        assert order[start : start + len(g)].tolist() == want
        start += len(g)


def test_rank_groups_intervals_and_uncertainty():
    r = torch.tensor([1.0, 3.0, 2.9, 5.0, 0.0])
    std = torch.tensor([0.1, 0.1, 0.1, float("nan"), float("nan")])
    first, second = rank_groups(r, [3, 2], known=[True, False], std=std)
    assert first.ranking == [1, 2, 0] and first.best == 1 and first.known
    z = interval_z(0.9)
    assert first.lower == pytest.approx([1 - 0.1 * z, 3 - 0.1 * z, 2.9 - 0.1 * z])
    assert first.uncertain is True  # 3 - 0.16 < 2.9 + 0.16
    far = rank_groups(r[:3], [3], known=[True], std=std[:3] / 100)[0]
    assert far.uncertain is False
    assert second.ranking == [0, 1] and second.lower is None and second.uncertain is None
    assert not second.known
    with pytest.raises(DataError, match="level"):
        interval_z(1.0)
    with pytest.raises(DataError, match="add up"):
        rank_groups(r, [2, 2], known=[True, True])


def test_plurality_shares_are_exact_enough_to_tie():
    """Each user's point split among their best candidates summed in float32 (bool / int),
    so shares of 1/4 added up to 2.2500002 where the definition gives 2.25 (hypothesis)."""
    r = [[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0] * 6, [0, 0, 1, 1, 1, 1]]
    scores, _ = aggregate(torch.tensor(r, dtype=torch.float64), "plurality")
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), _naive(r, "plurality"), atol=1e-12)
