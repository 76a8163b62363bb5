"""Active question selection (lore_rm.fit.active, LowRankReward.select_questions)."""

import dataclasses

import pytest
import torch

from lore_rm import Comparisons, LoreError, LowRankReward
from lore_rm.evaluate.active import active_sweep
from lore_rm.evaluate.report import active_calibration_table
from lore_rm.fit import active
from lore_rm.fit.active import select
from lore_rm.fit.posterior import softmax_gradient


def _problem(n_users=5, per_user=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_users * per_user, k, generator=g, dtype=torch.float64)
    users = torch.randperm(n_users * per_user, generator=g) % n_users  # interleaved rows
    w = torch.distributions.Dirichlet(torch.ones(k)).sample((n_users,)).double()
    a = torch.randn(n_users, k, k, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) / k + 0.1 * torch.eye(k, dtype=torch.float64)
    return z, users, w, cov


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_greedy_information_gain_is_the_log_det_increase(scale):
    z, users, w, cov = _problem()
    rows, scores = select(z, users, w, cov, 6, scale=scale, duplicate_tol=0.0)
    for u in range(w.shape[0]):
        mine = (users == u).nonzero().flatten()
        g = scale * softmax_gradient(z[mine], w[u].expand(mine.numel(), -1))
        p = torch.sigmoid(scale * z[mine] @ w[u])
        c = p * (1 - p)
        h = torch.linalg.inv(cov[u])
        left = list(range(mine.numel()))
        for step in range(6):
            gains = torch.stack(
                [
                    0.5 * (torch.logdet(h + c[i] * torch.outer(g[i], g[i])) - torch.logdet(h))
                    for i in left
                ]
            )
            best = left[int(gains.argmax())]
            assert int(rows[u, step]) == int(mine[best])
            torch.testing.assert_close(scores[u, step], gains.max(), rtol=1e-8, atol=1e-10)
            h = h + c[best] * torch.outer(g[best], g[best])
            left.remove(best)
    assert bool((scores[:, 1:] <= scores[:, :-1] + 1e-12).all())  # gains only shrink


def test_batched_over_users_equals_one_user_at_a_time():
    z, users, w, cov = _problem(n_users=6)
    for criterion in ("information", "uncertainty", "random"):
        gen = torch.Generator().manual_seed(1) if criterion == "random" else None
        rows, _ = select(z, users, w, cov, 5, criterion=criterion, generator=gen)
        if criterion == "random":
            continue  # one draw for everyone: only its distinctness is checked below
        for u in range(w.shape[0]):
            mine = (users == u).nonzero().flatten()
            alone, _ = select(
                z[mine],
                torch.zeros(mine.numel(), dtype=torch.int64),
                w[u : u + 1],
                cov[u : u + 1],
                5,
                criterion=criterion,
            )
            assert torch.equal(mine[alone[0]], rows[u])


def test_one_pass_per_greedy_step_not_per_user(monkeypatch):
    calls = []
    original = active._Taken.next_pick

    def counted(self, key, tol):
        calls.append(key.shape[0])
        return original(self, key, tol)

    monkeypatch.setattr(active._Taken, "next_pick", counted)
    z, users, w, cov = _problem(n_users=300, per_user=20)
    rows, _ = select(z, users, w, cov, 7)
    assert calls == [300] * 7  # every step handles all users at once
    assert int((rows >= 0).sum()) == 300 * 7


@pytest.mark.parametrize("criterion", ["information", "uncertainty", "random"])
def test_never_repeats_a_candidate_nor_a_duplicate(criterion):
    z, users, w, cov = _problem(n_users=4, per_user=6)
    # every candidate also listed twice more: the same pair again and reversed
    z3 = torch.cat([z, z, -z])
    u3 = torch.cat([users, users, users])
    rows, scores = select(z3, u3, w, cov, 10, criterion=criterion, generator=torch.Generator())
    for u in range(4):
        picked = rows[u][rows[u] >= 0]
        assert picked.numel() == 6  # six distinct questions, then none left
        assert torch.unique(picked % z.shape[0]).numel() == 6
        assert bool(torch.isnan(scores[u, 6:]).all()) and bool((rows[u, 6:] == -1).all())


def test_near_duplicates_follow_the_documented_rule():
    z = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [-1.0, 0.0, 0.01], [0.0, 1.0, 0.0]])
    z = z.double()
    users = torch.zeros(4, dtype=torch.int64)
    w = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    cov = torch.eye(3, dtype=torch.float64)[None]
    rows, _ = select(z, users, w, cov, 4, criterion="random", duplicate_tol=0.02)
    assert sorted(rows[0][rows[0] >= 0].tolist()) in ([0, 3], [1, 3], [2, 3])
    rows, _ = select(z, users, w, cov, 4, criterion="random", duplicate_tol=0.0)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3]  # 0 only drops exact duplicates
    asked = (z[:1], torch.zeros(1, dtype=torch.int64))
    rows, _ = select(z, users, w, cov, 4, criterion="random", asked=asked)
    assert rows[0].tolist() == [3, -1, -1, -1]  # near what was asked before


