"""A small L-BFGS for the fits: one flat parameter vector, a function returning the loss
(float64) and its gradient, and a backtracking line search.

``torch.optim.LBFGS`` serves the same purpose, but its first use imports ``torch._dynamo``
(about a second on an idle 2-core machine, several under load), its convergence tests compare
a float loss to 1e-10 (a flat stretch of a float32 loss reads as converged), and it cannot
say why it stopped. Here every stop has a reason, and "tol" means the largest gradient
entry is within the tolerance.

The direction is the two-loop recursion over the last ``history`` (s, y) pairs, scaled by
``s.y / y.y`` of the newest; pairs without positive curvature are not stored. The step
starts at ``lr`` (at ``min(1, 1 / |g|_1) * lr`` on the first iteration) and is shortened by
safeguarded quadratic interpolation until the Armijo condition holds; a step that satisfies
it with the directional derivative still strongly negative is doubled while that improves
the loss (at most ``MAX_GROW`` times).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor
Function = Callable[[Tensor], tuple[float, Tensor]]
ARMIJO = 1e-4
CURVATURE = 0.9
MAX_BACKTRACK = 25
MAX_GROW = 4


@dataclass
class LbfgsState:
    """Where the minimiser stands; kept between :func:`minimize` calls (warm memory)."""

    x: Tensor
    loss: float
    grad: Tensor
    steps: list[Tensor] = field(default_factory=list)
    changes: list[Tensor] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    iterations: int = 0
    evaluations: int = 1


def start(fun: Function, x0: Tensor) -> LbfgsState:
    x = x0.detach().clone()
    loss, grad = fun(x)
    return LbfgsState(x, loss, grad)


def _direction(state: LbfgsState) -> Tensor:
    q = -state.grad
    alphas = []
    for s, y, rho in zip(
        reversed(state.steps), reversed(state.changes), reversed(state.rho), strict=True
    ):
        a = rho * float(s.dot(q))
        q = q - a * y
        alphas.append(a)
    if state.steps:
        s, y = state.steps[-1], state.changes[-1]
        q = q * (float(s.dot(y)) / max(float(y.dot(y)), 1e-300))
    for (s, y, rho), a in zip(
        zip(state.steps, state.changes, state.rho, strict=True), reversed(alphas), strict=True
    ):
        b = rho * float(y.dot(q))
        q = q + (a - b) * s
    return q


def minimize(
    fun: Function,
    state: LbfgsState,
    max_iter: int,
    tol: float,
    *,
    lr: float = 1.0,
    history: int = 20,
) -> str:
    """Run up to ``max_iter`` iterations from ``state`` (updated in place). Returns why it
    stopped: ``"tol"`` (largest gradient entry <= ``tol``), ``"max_iter"`` or ``"stall"``
    (no step along the direction lowers the loss, or the loss no longer changes)."""
    for _ in range(max_iter):
        if float(state.grad.abs().max()) <= tol:
            return "tol"
        d = _direction(state)
        gtd = float(state.grad.dot(d))
        if not gtd < 0:  # not a descent direction: forget the memory, go downhill
            state.steps, state.changes, state.rho = [], [], []
            d = -state.grad
            gtd = float(state.grad.dot(d))
            if not gtd < 0:
                return "stall"
        t = lr * min(1.0, 1.0 / float(state.grad.abs().sum())) if state.iterations == 0 else lr
        found = _line_search(fun, state, d, gtd, t)
        if found is None:
            if state.steps:  # retry once from a fresh memory before giving up
                state.steps, state.changes, state.rho = [], [], []
                continue
            return "stall"
        t, loss, grad = found
        s = t * d
        y = grad - state.grad
        sy = float(s.dot(y))
        if sy > 1e-10 * max(float(s.norm() * y.norm()), 1e-300):
            state.steps.append(s)
            state.changes.append(y)
            state.rho.append(1.0 / sy)
            if len(state.steps) > history:
                del state.steps[0], state.changes[0], state.rho[0]
        state.x = state.x + s
        changed = loss != state.loss
        state.loss, state.grad = loss, grad
        state.iterations += 1
        if not changed:
            return "tol" if float(grad.abs().max()) <= tol else "stall"
    return "tol" if float(state.grad.abs().max()) <= tol else "max_iter"


def _line_search(
    fun: Function, state: LbfgsState, d: Tensor, gtd: float, t: float
) -> tuple[float, float, Tensor] | None:
    """A step ``t`` along ``d`` satisfying the Armijo condition, with its loss and gradient;
    None when none was found."""
    f0 = state.loss
    for _ in range(MAX_BACKTRACK):
        loss, grad = fun(state.x + t * d)
        state.evaluations += 1
        if loss == loss and loss <= f0 + ARMIJO * t * gtd:
            break
        if loss != loss or loss == float("inf"):
            t *= 0.1
            continue
        # minimiser of the quadratic through f0, gtd and (t, loss), kept within [0.1t, 0.5t]
        curve = loss - f0 - gtd * t
        t_new = -gtd * t * t / (2.0 * curve) if curve > 0 else 0.5 * t
        t = min(max(t_new, 0.1 * t), 0.5 * t)
    else:
        return None
    for _ in range(MAX_GROW):  # a short step on a long downhill stretch: try twice as far
        if float(grad.dot(d)) > CURVATURE * gtd:
            break
        longer, longer_grad = fun(state.x + 2.0 * t * d)
        state.evaluations += 1
        if not longer < loss:
            break
        t, loss, grad = 2.0 * t, longer, longer_grad
    return t, loss, grad
