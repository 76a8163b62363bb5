"""Laplace posterior of users' logits: Hessian, covariance, reward std, probit probabilities."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lore_rm import Comparisons, LoreError, LowRankReward, UnknownUserError, simulate_population
from lore_rm.evaluate import sample_shots
from lore_rm.fit.posterior import (
    WeightsPosterior,
    covariance_from_hessian,
    logit_hessian,
    probit_proba,
)
from lore_rm.metrics import expected_calibration_error


def _neg_log_posterior(z, scale, lam, centre, linear_at=None):
    """One user's objective in theta: BT loss of rows z plus the Gaussian prior.

    ``linear_at``: linearise the margin in theta there (its Hessian is the Gauss–Newton one).
    """

    def margin(theta):
        return scale * (z * theta.softmax(-1)).sum(-1)

    if linear_at is not None:
        # d margin / d theta at linear_at, rows (rows, K): scale * J_softmax^T z
        w = linear_at.softmax(-1)
        slope = scale * (z @ (torch.diag(w) - torch.outer(w, w)))
        at = margin(linear_at)

    def f(theta):
        m = margin(theta) if linear_at is None else at + slope @ (theta - linear_at)
        return F.softplus(-m).sum() + 0.5 * lam * ((theta - centre) ** 2).sum()

    return f


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    k=st.integers(1, 5),
    n_users=st.integers(1, 4),
    lam=st.floats(0.01, 10.0),
    scale=st.floats(0.1, 3.0),
)
def test_batched_hessian_equals_autograd(seed, k, n_users, lam, scale):
    g = torch.Generator().manual_seed(seed)
    n = 12
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    users = torch.randint(n_users, (n,), generator=g)
    theta = 2 * torch.randn(n_users, k, generator=g, dtype=torch.float64)
    weights = theta.softmax(-1)
    centre = torch.randn(k, generator=g, dtype=torch.float64)
    for kind in ("exact", "gauss-newton"):
        h = logit_hessian(z, weights, users, scale, lam, hessian=kind)
        for u in range(n_users):
            zu = z[users == u]
            at = None if kind == "exact" else theta[u]
            want = torch.autograd.functional.hessian(
                _neg_log_posterior(zu, scale, lam, centre, at), theta[u]
            )
            torch.testing.assert_close(h[u], want, rtol=1e-9, atol=1e-9)
            # the softmax's null direction carries the prior's precision alone
            ones = torch.ones(k, dtype=torch.float64)
            torch.testing.assert_close(h[u] @ ones, lam * ones, rtol=1e-9, atol=1e-9)
        cov = covariance_from_hessian(h, lam, kind)
        if kind == "gauss-newton":
            eye = torch.eye(k, dtype=torch.float64).expand_as(h)
            torch.testing.assert_close(h @ cov, eye, rtol=1e-7, atol=1e-7)
        assert bool((torch.linalg.eigvalsh(cov) <= 1 / lam + 1e-9).all())


def test_posterior_tightens_as_answers_accumulate(easy_rank3, easy_population):
    pool = easy_population.split.unseen_fewshot  # 30 per new user
    model = easy_rank3.copy().personalize(pool)
    fixed, refit = [], []
    for shots in (0, 1, 3, 10, 30):
        data = sample_shots(pool, shots, torch.Generator().manual_seed(0))  # nested draws
        # at fixed weights, more rows only add curvature: every trace shrinks
        post = model.weights_posterior(data, users=pool.user_ids)
        assert post.users == list(pool.user_ids) or shots > 0
        order = torch.tensor([post.users.index(u) for u in pool.user_ids])
        fixed.append(post.covariance[order].diagonal(dim1=1, dim2=2).sum(-1))
        # refitted on those rows: the Laplace centre moves too, so compare the means
        m = easy_rank3.copy()
        if shots:
            m.personalize(data)
        post = m.weights_posterior(data, users=pool.user_ids, unknown="mean")
        refit.append(float(post.covariance.diagonal(dim1=1, dim2=2).sum(-1).mean()))
    prior = model.few_shot_prior().covariance()
    torch.testing.assert_close(fixed[0], torch.full_like(fixed[0], float(prior.trace())))
    for before, after in zip(fixed, fixed[1:], strict=False):
        assert bool((after <= before + 1e-9).all())
    assert all(b > a for a, b in zip(refit[1:], refit, strict=False)), refit


def test_reward_std_vanishes_under_a_strong_prior(easy_rank3, easy_population):
    split = easy_population.split
    model = easy_rank3.copy().personalize(split.unseen_fewshot)
    e = split.unseen_test.table[:50]
    users = [model.users_[i % len(model.users_)] for i in range(50)]
    plain = model.reward(e, users)
    stds = []
    for lam in (1.0, 1e2, 1e4, 1e8):
        post = model.weights_posterior(
            split.unseen_fewshot, users=model.users_, prior_precision=lam
        )
        r, s = model.reward(e, users, return_std=True, posterior=post)
        assert torch.equal(r, plain)  # the reward itself is unchanged
        assert bool((s >= 0).all())
        stds.append(float(s.max()))
    assert stds == sorted(stds, reverse=True)
    assert stds[-1] < 1e-3 * max(stds[0], 1e-12)
    # in the limit the std is the prior's: it shrinks as 1 / sqrt(precision)
    post = model.weights_posterior(split.unseen_fewshot, users=model.users_, prior_precision=1e8)
    _, s8 = model.reward(e, users, return_std=True, posterior=post)
    post = model.weights_posterior(split.unseen_fewshot, users=model.users_, prior_precision=1e10)
    _, s10 = model.reward(e, users, return_std=True, posterior=post)
    torch.testing.assert_close(s10 * 10, s8, rtol=1e-3, atol=1e-9)


def test_predict_proba_with_posterior_is_closer_to_half(easy_rank3, easy_population):
    split = easy_population.split
    few = sample_shots(split.unseen_fewshot, 3, torch.Generator().manual_seed(1))
    model = easy_rank3.copy().personalize(few)
    post = model.weights_posterior(few)
    test = split.unseen_test
    plain = model.predict_proba(test)
    torch.testing.assert_close(plain, torch.sigmoid(model.margins(test)))  # unchanged
    bayes = model.predict_proba(test, posterior=post)
    assert bayes.shape == plain.shape and bool(torch.isfinite(bayes).all())
    assert bool(((bayes - 0.5).abs() <= (plain - 0.5).abs() + 1e-6).all())
    assert float((plain - 0.5).abs().mean() - (bayes - 0.5).abs().mean()) > 0.01
    assert bool((torch.sign(bayes - 0.5) == torch.sign(plain - 0.5)).all())


def test_probit_limits():
    mean = torch.tensor([-3.0, 0.0, 2.0])
    torch.testing.assert_close(probit_proba(mean, torch.zeros(3)), torch.sigmoid(mean))
    wide = probit_proba(mean, torch.full((3,), 1e6))
    torch.testing.assert_close(wide, torch.full((3,), 0.5), atol=1e-5, rtol=0)


def test_users_and_errors(easy_rank3, easy_population):
    split = easy_population.split
    model = easy_rank3.copy()
    seen = split.seen_train
    post = model.weights_posterior(seen, users=["nobody"], unknown="mean")
    assert post.users[-1] == "nobody" and int(post.n_comparisons[-1]) == 0
    k = model.n_components_
    torch.testing.assert_close(post.covariance[-1], model.few_shot_prior().covariance())
    torch.testing.assert_close(post.weights[-1], model.population_weights_)
    assert post.covariance.shape == (len(seen.user_ids) + 1, k, k)
    assert post.weights.shape == (len(seen.user_ids) + 1, k)
    # a None user (population weights) gets the prior; a seen user must be in the posterior
    e = seen.table[:2]
    _, s = model.reward(e, [None, None], return_std=True, posterior=post, unknown="mean")
    assert bool((s > 0).all())
    part = model.weights_posterior(seen.subset(seen.user_index == 0))
    with pytest.raises(UnknownUserError, match="not in the posterior"):
        model.reward(e, [model.users_[1]] * 2, return_std=True, posterior=part)
    with pytest.raises(LoreError, match="needs a posterior"):
        model.reward(e, [model.users_[0]] * 2, return_std=True)
    with pytest.raises(LoreError, match="positive prior precision"):
        model.weights_posterior(seen, prior_precision=0.0)
    with pytest.raises(LoreError, match="positive prior precision"):
        paper = easy_rank3.copy()
        paper.recipe = "paper"
        paper.weights_posterior(seen)
    with pytest.raises(LoreError, match="hessian must be"):
        model.weights_posterior(seen, hessian="fisher")
    exact = model.weights_posterior(seen, hessian="exact")
    assert bool((torch.linalg.eigvalsh(exact.covariance) > 0).all())


def test_rank_one_has_no_reward_uncertainty():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(10, 4, generator=g)
    data = Comparisons.from_pairs(
        table, torch.arange(0, 5), torch.arange(5, 10), [0, 0, 1, 1, 1], user_ids=["a", "b"]
    )
    model = LowRankReward.from_arrays(torch.randn(4, 1, generator=g), torch.ones(2, 1), ["a", "b"])
    post = model.weights_posterior(data)
    _, s = model.reward(table, ["a"] * 10, return_std=True, posterior=post)
    assert torch.equal(s, torch.zeros(10))


def test_demo_population_calibration():
    """ECE of new users' probabilities, plain and integrated over the posterior (printed into
    the captured output, shown with ``pytest -rP``; no threshold: see
    bench/posterior_calibration.py)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from posterior_calibration import calibration

    split = simulate_population(seed=0).split
    model = LowRankReward(rank=4).fit(split.seen_train, split.reference_head)
    rows = [calibration(model, split.unseen_fewshot, split.unseen_test, s) for s in (2, 20)]
    for r in rows:
        print(
            f"[demo population, {r['shots']} shots] ECE plain {r['ece_plain']:.4f}, "
            f"with posterior {r['ece_posterior']:.4f} (accuracy {r['accuracy']:.4f})"
        )
    for r in rows:
        assert 0 <= r["ece_plain"] <= 0.5 and 0 <= r["ece_posterior"] <= 0.5
        assert math.isfinite(r["mean_trace"])
    assert rows[0]["mean_trace"] > rows[1]["mean_trace"]


def test_expected_calibration_error():
    assert expected_calibration_error(torch.ones(10)) == 0.0  # always right, sure
    assert abs(expected_calibration_error(torch.full((10,), 0.8)) - 0.2) < 1e-6
    assert abs(expected_calibration_error(torch.full((10,), 0.3)) - 0.7) < 1e-6
    assert math.isnan(expected_calibration_error(torch.zeros(0)))


def test_weights_std_is_the_delta_method_through_the_softmax():
    """std of each weight = sqrt(diag(J S J^T)) with J the autograd Jacobian of s softmax."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mass = torch.tensor([1.0, 1.0, 0.7], dtype=torch.float64)
    a = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(4, dtype=torch.float64)
    weights = mass[:, None] * torch.softmax(theta, -1)
    post = WeightsPosterior(["a", "b", "c"], weights, cov, torch.zeros(3), torch.eye(4))
    for u in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda t, u=u: mass[u] * torch.softmax(t, -1), theta[u]
        )
        expected = torch.diagonal(jac @ cov[u] @ jac.T).sqrt()
        torch.testing.assert_close(post.weights_std()[u], expected)