def test_fewer_candidates_than_asked_are_padded():
    z, _, w, cov = _problem(n_users=3)
    users = torch.tensor([0] * 5 + [2] * 2)
    rows, scores = select(z[:7], users, w, cov, 4)
    assert (rows >= 0).sum(1).tolist() == [4, 0, 2]
    assert rows[1].tolist() == [-1] * 4 and bool(torch.isnan(scores[1]).all())
    assert set(rows[2, :2].tolist()) == {5, 6}
    empty, _ = select(z[:0], users[:0], w, cov, 3)
    assert bool((empty == -1).all())
    with pytest.raises(LoreError, match="criterion"):
        select(z, users, w, cov, 2, criterion="entropy")


def _model_and_pool(k: int, n_users=8, per_user=15, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [f"u{i}" for i in range(n_users)]
    weights = torch.distributions.Dirichlet(torch.ones(k)).sample((n_users,)) if k > 1 else None
    model = LowRankReward.from_arrays(
        torch.randn(d, k, generator=g),
        weights if weights is not None else torch.ones(n_users, 1),
        ids,
    )
    table = torch.randn(40, d, generator=g)
    n = n_users * per_user
    a = torch.randint(40, (n,), generator=g)
    b = (a + 1 + torch.randint(39, (n,), generator=g)) % 40
    users = torch.arange(n_users).repeat_interleave(per_user)
    return model, Comparisons.from_pairs(table, a, b, users, user_ids=ids)


def test_rank_one_degenerates_gracefully():
    model, pool = _model_and_pool(k=1)
    for criterion in ("information", "uncertainty", "random"):
        sel = model.select_questions(pool, 5, criterion=criterion)
        assert sel.counts.tolist() == [5] * 8
        for u, rows in sel.to_dict().items():
            assert len(set(rows)) == 5 and all(pool.user_ids[pool.user_index[r]] == u for r in rows)
        if criterion != "random":  # nothing to learn: every score is 0, rows in pool order
            assert bool((sel.scores == 0).all())
            assert bool((sel.rows[:, 1:] > sel.rows[:, :-1]).all())


def test_model_selection_ignores_orientation_and_skips_asked():
    model, pool = _model_and_pool(k=4)
    sel = model.select_questions(pool, 6)
    flipped = Comparisons.from_pairs(
        pool.table, pool.rejected, pool.chosen, pool.user_index, user_ids=pool.user_ids
    )
    torch.testing.assert_close(model.select_questions(flipped, 6).rows, sel.rows)
    assert sel.users == list(pool.user_ids) and sel.flat().numel() == 48
    # asked: the first pick of every user is no longer offered
    first = pool.subset(sel.rows[:, 0])
    again = model.select_questions(pool, 6, asked=first)
    assert not bool(torch.isin(sel.rows[:, 0], again.rows).any())
    # a sharper posterior changes the gains, not the rules
    post = model.weights_posterior(pool.subset(sel.flat()), users=pool.user_ids)
    later = model.select_questions(pool, 3, posterior=post)
    assert bool((later.scores[:, 0] < sel.scores[:, 0]).all())
    rand = model.select_questions(pool, 6, criterion="random", seed=3)
    assert torch.equal(rand.rows, model.select_questions(pool, 6, criterion="random", seed=3).rows)
    assert not torch.equal(rand.rows, model.select_questions(pool, 6, criterion="random").rows)


def test_active_sweep_on_a_planted_population(easy_rank3, easy_population):
    rows = active_sweep(
        easy_rank3,
        easy_population.split,
        questions=4,
        criteria=("information", "random"),
        trials=2,
        batch=2,
        pool=20,
    )
    assert [(r["criterion"], r["questions"]) for r in rows] == [
        ("information", 0),
        ("information", 2),
        ("information", 4),
        ("random", 0),
        ("random", 2),
        ("random", 4),
    ]
    start = {r["unseen_test"] for r in rows if r["questions"] == 0}
    assert len(start) == 1  # nothing asked yet: the population's weights for everyone
    for r in rows:
        assert 0.5 < r["unseen_test"] <= 1 and r["trials"] == 2 and r["pool_min"] == 20
    final = {r["criterion"]: r["unseen_test"] for r in rows if r["questions"] == 4}
    assert final["information"] > start.pop()
    # calibration per round: the planted population knows the true margins
    for r in rows:
        assert 0 < r["ece"] < 0.5 and 0 < r["coverage_90"] <= 1


def test_active_sweep_without_true_margins_reports_no_coverage(easy_rank3, easy_population):
    split = dataclasses.replace(easy_population.split, unseen_test_margins=None)
    rows = active_sweep(easy_rank3, split, questions=1, criteria=("random",), trials=1, pool=5)
    assert all(r["coverage_90"] is None and 0 < r["ece"] < 0.5 for r in rows)
    table = active_calibration_table(rows)
    assert "coverage" not in str(table.title) and len(table.columns) == 2
    short = dataclasses.replace(split, unseen_test_margins=torch.zeros(3))
    with pytest.raises(LoreError, match="unseen_test_margins has 3 rows"):
        active_sweep(easy_rank3, short, questions=1, criteria=("random",), trials=1, pool=5)
