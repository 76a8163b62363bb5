"""The new-user fit's default solver: every user's damped Newton steps at once."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lore_rm import Comparisons, FitConfig
from lore_rm.fit.link import weights_of
from lore_rm.fit.objective import saddle_free_step
from lore_rm.fit.prior import isotropic_prior
from lore_rm.fit.solvers import fit_user_weights


def _problem(k: int, users: int = 30, per_user: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(users * per_user, k, generator=g)
    index = torch.arange(users).repeat_interleave(per_user)
    data = Comparisons.from_features(z, index, user_ids=[f"u{i}" for i in range(users)])
    return data, torch.eye(k)


def _map_gradient(data, prior, logits, space, scale):
    """Every user's gradient of their summed loss plus negative log prior (autograd)."""
    lg = logits.double().clone().requires_grad_(True)
    w = weights_of(lg, space)
    z = data.project(torch.eye(lg.shape[1])).double()
    m = scale * (z * w[data.user_index]).sum(-1)
    diff = lg - prior.mean.double()
    loss = F.softplus(-m).sum() + 0.5 * ((diff @ prior.precision.double()) * diff).sum()
    (grad,) = torch.autograd.grad(loss, lg)
    return grad


@pytest.mark.parametrize("space", ["simplex", "signed"])
def test_newton_finds_the_map_the_lbfgs_solver_finds(space):
    data, basis = _problem(3)
    cfg = replace(FitConfig.for_recipe("default"), weights=space)
    population = torch.tensor([0.5, 0.3, 0.2]) if space == "simplex" else torch.tensor([1.0, 0, 0])
    prior = isotropic_prior(population, 2.0, space)
    newton = fit_user_weights(data, basis, 1.0, cfg, population, prior=prior)
    lbfgs = fit_user_weights(
        data,
        basis,
        1.0,
        replace(cfg, fewshot_solver="lbfgs", fewshot_n_iter=500),
        population,
        prior=prior,
    )
    torch.testing.assert_close(newton, lbfgs, atol=2e-3, rtol=0)
    if space == "simplex":
        torch.testing.assert_close(newton.sum(1), torch.ones(data.n_users))
        logits = newton.double().log()
        logits = logits - logits.mean(1, keepdim=True)
    else:
        logits = newton.double()
    assert float(_map_gradient(data, prior, logits, space, 1.0).abs().max()) < 1e-4


def test_each_user_may_have_a_prior_mean_of_their_own():
    data, basis = _problem(2, users=4, per_user=6)
    cfg = FitConfig.for_recipe("default")
    means = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.2, 0.8]])
    strong = [isotropic_prior(m, 1e6) for m in means]
    prior = replace(strong[0], mean=torch.stack([p.mean for p in strong]))
    w = fit_user_weights(data, basis, 1.0, cfg, means, prior=prior)
    torch.testing.assert_close(w, means, atol=1e-3, rtol=0)  # a very strong prior wins
    empty = Comparisons.from_features(
        torch.randn(2, 2), [0, 0], user_ids=["a", "b", "c", "d"]
    )  # users b, c, d have no comparisons: each keeps their own population row
    w = fit_user_weights(empty, basis, 1.0, cfg, means, prior=prior)
    torch.testing.assert_close(w[1:], means[1:])


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    shift=st.floats(-2.0, 2.0),
    seed=st.integers(0, 2**16),
)
def testsaddle_free_step_is_the_absolute_eigenvalue_step(k, shift, seed):
    """The Cholesky fast path gives the step of ``|H|``: the eigenvectors of ``H`` with the
    absolute values of its eigenvalues (floored at 1e-9), for positive definite and
    indefinite Hessians alike, batched."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 7, k, k, generator=g, dtype=torch.float64)
    hess = a @ a.transpose(-1, -2) / k + shift * torch.eye(k, dtype=torch.float64)
    grad = torch.randn(2, 7, k, generator=g, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(hess)
    vals = vals.abs().clamp_min(1e-9)
    expected = -(vecs @ ((vecs.transpose(-1, -2) @ grad[..., None]) / vals[..., None]))[..., 0]
    step = saddle_free_step(hess, grad)
    scale = 1.0 + float(expected.abs().max())
    assert float((step - expected).abs().max()) <= 1e-8 * scale / max(float(vals.min()), 1e-3)
