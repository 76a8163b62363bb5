"""The prior over a new user's logits: isotropic (a fixed strength) or learned from the seen
users (empirical Bayes, issue #9).

A user's weights are ``softmax(theta)``; ``theta`` is defined up to a shared offset, so every
logit vector here is centred (its entries sum to 0) and the prior lives on that
``K - 1``-dimensional subspace. Along the all-ones direction, which moves no weight, the
precision is set to the mean of the others so the few-shot fit and the Laplace Hessian stay
well conditioned without changing any weight.

The learned prior is a logistic normal ``N(mu, Sigma)`` over centred logits, fitted to the
seen users by :mod:`lore_rm.fit.empirical_bayes`; :func:`moment_prior` is its M-step. Every
eigenvalue of ``Sigma`` is capped at ``MAX_VARIANCE`` (the isotropic fallback's variance, so
the learned prior is never weaker than it in any direction) and floored at ``EIGEN_FLOOR``
times the largest, so a handful of users or a direction no user moves along still gives an
invertible prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lore_rm.errors import LoreError
from lore_rm.fit.config import FALLBACK_PRIOR
from lore_rm.fit.link import LOGIT_CLIP, params_of  # noqa: F401  (re-exported)

Tensor = torch.Tensor
#: no direction of the learned prior is tighter than this times the widest one
EIGEN_FLOOR = 1e-3
#: nor wider than the isotropic fallback's: a basis that fitted the seen users' noise (a rank
#: the cross-validation would not choose) spreads their logits, and an uncapped prior then let
#: new users overfit (measured on the high-d population at rank 6: -0.045 at 1-5 shots)
MAX_VARIANCE = 1.0 / FALLBACK_PRIOR


@dataclass(frozen=True)
class LogitPrior:
    """Gaussian prior ``N(mean, precision^-1)`` over a user's centred logits (K,)."""

    mean: Tensor  # (K,) float64 (simplex: centred logits, entries sum to 0), or one per user (U, K)
    precision: Tensor  # (K, K) float64, symmetric positive definite
    kind: str = "isotropic"
    space: str = "simplex"  # the parameters' weight space (lore_rm.fit.link)

    @property
    def k(self) -> int:
        return int(self.mean.shape[-1])

    def covariance(self) -> Tensor:
        return torch.linalg.inv(self.precision)

    def penalty(self, logits: Tensor) -> Tensor:
        """``0.5 * sum_u (theta_u - mean)^T P (theta_u - mean)`` for logits (U, K)."""
        diff = logits - self.mean.to(logits)
        return 0.5 * ((diff @ self.precision.to(logits)) * diff).sum()

    def to(self, device: torch.device | str) -> LogitPrior:
        return LogitPrior(self.mean.to(device), self.precision.to(device), self.kind, self.space)


def centred_logits(weights: Tensor) -> Tensor:
    """Centred logits (..., K) whose softmax is ``weights`` renormalised (clipped, see above)."""
    return params_of(weights, "simplex")


def _centring(k: int) -> Tensor:
    return torch.eye(k, dtype=torch.float64) - 1.0 / k


def _with_ones_direction(precision_centred: Tensor) -> Tensor:
    """Add the all-ones direction to a precision that lives on the centred subspace."""
    k = precision_centred.shape[0]
    if k == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    vals = torch.linalg.eigvalsh(precision_centred)
    level = float(vals[1:].mean())  # the K - 1 non-zero eigenvalues (eigvalsh sorts ascending)
    ones = torch.full((k, k), 1.0 / k, dtype=torch.float64)
    return precision_centred + level * ones


def isotropic_prior(
    population_weights: Tensor, strength: float, space: str = "simplex"
) -> LogitPrior:
    """``N(params of the mean weights, I / strength)`` (``strength`` may be 0: no prior)."""
    k = int(population_weights.shape[0])
    mean = params_of(population_weights.reshape(1, k), space)[0]
    eye = torch.eye(k, dtype=torch.float64)
    return LogitPrior(mean, float(strength) * eye, "isotropic", space)


def _centred_basis(k: int) -> Tensor:
    """An orthonormal basis (K, K - 1) of the centred subspace (vectors summing to 0)."""
    q, _ = torch.linalg.qr(_centring(k))
    return q[:, : k - 1]


def precision_from_covariance(sigma: Tensor, space: str = "simplex") -> Tensor:
    """Precision (K, K) of a covariance over centred logits: inverted on the centred
    subspace with every eigenvalue capped at ``MAX_VARIANCE`` and floored at ``EIGEN_FLOOR``
    times the largest, plus the all-ones direction (see the module's docstring). Signed
    weights have no such direction: the whole space, with the same cap and floor."""
    k = sigma.shape[0]
    b = _centred_basis(k) if space == "simplex" else torch.eye(k, dtype=torch.float64)
    inner = b.T @ (0.5 * (sigma + sigma.T)).to(torch.float64) @ b  # (K - 1, K - 1)
    vals, vecs = torch.linalg.eigh(inner)
    vals = vals.clamp(max=MAX_VARIANCE)
    top = float(vals.max())
    if not top > 0:
        raise LoreError("the seen users' logits do not vary: no prior can be learned")
    v = b @ vecs
    precision = (v / vals.clamp_min(EIGEN_FLOOR * top)) @ v.T
    return _with_ones_direction(precision) if space == "simplex" else precision


def moment_prior(
    logits: Tensor, spread: Tensor | None = None, space: str = "simplex"
) -> LogitPrior:
    """``N(mean, covariance + spread)`` of parameters (U, K): the M-step of the
    empirical-Bayes fit. ``spread`` (K, K) is the mean of the users' posterior covariances
    (their estimation noise, which the spread of point estimates understates)."""
    n, k = logits.shape
    if n < 2:
        raise LoreError(f"a learned prior needs at least 2 users with comparisons, got {n}")
    x = logits.to(torch.float64)
    mean = x.mean(0)
    diff = x - mean
    sigma = diff.T @ diff / n
    if spread is not None:
        sigma = sigma + spread.to(torch.float64)
    if space == "simplex":
        mean = mean - mean.mean()
    return LogitPrior(mean, precision_from_covariance(sigma, space), "learned", space)
