"""Laplace approximation of each user's posterior over their logits (issue #9).

A user's weights are ``w = s * softmax(theta)`` (``s = 1``, or the row's mass after pruning)
and the few-shot fit is the MAP of ``theta`` under the Bradley–Terry likelihood of their
comparisons and the prior ``N(mu, I / prior_precision)``. Around the fitted weights the
posterior of ``theta`` is approximated by ``N(theta_hat, H^-1)`` where ``H`` is the Hessian of
the negative log posterior:

    H = sum over the user's rows of [p (1 - p) g g^T  - (1 - p) s * d2(m)]  +  prior_precision I

with ``m = scale * z @ w(theta)`` the row's margin, ``z = x @ V``, ``p = sigmoid(m)`` and
``g = dm/dtheta = scale * w * (z - p_w . z)`` (``p_w = w / s``). ``"gauss-newton"`` keeps the
first term only (always positive semi-definite); ``"exact"`` adds the second.

The softmax is unchanged along the all-ones direction, so the likelihood has no curvature
there: ``H @ 1 = prior_precision * 1`` exactly, and a positive prior precision is what makes
``H`` invertible. That direction's variance (the prior's) moves no weight and no reward: every
delta-method gradient below is orthogonal to it. Everything is batched over users (rows are
summed into their user with ``index_add_``); there is no Python loop over users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lore_rm.errors import LoreError
from lore_rm.fit.link import weight_gradient

Tensor = torch.Tensor
HESSIANS = ("gauss-newton", "exact")
CHUNK = 65536  # rows per (rows, K, K) block, to bound memory


def softmax_gradient(y: Tensor, weights: Tensor) -> Tensor:
    """d(y @ w(theta))/d theta (N, K) for rows ``y`` (N, K) and weights ``w = s softmax``."""
    return weight_gradient(y, weights, "simplex")


def logit_hessian(
    z: Tensor,
    weights: Tensor,
    user_index: Tensor,
    scale: float,
    prior_precision: float | Tensor,
    *,
    hessian: str = "gauss-newton",
    space: str = "simplex",
) -> Tensor:
    """Hessian (U, K, K) of each user's negative log posterior over their logits
    (``space="signed"``: over their weights themselves, :mod:`lore_rm.fit.link`).

    ``z`` (N, K) are the projected comparison rows ``x @ V`` (chosen minus rejected),
    ``weights`` (U, K) the users' weights (the linearisation point), ``user_index`` (N,) the
    user of every row. ``prior_precision`` is a number (times I) or a (K, K) matrix; users
    without rows get the prior precision alone.
    """
    if hessian not in HESSIANS:
        raise LoreError(f"hessian must be one of {HESSIANS}, got {hessian!r}")
    n_users, k = weights.shape
    dtype = torch.float64
    w_all = weights.to(dtype)
    # summed as (U, K * K) rows: index_add_ over 2-D rows is about twice as fast as over
    # (K, K) blocks
    h = torch.zeros(n_users, k * k, dtype=dtype, device=weights.device)
    for start in range(0, z.shape[0], CHUNK):
        zc = z[start : start + CHUNK].to(dtype)
        uc = user_index[start : start + CHUNK]
        w = w_all[uc]
        a = weight_gradient(zc, w, space)  # d(z @ w)/d theta
        m = scale * (zc * w).sum(-1)
        p = torch.sigmoid(m)
        per = (p * (1 - p) * scale**2)[:, None, None] * a[:, :, None] * a[:, None, :]
        if hessian == "exact" and space == "simplex":  # signed: the margin is linear
            # d2(z @ w)/d theta2 = diag(a) - a pw^T - pw a^T; the loss's slope is -(1 - p)
            pw = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
            outer = a[:, :, None] * pw[:, None, :]
            d2 = torch.diag_embed(a) - outer - outer.transpose(1, 2)
            per = per - (torch.sigmoid(-m) * scale)[:, None, None] * d2
        h.index_add_(0, uc, per.reshape(-1, k * k))
    h = h.view(n_users, k, k)
    if isinstance(prior_precision, Tensor):
        return h + prior_precision.to(h)
    return h + prior_precision * torch.eye(k, dtype=dtype, device=h.device)


def covariance_from_hessian(h: Tensor, floor: float, hessian: str) -> Tensor:
    """Inverse (U, K, K) of a batch of Hessians.

    Gauss–Newton Hessians are the prior's precision plus a positive semi-definite sum, so
    Cholesky applies. The exact Hessian can have negative curvature away from the MAP (a seen
    user's weights come from the joint fit, not from this posterior): eigenvalues below
    ``floor`` (the prior precision's smallest eigenvalue) are raised to it, so no direction is
    wider than the prior's widest.
    """
    h = 0.5 * (h + h.transpose(1, 2))
    if hessian == "exact":
        vals, vecs = torch.linalg.eigh(h)
        vals = vals.clamp_min(floor)
        return (vecs / vals[:, None, :]) @ vecs.transpose(1, 2)
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device).expand_as(h)
    chol = torch.linalg.cholesky(h)
    return torch.cholesky_solve(eye, chol)


@dataclass(frozen=True)
class WeightsPosterior:
    """Laplace posterior of some users' logits (from :meth:`LowRankReward.weights_posterior`).

    ``weights`` (M, K) are the mean weights (the model's fitted weights, the Laplace centre),
    ``covariance`` (M, K, K) the covariance of the logits ``theta`` (float64),
    ``n_comparisons`` (M,) how many comparisons each user's posterior used; users with none
    have the prior's covariance, the inverse of ``prior_precision`` (K, K).
    """

    users: list[str]
    weights: Tensor
    covariance: Tensor
    n_comparisons: Tensor
    prior_precision: Tensor
    hessian: str = "gauss-newton"
    space: str = "simplex"  # what the covariance is over: logits, or signed weights

    @property
    def logits(self) -> Tensor:
        """The parameters (M, K) the covariance is over: centred logits whose softmax is each
        row's weights, normalised to sum 1 (simplex), or the weights (signed)."""
        if self.space != "simplex":
            return self.weights.clone()
        lg = self.weights.clamp_min(1e-6).log()
        return lg - lg.mean(-1, keepdim=True)

    def prior_covariance(self) -> Tensor:
        return torch.linalg.inv(self.prior_precision.to(torch.float64))

    def weights_std(self) -> Tensor:
        """Delta-method std (M, K) of each weight under the logit covariance: the Jacobian of
        ``w = s softmax(theta)`` is ``diag(w) - w p_w^T``."""
        w = self.weights.to(torch.float64)
        eye = torch.eye(w.shape[1], dtype=torch.float64)
        jac = weight_gradient(eye.expand(w.shape[0], -1, -1), w[:, None, :], self.space)
        var = torch.einsum("mjk,mkl,mjl->mj", jac, self.covariance.to(torch.float64), jac)
        return var.clamp_min(0.0).sqrt()

    def rows(self, users) -> Tensor:
        """Row of each id in ``users``, -1 for ids this posterior does not cover."""
        index = {u: i for i, u in enumerate(self.users)}
        return torch.tensor(
            [-1 if u is None else index.get(str(u), -1) for u in users], dtype=torch.int64
        )


def linear_std(
    y: Tensor, weights: Tensor, covariance: Tensor, scale: float, space: str = "simplex"
) -> Tensor:
    """Delta-method std (N,) of ``scale * y @ w(theta)``, ``theta ~ N(., covariance)``.

    ``y`` (N, K), ``weights`` (N, K) and ``covariance`` (N, K, K) are per row.
    """
    g = scale * weight_gradient(y.to(torch.float64), weights.to(torch.float64), space)
    var = torch.einsum("nk,nkl,nl->n", g, covariance.to(torch.float64), g)
    return var.clamp_min(0.0).sqrt()


def probit_proba(mean: Tensor, std: Tensor) -> Tensor:
    """``E[sigmoid(m)]`` for ``m ~ N(mean, std^2)``: ``sigmoid(mean / sqrt(1 + pi std^2 / 8))``."""
    kappa = 1.0 / torch.sqrt(1.0 + math.pi * std.to(torch.float64) ** 2 / 8.0)
    return torch.sigmoid(mean.to(torch.float64) * kappa).to(mean.dtype)
