"""The core model: recovery, invariants, equivalences, determinism."""

import numpy as np
import pytest
import torch
from naive_published import naive_fewshot, naive_joint_fit
from scipy.optimize import minimize

from lore_rm import Comparisons, LowRankReward, four_numbers
from lore_rm.fit import fit_user_weights


def test_planted_structure_is_recovered(easy_population, easy_rank3):
    pop, split = easy_population, easy_population.split
    model = easy_rank3
    res = four_numbers(model, split)
    oracle = pop.oracle
    assert res["unseen_test"] > oracle["unseen_test"] - 0.04
    assert res["seen_test"] > oracle["seen_test"] - 0.04
    # personalisation must beat the pooled model by a clear margin on this population
    pooled = four_numbers(LowRankReward(rank=1).fit(split.seen_train), split)
    assert res["unseen_test"] > pooled["unseen_test"] + 0.05
    # the default recipe does not overfit: test within a few points of train
    assert res["train"] - res["seen_test"] < 0.05


def test_learned_basis_spans_the_true_basis(easy_population, easy_rank3):
    # (the reference head plays no part in the fit without alpha)
    model = easy_rank3
    q_true, _ = torch.linalg.qr(easy_population.true_basis)
    q_fit, _ = torch.linalg.qr(model.basis_)
    # cosines of principal angles between the two subspaces (1 = same subspace)
    # measured in the whitened embedding space would be stricter; raw space suffices here
    cosines = torch.linalg.svdvals(q_true.T @ q_fit)
    assert cosines.min() > 0.8


def _user_losses(model, data):
    """Each user's mean Bradley-Terry log-loss under the model's current weights."""
    loss = torch.nn.functional.softplus(-model.margins(data)).double()
    u = data.user_index
    return torch.bincount(u, weights=loss, minlength=data.n_users) / torch.bincount(
        u, minlength=data.n_users
    )


def test_fewshot_fit_beats_the_population_weights_for_every_user(easy_population):
    # the few-shot objective starts at the population's weights and adds a prior that is zero
    # there, so each user's own training loss can only go down: a wrong sign, a wrong user
    # mapping or a wrong basis would break this
    split = easy_population.split
    # calibrate=False: the losses below are in the units the few-shot fit minimises
    model = LowRankReward(rank=4, n_iter=50, calibrate=False).fit(split.seen_train)
    few = split.unseen_fewshot
    population = LowRankReward.from_arrays(
        model.basis_,
        model.population_weights_.expand(few.n_users, -1),
        few.user_ids,
        scale=model.scale_,
    )
    model.personalize(few)
    before, after = _user_losses(population, few), _user_losses(model, few)
    assert (after <= before + 1e-6).all()
    assert (after < before - 1e-3).float().mean() > 0.9  # and it really learns something


def test_paper_pruning_drops_columns_without_renormalising(easy_population):
    split = easy_population.split
    model = LowRankReward(rank=6, recipe="paper", n_iter=100, prune_threshold=0.3)
    model.fit(split.seen_train)
    assert model.n_components_ < 6
    assert (model.user_weights_.max(0).values >= 0.3).all()
    assert model.user_weights_.sum(1).max() <= 1.0 + 1e-6
    assert model.user_weights_.sum(1).min() < 1.0 - 1e-6


def _pooled_logistic(x: np.ndarray, lam: float, sigma: np.ndarray) -> np.ndarray:
    """Plain pooled logistic regression (no intercept) with an L2 penalty on sigma * v."""

    def f(v):
        m = x @ v
        loss = np.logaddexp(0, -m).mean() + 0.5 * lam * ((sigma * v) ** 2).sum()
        grad = -(x * (1 / (1 + np.exp(m)))[:, None]).mean(0) + lam * sigma**2 * v
        return loss, grad

    return minimize(
        f,
        np.zeros(x.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-14},
    ).x


@pytest.mark.parametrize("standardize", [True, False])
def test_rank_one_is_pooled_logistic_regression(easy_population, standardize):
    data = easy_population.split.seen_train
    lam = 1e-2
    model = LowRankReward(
        rank=1, validation_fraction=0.0, weight_decay=lam, standardize=standardize, n_iter=2000
    ).fit(data)
    x = data.feature_rows(0, data.n, torch.float64).numpy()
    sigma = np.sqrt((x**2).mean(0)) if standardize else np.ones(x.shape[1])
    v = _pooled_logistic(x, lam, sigma)
    ours = model.basis_[:, 0].double().numpy() * model.scale_
    np.testing.assert_allclose(ours, v, rtol=2e-3, atol=2e-3 * np.abs(v).max())
    torch.testing.assert_close(model.user_weights_, torch.ones(data.n_users, 1))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["default", "paper"])
