"""The margin scale: how far the fitted margins understate the true log-odds (issue #9).

The ridge on the basis and the prior on the users' logits shrink every fitted margin, and
labels seen in training cannot reveal it: the shrunk margins fit them best. Users held out of
the fit can. The cross-validation that holds out users (``cv_holdout="users"``) predicts each
held-out comparison as a new user's: weights fitted on that user's other comparisons with the
basis frozen, and their Laplace posterior. From those predictions (margin ``m``, posterior std
``s``) the scale ``a`` is the maximum-likelihood fit of

    P(chosen preferred) = E[sigmoid(t)],  t ~ N(a m, (a s)^2)   (probit approximation),

that is, the true margin is read as ``a`` times the fitted one and its posterior is scaled
alike. A Gaussian prior on ``log a`` (standard deviation ``LOG_SCALE_PRIOR_SD``) keeps ``a``
near 1 when the held-out comparisons are few or separable (every one predicted right with a
large margin, where the likelihood alone would grow ``a`` without end); with thousands of
comparisons it moves ``a`` by well under 1%. ``a`` multiplies the model's outputs
(rewards, margins, their std); the fits themselves (joint, few-shot, the posterior's
Hessian) keep the training likelihood, so no weight and no ranking changes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
#: the scale is searched on [1 / SCALE_RANGE, SCALE_RANGE]: a log-spaced grid, then
#: golden-section steps inside the best grid point's bracket
SCALE_RANGE = 10.0
LOG_SCALE_PRIOR_SD = 1.0
GRID_POINTS = 41
REFINE_STEPS = 32
ROWS_PER_BLOCK = 1 << 16


def scaled_log_losses(scales: Tensor, margins: Tensor, std: Tensor) -> Tensor:
    """Mean log-loss (G,) of the held-out comparisons (all oriented chosen-first) for each of
    ``scales`` (G,): margins and std multiplied by the scale, the probability integrated over
    the posterior (probit approximation). Rows are taken in blocks, so memory stays small."""
    a = scales.to(torch.float64)[:, None]
    total = torch.zeros(a.shape[0], dtype=torch.float64)
    for start in range(0, margins.numel(), ROWS_PER_BLOCK):
        m = margins[start : start + ROWS_PER_BLOCK].to(torch.float64)[None, :]
        s = std[start : start + ROWS_PER_BLOCK].to(torch.float64)[None, :]
        z = a * m / torch.sqrt(1.0 + math.pi * (a * s) ** 2 / 8.0)
        total += F.softplus(-z).sum(1).cpu()
    return total / max(margins.numel(), 1)


def scaled_log_loss(scale: float, margins: Tensor, std: Tensor) -> float:
    """:func:`scaled_log_losses` at one scale."""
    return float(scaled_log_losses(torch.tensor([float(scale)]), margins, std)[0])


def fit_margin_scale(margins: Tensor, std: Tensor) -> float:
    """The scale ``a`` of the module doc (the MAP of ``log a``), by a log-spaced grid then
    golden-section refinement (deterministic; 1.0 when there is nothing to fit: no rows, or
    every margin 0)."""
    m = margins.detach().to(torch.float64).flatten()
    s = std.detach().to(torch.float64).flatten()
    keep = torch.isfinite(m) & torch.isfinite(s)
    m, s = m[keep], s[keep]
    if not m.numel() or float(m.abs().max()) == 0.0:
        return 1.0
    weight = 1.0 / (2.0 * LOG_SCALE_PRIOR_SD**2 * m.numel())  # the prior, per comparison

    def objective(log_a: float) -> float:
        return scaled_log_loss(math.exp(log_a), m, s) + weight * log_a**2

    grid = torch.linspace(-math.log(SCALE_RANGE), math.log(SCALE_RANGE), GRID_POINTS)
    grid = grid.to(torch.float64)
    values = scaled_log_losses(grid.exp(), m, s) + weight * grid**2
    best = int(torch.argmin(values))  # the first of equal values
    lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, GRID_POINTS - 1)])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = objective(c), objective(d)
    for _ in range(REFINE_STEPS):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = objective(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = objective(d)
    found = (lo + hi) / 2.0
    if objective(found) > float(values[best]):
        found = float(grid[best])
    return float(f"{math.exp(found):.6g}")
