"""Learning the few-shot prior from the seen users (empirical Bayes, Laplace EM).

With the basis frozen, the seen users are a sample from the population of users: their
logits are drawn from the prior ``N(mu, Sigma)`` and their comparisons from Bradley–Terry.
The EM below maximises the (Laplace-approximated) marginal likelihood of their comparisons
over ``(mu, Sigma)``:

* E-step: every seen user's MAP logits under the current prior (one batched L-BFGS, the
  few-shot fit) and their Laplace covariance ``H_u^-1`` (batched K x K inverses);
* M-step: ``mu`` = the mean of the MAPs, ``Sigma`` = their spread plus the mean ``H_u^-1``.

Adding the posterior covariances is what allows for each seen user's own estimation noise:
a user with few comparisons is shrunk toward ``mu`` and their uncertainty is put back into
``Sigma`` instead of being lost. The start is the spread of the joint fit's weights.

Where users' data is weak against the prior (most users, where they mostly agree) plain EM
crawls: each step moves ``Sigma`` by a few percent of what is left, so a stop on a small
step is far from the fixed point. The covariance's steps are therefore extrapolated
(SQUAREM: two EM steps, a step along their secant, one EM step to stabilise) in ``log
Sigma``, where every extrapolation is a valid covariance, and the EM stops when the
covariance's distance still to go, estimated from the steps' rate of contraction, is below
``EM_TOL``. The mean is not extrapolated nor waited for: along directions the users'
comparisons do not pin down (columns that agreeing users weigh alike) it drifts without end,
and chasing it took new users' prior mean to logits of +-4 at rank 6 on agreeing text, with
the seen users' shrinkage then running out its rounds.
"""

from __future__ import annotations

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.fit.config import FitConfig
from lore_rm.fit.link import params_of
from lore_rm.fit.posterior import logit_hessian
from lore_rm.fit.prior import LogitPrior, centred_basis, moment_prior, precision_from_covariance
from lore_rm.fit.solvers import fit_user_weights

Tensor = torch.Tensor
EM_MAX_ITER = 20  # EM steps (E and M), the extrapolations' stabilising steps included
#: stop once the covariance's distance to its fixed point in log Sigma, estimated from the last
#: two steps and their rate of contraction, is below this
EM_TOL = 1e-2
MAX_CONTRACTION = 0.95  # a rate estimate above this is taken as this (noise, not a stall)


class _LogCovariance:
    """A prior's covariance as one vector: its matrix logarithm on the subspace the prior
    lives on (centred logits for simplex weights), where every extrapolation is valid."""

    def __init__(self, k: int, space: str) -> None:
        self.space = space
        self.b = centred_basis(k) if space == "simplex" else torch.eye(k, dtype=torch.float64)

    def of(self, prior: LogitPrior) -> Tensor:
        inner = self.b.T @ prior.covariance() @ self.b
        vals, vecs = torch.linalg.eigh(0.5 * (inner + inner.T))
        return ((vecs * vals.clamp_min(1e-300).log()) @ vecs.T).reshape(-1)

    def prior(self, theta: Tensor, mean: Tensor) -> LogitPrior:
        m = self.b.shape[1]
        log_cov = theta.reshape(m, m)
        vals, vecs = torch.linalg.eigh(0.5 * (log_cov + log_cov.T))
        sigma = self.b @ ((vecs * vals.exp()) @ vecs.T) @ self.b.T
        return LogitPrior(mean, precision_from_covariance(sigma, self.space), "learned", self.space)


def learn_prior(
    data: Comparisons,
    basis: Tensor,
    scale: float,
    cfg: FitConfig,
    user_weights: Tensor,
    population_weights: Tensor,
    *,
    start: LogitPrior | None = None,
) -> tuple[LogitPrior, dict]:
    """The learned prior from the seen users' comparisons ``data`` (compact, centred, one
    user per ``user_weights`` row) with ``basis`` frozen, and a small history for the model
    card (EM steps, the prior's standard deviations along its principal axes).
    ``start``: the EM's first prior (default: the moments of ``user_weights``' logits)."""
    counts = data.counts_per_user()
    fitted = counts > 0
    space = cfg.space
    if start is None:
        start = moment_prior(params_of(user_weights[fitted], space), space=space)
    projected = data.project(basis).detach()  # once: EM only moves the logits
    z = projected.to(torch.float64)
    index = data.user_index
    steps = 0

    def em_step(prior: LogitPrior) -> LogitPrior:
        nonlocal steps
        steps += 1
        weights = fit_user_weights(
            data, basis, scale, cfg, population_weights, prior=prior, projected=projected
        )
        h = logit_hessian(z, weights.to(torch.float64), index, scale, prior.precision, space=space)
        post = torch.linalg.inv(0.5 * (h + h.transpose(1, 2)))[fitted]
        return moment_prior(params_of(weights[fitted], space), post.mean(0), space)

    coords = _LogCovariance(start.k, space)
    prior, theta = start, coords.of(start)
    longest = 4.0  # the longest extrapolation (alpha), grown fourfold while it is reached
    converged = False
    while steps + 2 <= EM_MAX_ITER:
        p1 = em_step(prior)
        theta1 = coords.of(p1)
        if float((theta1 - theta).norm()) < EM_TOL * (1.0 - MAX_CONTRACTION):
            prior, converged = p1, True  # no rate is needed to tell a step this short
            break
        p2 = em_step(p1)
        theta2 = coords.of(p2)
        r, v = theta1 - theta, theta2 - 2.0 * theta1 + theta
        first, last = float(r.norm()), float((theta2 - theta1).norm())
        rate = min(last / first, MAX_CONTRACTION) if first > 0 else 0.0
        base, prior, theta = theta, p2, theta2
        if last / (1.0 - rate) < EM_TOL:
            converged = True
            break
        alpha = -first / float(v.norm()) if float(v.norm()) > 0 else -1.0
        alpha = max(min(alpha, -1.0), -longest)
        if alpha == -longest:
            longest *= 4.0
        if alpha < -1.0 and steps < EM_MAX_ITER:  # alpha = -1 is p2 itself
            jump = coords.prior(base - 2.0 * alpha * r + alpha * alpha * v, p2.mean)
            prior = em_step(jump)
            theta = coords.of(prior)
    cov = prior.covariance()
    k = prior.k
    if space == "simplex":
        centre = torch.eye(k, dtype=torch.float64) - 1.0 / k
        axes = torch.linalg.eigvalsh(centre @ cov @ centre)[1:].clamp_min(0).sqrt()
    else:
        axes = torch.linalg.eigvalsh(cov).clamp_min(0).sqrt()
    history = {
        "kind": "learned",
        "em_iterations": steps,
        "em_converged": converged,
        "users": int(fitted.sum()),
        "mean_logits": [round(float(v), 6) for v in prior.mean],
        "axis_std": [round(float(v), 6) for v in axes.flip(0)],
    }
    return prior, history