def test_shared_offset_changes_nothing(easy_population, recipe):
    """A constant added to every reward (a shared shift of every embedding) is invisible.

    Embeddings are rounded to multiples of 2**-10 and shifted by integers, so shifted
    differences are exact in float32: from dense features the fit must be bit-identical;
    from the table form (projections of shifted rows) equal up to rounding.
    """
    split = easy_population.split
    data = split.seen_train
    table = torch.round(data.table * 1024) / 1024
    offset = torch.randint(-50, 50, (data.d,), generator=torch.Generator().manual_seed(1))
    shifted_table = table + offset

    def dense(t):
        return Comparisons.from_features(
            t[data.chosen] - t[data.rejected], data.user_index, user_ids=data.user_ids
        )

    def pairs(t):
        return Comparisons.from_pairs(
            t, data.chosen, data.rejected, data.user_index, user_ids=data.user_ids
        )

    a = LowRankReward(rank=2, recipe=recipe, n_iter=60).fit(dense(table))
    b = LowRankReward(rank=2, recipe=recipe, n_iter=60).fit(dense(shifted_table))
    assert torch.equal(a.user_weights_, b.user_weights_) and torch.equal(a.basis_, b.basis_)
    c = LowRankReward(rank=2, recipe=recipe, n_iter=60).fit(pairs(shifted_table))
    # rounding differences can move a non-convex solver to a slightly different optimum
    assert abs(a.score(split.seen_test) - c.score(split.seen_test)) < 0.01
    ma, mc = a.margins(split.seen_test), c.margins(split.seen_test)
    assert ((ma > 0) == (mc > 0)).float().mean() > 0.97
    # rewards move by a per-user constant; their differences (the margins) do not
    users = data.users_of_rows()[:50]
    ch, rj = data.chosen[:50], data.rejected[:50]
    diff_base = a.reward(table[ch], users) - a.reward(table[rj], users)
    diff_shift = a.reward(shifted_table[ch], users) - a.reward(shifted_table[rj], users)
    torch.testing.assert_close(diff_base, diff_shift, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        diff_base, a.margins(pairs(table).subset(torch.arange(50))), atol=1e-3, rtol=1e-3
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["default", "paper"])
def test_seeded_runs_repeat_exactly(easy_population, recipe):
    data = easy_population.split.seen_train
    a = LowRankReward(rank=3, recipe=recipe, seed=5, n_iter=40).fit(data)
    b = LowRankReward(rank=3, recipe=recipe, seed=5, n_iter=40).fit(data)
    assert torch.equal(a.basis_, b.basis_) and torch.equal(a.user_weights_, b.user_weights_)
    if recipe == "paper":  # random start: another seed, another fit
        c = LowRankReward(rank=3, recipe=recipe, seed=6, n_iter=40).fit(data)
        assert not torch.equal(a.basis_, c.basis_)


def test_table_and_dense_forms_fit_identically(easy_population):
    data = easy_population.split.seen_train
    dense = Comparisons.from_features(
        data.feature_rows(0, data.n), data.user_index, user_ids=data.user_ids
    )
    a = LowRankReward(rank=2, recipe="paper", n_iter=20).fit(data)
    b = LowRankReward(rank=2, recipe="paper", n_iter=20).fit(dense)
    torch.testing.assert_close(a.basis_, b.basis_, atol=1e-3, rtol=1e-3)


def test_paper_recipe_matches_the_naive_published_loop(easy_population):
    data = easy_population.split.seen_train.subset(torch.arange(600)).compact()
    x = data.feature_rows(0, data.n)
    v_ref = easy_population.split.reference_head
    model = LowRankReward(rank=3, recipe="paper", n_iter=30, alpha=5.0, prune_threshold=None)
    model.fit(data, v_ref)
    basis, weights = naive_joint_fit(
        x, data.user_index, data.n_users, 3, n_iter=30, alpha=5.0, v_ref=v_ref
    )
    torch.testing.assert_close(model.basis_, basis, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.user_weights_, weights, atol=1e-4, rtol=1e-4)


def test_paper_fewshot_matches_per_user_loop(easy_population):
    split = easy_population.split
    model = LowRankReward(rank=3, recipe="paper", n_iter=30, prune_threshold=None)
    model.fit(split.seen_train)
    few = split.unseen_fewshot.subset(split.unseen_fewshot.user_index < 5).compact()
    ours = fit_user_weights(
        few, model.basis_, model.scale_, model.config, model.population_weights_
    )
    naive = naive_fewshot(
        few.feature_rows(0, few.n), few.user_index, few.n_users, model.basis_, n_iter=500, lr=0.1
    )
    torch.testing.assert_close(ours, naive, atol=1e-4, rtol=1e-4)
