"""Seen users shrunk toward the population as far as their data says (a hierarchical model).

The joint fit alone gives every seen user free weights: with 15 comparisons they fit noise,
and where users mostly agree their own weights lose to the population's mean weights
(measured in docs/measurements.md). Here the seen users' logits get the same logistic-normal prior
new users get, learned from them by empirical Bayes, inside the joint fit:

1. from the joint fit's basis, learn the prior ``N(mu, Sigma)`` by Laplace EM
   (:func:`lore_rm.fit.empirical_bayes.learn_prior`);
2. refit basis and logits jointly with every user's negative log prior added to the loss (the
   joint MAP, warm-started from the last fit's point; not from its L-BFGS curvature pairs,
   which saved a third of the iterations but made the result depend on the thread count,
   docs/measurements.md);
3. repeat while the prior's covariance still moves (at most ``ROUNDS`` refits).

A user with a handful of comparisons ends near ``mu``; one with a thousand keeps their own
weights. The prior of the last round, re-learned on the final basis, is the model's few-shot
prior for new users, so seen and new users are fitted under one model.
"""

from __future__ import annotations

import warnings

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.errors import ConvergenceWarning, LoreError
from lore_rm.fit.config import FitConfig
from lore_rm.fit.empirical_bayes import learn_prior
from lore_rm.fit.link import joint_params, joint_weights
from lore_rm.fit.prior import LogitPrior
from lore_rm.fit.solvers import JointFit, feature_scale, solve_lbfgs

Tensor = torch.Tensor
#: signed weights keep the fixed isotropic prior of the joint fit (lore_rm.fit.solvers
#: .signed_prior): with the ridge on the basis, a learned prior trades the scale of the basis
#: columns against the scale of the users' offsets without end
SIGNED_WHY = "signed weights keep the joint fit's fixed prior"
ROUNDS = 4
#: stop once the prior's covariance moves by less than this (relative Frobenius norm)
ROUND_TOL = 0.05


def shrink_seen_users(
    data: Comparisons,
    fit: JointFit,
    cfg: FitConfig,
    reference_head: Tensor | None = None,
    sigma: Tensor | None = None,
) -> tuple[JointFit, LogitPrior | None, dict]:
    """Alternate prior (EM) and joint MAP from ``fit``; returns the new fit, the prior learned
    on its basis (None where none can be learned) and a history entry. ``sigma`` is
    :func:`feature_scale` of ``data`` where the caller already has it."""
    k = fit.basis.shape[1]
    fitted = data.counts_per_user() > 0
    if k < 2 or int(fitted.sum()) < 2:
        return fit, None, {"rounds": 0, "why": "one basis column or fewer than 2 users"}
    if cfg.space == "signed":
        return fit, None, {"rounds": 0, "why": SIGNED_WHY}
    sigma = feature_scale(data, cfg.standardize) if sigma is None else sigma
    weight_decay = float(cfg.weight_decay)  # resolved by the caller
    prior: LogitPrior | None = None
    rounds, iterations, moved = 0, 0, float("nan")
    try:
        while True:
            population = fit.user_weights[fitted].mean(0)
            new, prior_history = learn_prior(
                data, fit.basis, cfg.scale, cfg, fit.user_weights, population, start=prior
            )
            if prior is not None:
                old_cov = prior.covariance()
                moved = float(torch.linalg.norm(new.covariance() - old_cov) / old_cov.norm())
            prior = new  # learned on the current basis
            if rounds == ROUNDS or (rounds > 0 and moved < ROUND_TOL):
                break
            rounds += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                res = solve_lbfgs(
                    data,
                    sigma,
                    (fit.basis * sigma[:, None])[None],
                    joint_params(fit.user_weights, cfg.space)[None],
                    [weight_decay],
                    cfg,
                    reference_head,
                    logit_prior=prior,
                    desc="joint fit under the learned prior",
                )
            iterations += res.iterations
            weights = joint_weights(res.logits[0], cfg.space)
            fit = JointFit(res.basis[0] / sigma[:, None], weights, fit.history)
    except LoreError as exc:  # the users' logits do not vary: nothing to shrink toward
        return fit, None, {"rounds": rounds, "why": str(exc)}
    history = {
        "rounds": rounds,
        # False: the round cap stopped it while the prior still moved by ROUND_TOL or more
        "converged": rounds < ROUNDS or moved < ROUND_TOL,
        "iterations": iterations,
        "last_change": None if moved != moved else round(moved, 4),
        "prior": prior_history,
    }
    return fit, prior, history
