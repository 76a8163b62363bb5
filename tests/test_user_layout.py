"""The users' Newton solve in its two row layouts: the same sums, the same solution."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lore_rm.fit.objective import newton_point
from lore_rm.fit.user_layout import MAX_PADDING, PaddedLayout, RowLayout, user_layout


def _rows(counts: list[int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return u[torch.randperm(u.numel(), generator=g)]


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    seed=st.integers(0, 10_000),
)
def test_padded_sums_equal_the_rows_sums(counts, seed):
    u = _rows(counts, seed)
    n_users = len(counts)
    total = torch.tensor(counts)
    padded = PaddedLayout(u, n_users, total, max(max(counts), 1))
    rows = RowLayout(u, n_users)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(u.numel(), 2, 3, generator=g, dtype=torch.float64)
    y = torch.randn(u.numel(), 2, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(padded.user_sum(padded.rows(x)), rows.user_sum(x))
    torch.testing.assert_close(
        padded.user_outer_sum(padded.rows(x), padded.rows(y)), rows.user_outer_sum(x, y)
    )
    torch.testing.assert_close(padded.to_rows(padded.rows(x)), x, rtol=0, atol=0)
    per_user = torch.randn(n_users, 2, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(padded.to_rows(padded.per_row(per_user)), per_user[u])


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_a_layout_of_some_users_sums_their_rows_as_the_whole_layout_does(counts, seed, data):
    u = _rows(counts, seed)
    n_users = len(counts)
    users = torch.tensor(
        sorted(data.draw(st.sets(st.integers(0, n_users - 1), min_size=1))), dtype=torch.int64
    )
    g = torch.Generator().manual_seed(seed + 1)
    per_user = torch.randn(n_users, 2, 3, generator=g, dtype=torch.float64)
    wide = max(max(counts), 1)
    for layout in (RowLayout(u, n_users), PaddedLayout(u, n_users, torch.tensor(counts), wide)):
        x = layout.rows(torch.randn(u.numel(), 2, 3, generator=g))
        sub = layout.of_users(users)
        assert sub.n_users == users.numel()
        assert torch.equal(sub.user_sum(x[sub.index]), layout.user_sum(x)[users])
        part = x[sub.index]
        assert torch.equal(sub.user_outer_sum(part, part), layout.user_outer_sum(x, x)[users])
        assert torch.equal(sub.per_row(per_user[users]), layout.per_row(per_user)[sub.index])


def test_the_padded_layout_is_taken_only_where_padding_is_cheap():
    assert isinstance(user_layout(_rows([10] * 20, 0), 20), PaddedLayout)
    skewed = [1] * 19 + [int(MAX_PADDING * 40)]
    assert type(user_layout(_rows(skewed, 0), 20)) is RowLayout
    assert type(user_layout(torch.zeros(0, dtype=torch.int64), 3)) is RowLayout


@pytest.mark.parametrize(("problems", "k", "space"), [(5, 4, "simplex"), (1, 3, "signed")])
def test_both_layouts_reach_the_same_users_solution(problems, k, space):
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(8, 13, (40,), generator=g).tolist()
    u = _rows(counts, 1)
    n = u.numel()
    z = torch.randn(n, problems, k, generator=g)
    coef = torch.rand(n, problems, generator=g) / n
    logits = 0.3 * torch.randn(problems, 40, k, generator=g)
    eye = torch.eye(k, dtype=torch.float64)

    def penalty(lg):
        lg = lg.double()
        return 0.005 * (lg**2).sum(-1), 0.01 * lg, 0.01 * eye.expand(lg.shape[0], 1, k, k)

    layouts = (RowLayout(u, 40), user_layout(u, 40))
    assert isinstance(layouts[1], PaddedLayout)
    (a, ok_a), (b, ok_b) = (
        newton_point(z, logits, u, coef, 1.0, penalty, 1e-6, 30, space, layout=lay)
        for lay in layouts
    )
    assert ok_a and ok_b
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-9)
    for x, y in zip(b.row_terms(), a.row_terms(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4)


@pytest.mark.parametrize("rows_layout", [False, True])
def test_a_step_of_the_users_still_moving_reaches_what_a_step_of_all_users_reaches(
    monkeypatch, rows_layout
):
    """Once most users have stopped, a Newton step computes the others alone (either
    layout); every user ends where the whole-population steps take them."""
    import lore_rm.fit.objective as objective

    g = torch.Generator().manual_seed(5)
    counts = torch.randint(8, 13, (60,), generator=g).tolist()
    u = _rows(counts, 2)
    z = torch.randn(u.numel(), 5, 4, generator=g)
    coef = torch.rand(u.numel(), 5, generator=g) / u.numel()
    logits = 0.3 * torch.randn(5, 60, 4, generator=g)
    mean = 0.1 * torch.randn(60, 4, generator=g, dtype=torch.float64)  # a prior per user
    precision = 0.02 * torch.eye(4, dtype=torch.float64)

    def penalty(lg):
        diff = lg.double() - mean
        pd = diff @ precision
        return 0.5 * (pd * diff).sum(-1), pd, precision.expand(lg.shape[0], 1, 4, 4)

    steps = []
    real = objective.saddle_free_step
    monkeypatch.setattr(
        objective, "saddle_free_step", lambda h, gr: steps.append(h.shape[1]) or real(h, gr)
    )
    layout = RowLayout(u, 60) if rows_layout else None
    solved, _ = newton_point(z, logits, u, coef, 1.0, penalty, 1e-5, 30, layout=layout)
    logits = solved.logits.clone()
    logits[:, :8] += 0.5 * torch.randn(5, 8, 4, generator=g)  # 8 users moved off their best
    steps.clear()
    restricted, ok = newton_point(z, logits, u, coef, 1.0, penalty, 1e-5, 30, layout=layout)
    assert ok and steps and max(steps) == 8  # every step computed those 8 users alone
    steps.clear()
    monkeypatch.setattr(objective, "RESTRICT_USERS", 0.0)
    whole, ok_whole = newton_point(z, logits, u, coef, 1.0, penalty, 1e-5, 30, layout=layout)
    assert ok_whole and set(steps) == {60}
    # the same bits: every element's softplus and sigmoid are those of the whole tensor
    assert torch.equal(restricted.logits, whole.logits)
    assert torch.equal(restricted.loss, whole.loss)
    for x, y in zip(restricted.row_terms(), whole.row_terms(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("rows_layout", [False, True])
def test_a_backtracking_step_evaluates_only_the_users_whose_step_was_too_long(
    monkeypatch, rows_layout
):
    """A trial whose loss went up for a few users is evaluated again for those users alone,
    and the point reached is the one evaluating everyone would reach, bit for bit."""
    import lore_rm.fit.objective as objective

    g = torch.Generator().manual_seed(7)
    n_users, k = 50, 3
    u = _rows([10] * n_users, 4)
    z = torch.randn(u.numel(), 2, k, generator=g)
    coef = torch.rand(u.numel(), 2, generator=g) / u.numel()
    logits = 2.0 * torch.randn(2, n_users, k, generator=g)
    eye = torch.eye(k, dtype=torch.float64)

    def penalty(lg):
        lg = lg.double()
        return 0.005 * (lg**2).sum(-1), 0.01 * lg, 0.01 * eye.expand(lg.shape[0], 1, k, k)

    sizes = []
    real = objective.NewtonPoint.__init__

    def counted(self, z, logits, *args):
        sizes.append(logits.shape[1])
        real(self, z, logits, *args)

    monkeypatch.setattr(objective.NewtonPoint, "__init__", counted)
    monkeypatch.setattr(objective, "RESTRICT_USERS", 1.0)  # the moving users alone, always
    layout = RowLayout(u, n_users) if rows_layout else None
    restricted, ok = newton_point(z, logits, u, coef, 1.0, penalty, 1e-6, 30, layout=layout)
    assert ok and min(sizes) < 5  # trials re-evaluated for a few users
    sizes.clear()
    monkeypatch.setattr(objective, "RESTRICT_USERS", -1.0)
    whole, ok_whole = newton_point(z, logits, u, coef, 1.0, penalty, 1e-6, 30, layout=layout)
    assert ok_whole and set(sizes) == {n_users}  # every evaluation of every user
    assert torch.equal(restricted.logits, whole.logits)
    assert torch.equal(restricted.loss, whole.loss)
