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
"""

from __future__ import annotations

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.fit.config import FitConfig
from lore_rm.fit.link import params_of
from lore_rm.fit.posterior import logit_hessian
from lore_rm.fit.prior import LogitPrior, moment_prior
from lore_rm.fit.solvers import fit_user_weights

Tensor = torch.Tensor
EM_MAX_ITER = 20
#: stop once the prior's covariance moves by less than this (relative Frobenius norm)
EM_TOL = 1e-2


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
    card (EM iterations, the prior's standard deviations along its principal axes).
    ``start``: the EM's first prior (default: the moments of ``user_weights``' logits)."""
    counts = data.counts_per_user()
    fitted = counts > 0
    space = cfg.space
    if start is None:
        start = moment_prior(params_of(user_weights[fitted], space), space=space)
    prior = start
    projected = data.project(basis).detach()  # once: EM only moves the logits
    z = projected.to(torch.float64)
    index = data.user_index
    cov = prior.covariance()
    iterations = 0
    while iterations < EM_MAX_ITER:
        iterations += 1
        weights = fit_user_weights(
            data, basis, scale, cfg, population_weights, prior=prior, projected=projected
        )
        h = logit_hessian(z, weights.to(torch.float64), index, scale, prior.precision, space=space)
        post = torch.linalg.inv(0.5 * (h + h.transpose(1, 2)))[fitted]
        prior = moment_prior(params_of(weights[fitted], space), post.mean(0), space)
        new_cov = prior.covariance()
        change = float(torch.linalg.norm(new_cov - cov) / torch.linalg.norm(cov))
        cov = new_cov
        if change < EM_TOL:
            break
    k = prior.k
    if space == "simplex":
        centre = torch.eye(k, dtype=torch.float64) - 1.0 / k
        axes = torch.linalg.eigvalsh(centre @ cov @ centre)[1:].clamp_min(0).sqrt()
    else:
        axes = torch.linalg.eigvalsh(cov).clamp_min(0).sqrt()
    history = {
        "kind": "learned",
        "em_iterations": iterations,
        "users": int(fitted.sum()),
        "mean_logits": [round(float(v), 6) for v in prior.mean],
        "axis_std": [round(float(v), 6) for v in axes.flip(0)],
    }
    return prior, history
