"""The joint objective's closed-form gradient, and stops at the pooled saddle."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lore_rm import FitConfig, simulate_population
from lore_rm.fit.link import joint_weights
from lore_rm.fit.objective import JointObjective, reference_penalty
from lore_rm.fit.prior import isotropic_prior
from lore_rm.fit.saddle import spread
from lore_rm.fit.solvers import feature_scale, solve_lbfgs
from lore_rm.fit.start import initial_point


@pytest.fixture(scope="module")
def planted():
    pop = simulate_population(
        d=16, true_rank=2, n_seen=60, n_unseen=10, train_per_user=30, n_prompts=300, seed=3
    )
    data = pop.split.seen_train.to(dtype=torch.float32)
    data = data.compact(centre=True).with_user_ids(pop.split.seen_train.user_ids)
    return data, feature_scale(data, True)


@pytest.mark.parametrize("space", ["simplex", "signed"])
@pytest.mark.parametrize("extras", [False, True])
def test_the_closed_form_gradient_is_autograds(planted, space, extras):
    data, sigma = planted
    gen = torch.Generator().manual_seed(0)
    g, k = 3, 3
    rows = (torch.rand(g, data.n, generator=gen) > 0.3).float()
    basis = torch.randn(g, data.d, k, generator=gen)
    logits = torch.randn(g, data.n_users, k, generator=gen)
    decay = torch.tensor([0.1, 0.01, 1.0])
    prior = isotropic_prior(torch.full((k,), 1 / k), 0.7, space) if extras else None
    head = torch.randn(data.d, generator=gen)
    reference = (2.0, head, "cosine") if extras else None
    objective = JointObjective(
        data, sigma, rows, decay, 1.3, space, user_l2=1e-3, signed_prior=3.0,
        logit_prior=prior, reference=reference,
    )  # fmt: skip
    loss, g_basis, g_logits = objective.value_and_grad(basis, logits)

    b = basis.double().requires_grad_(True)
    lg = logits.double().requires_grad_(True)
    raw = (b / sigma.double()[None, :, None]).permute(1, 0, 2).reshape(data.d, g * k)
    z = data.to(dtype=torch.float64).project(raw).reshape(-1, g, k)
    w = joint_weights(lg, space, objective.present)[:, data.user_index, :].permute(1, 0, 2)
    m = 1.3 * (z * w).sum(-1).T
    total = rows.double().sum(1)
    ref = ((F.softplus(-m) * rows.double()).sum(1) / total).sum()
    ref = ref + 0.5 * (decay.double() * (b**2).sum((1, 2))).sum()
    if space == "simplex":
        ref = ref + 0.5 * 1e-3 * (lg**2).sum() / data.n_users
    else:
        ref = ref + (0.5 * 3.0 * (lg**2).sum((1, 2)) / total).sum()
    if prior is not None:
        diff = lg - prior.mean.double()
        ref = ref + (0.5 * ((diff @ prior.precision.double()) * diff).sum((1, 2)) / total).sum()
    if reference is not None:
        for i in range(g):
            raw_i = b[i] / sigma.double()[:, None]
            ref = ref + 2.0 * reference_penalty(raw_i, head.double(), "cosine")
    ref.backward()
    assert abs(float(loss) - float(ref.detach())) < 1e-5 * abs(float(ref.detach()))
    torch.testing.assert_close(g_basis.double(), b.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_logits.double(), lg.grad, rtol=1e-4, atol=1e-6)
    values = objective.values(basis, logits)
    assert abs(float(values.sum()) - float(loss)) < 1e-6 * abs(float(loss))


def pooled_start(data, sigma, space: str, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Every column the pooled direction (simplex) or no personal column (signed); every user
    at the population's weights: a stationary point of the joint objective."""
    unit, _ = initial_point(data, sigma, 1)
    if space == "simplex":
        basis = unit.expand(-1, k).clone()
    else:
        basis = torch.cat([unit, torch.zeros(data.d, k - 1)], 1)
    return basis[None], torch.zeros(1, data.n_users, k)


@pytest.mark.parametrize("space", ["simplex", "signed"])
def test_a_fit_started_at_the_pooled_saddle_does_not_report_convergence_there(planted, space):
    data, sigma = planted
    cfg = FitConfig.for_recipe("default", weights=space)
    basis0, logits0 = pooled_start(data, sigma, space)
    present = torch.ones(1, data.n_users, dtype=torch.bool)
    pooled = solve_lbfgs(data, sigma, basis0, logits0, [0.01], replace(cfg, n_iter=0))
    res = solve_lbfgs(data, sigma, basis0, logits0, [0.01], cfg)
    assert res.converged and res.escapes >= 1
    where = spread(res.basis, res.logits, space, present)
    assert float(where.columns[0]) > 0.1 and float(where.users[0]) > 0.1  # personalised
    # ... and far below the pooled model's loss, which a stop at the saddle would have kept
    objective_at = JointObjective(
        data, sigma, torch.ones(1, data.n), torch.tensor([0.01]), 1.0, space,
        user_l2=cfg.user_l2, signed_prior=3.0,
    )  # fmt: skip
    start = float(objective_at.values(pooled.basis, pooled.logits)[0])
    assert float(objective_at.values(res.basis, res.logits)[0]) < start - 0.05


def test_a_strong_ridge_keeps_its_pooled_minimum(planted):
    """Where the ridge makes the pooled point a minimum, the probe finds no way down and the
    stop is a verified minimum (no escape)."""
    data, sigma = planted
    cfg = FitConfig.for_recipe("default")
    basis0, logits0 = pooled_start(data, sigma, "simplex")
    res = solve_lbfgs(data, sigma, basis0, logits0, [1000.0], cfg)
    assert res.converged and res.escapes == 0


@pytest.mark.parametrize("with_prior", [False, True])
def test_best_point_zeroes_every_users_gradient(planted, with_prior):
    """The simplex fit moves the basis alone: every user's logits are solved for it (all users
    of all problems at once), so the joint gradient w.r.t. the logits vanishes there; the
    loss and basis gradient read off the users' solve are the objective's own."""
    data, sigma = planted
    gen = torch.Generator().manual_seed(1)
    g, k = 2, 3
    rows = (torch.rand(g, data.n, generator=gen) > 0.3).float()
    basis = torch.randn(g, data.d, k, generator=gen)
    prior = isotropic_prior(torch.full((k,), 1 / k), 0.7, "simplex") if with_prior else None
    objective = JointObjective(
        data, sigma, rows, torch.tensor([0.1, 0.01]), 1.3, "simplex", user_l2=1e-3,
        logit_prior=prior,
    )  # fmt: skip
    logits0 = torch.zeros(g, data.n_users, k)
    before = float(objective.value_and_grad(basis, logits0)[0])
    point, converged = objective.best_point(objective.projected(basis), logits0, 1e-5)
    loss, g_basis, g_logits = objective.value_and_grad(basis, point.logits)
    assert converged and float(g_logits.abs().max()) <= 1e-5  # float32 rounding: ~2e-6
    assert float(loss) < before
    read_loss, read_basis = objective.basis_value_and_grad(basis, point)
    assert float(read_loss) == pytest.approx(float(loss), rel=1e-9)
    torch.testing.assert_close(read_basis, g_basis, rtol=1e-5, atol=1e-7)


def test_the_point_lbfgs_stands_on_evaluates_to_the_loss_it_holds(planted):
    """Every evaluation's users start from the logits of the lowest loss evaluated so far:
    after a far trial the line search rejects (its users settled elsewhere), the basis L-BFGS
    stands on gives the loss L-BFGS holds, so a short enough step along a descent direction
    verifies its decrease."""
    from lore_rm.fit.solvers import _Parameters

    data, sigma = planted
    gen = torch.Generator().manual_seed(1)
    k = 3
    basis0, logits0 = initial_point(data, sigma, k, "spectral")
    objective = JointObjective(
        data, sigma, torch.ones(1, data.n), torch.tensor([0.01]), 1.0, "simplex"
    )
    params = _Parameters(objective, basis0[None], logits0[None], 1e-5)
    x = params.x0
    held, grad = params.fun(x)
    far = x + 50.0 * torch.randn(x.shape, generator=gen)  # a trial far away, rejected
    far_loss, _ = params.fun(far)
    assert far_loss > held
    again, grad_again = params.fun(x.clone())
    assert again == held
    assert torch.equal(grad_again, grad)
    step = -1e-3 * grad / grad.abs().max()
    assert params.fun(x + step)[0] < held
