"""A small L-BFGS for the fits: one flat parameter vector, a function returning the loss
(float64) and its gradient, and a backtracking line search.

``torch.optim.LBFGS`` serves the same purpose, but its first use imports ``torch._dynamo``
(about a second on an idle 2-core machine, several under load), its convergence tests compare
a float loss to 1e-10 (a flat stretch of a float32 loss reads as converged), and it cannot
say why it stopped. Here every stop has a reason, and "tol" means the largest gradient
entry is within the tolerance.

The direction is the L-BFGS inverse Hessian of the last ``history`` (s, y) pairs (in its
compact matrix form), scaled by ``s.y / y.y`` of the newest; pairs without positive
curvature are not stored. The step
starts at ``lr`` (at ``min(1, 1 / |g|_1) * lr`` on the first iteration) and is shortened by
safeguarded quadratic interpolation until the Armijo condition holds; a step that satisfies
it with the directional derivative still strongly negative is doubled while that improves
the loss (at most ``MAX_GROW`` times).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lore_rm.threads import one_thread

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
    steps: Tensor | None = None  # (m, P) the last m steps s, oldest first
    changes: Tensor | None = None  # (m, P) their gradient changes y
    iterations: int = 0
    evaluations: int = 1
    dtype: torch.dtype = torch.float32  # what ``fun`` is evaluated in

    @property
    def point(self) -> Tensor:
        """The iterate in the dtype ``fun`` is evaluated in."""
        return self.x.to(self.dtype)

    def forget(self) -> None:
        self.steps = self.changes = None

    def recall(self, steps: Tensor, changes: Tensor, shift: Tensor) -> None:
        """Take another run's memory as this one's, for an objective that differs from that
        run's by ``0.5 * sum(shift * x**2)``: its curvature pairs are exact here once every
        gradient change gains ``shift * s`` (pairs left without positive curvature are
        dropped)."""
        changes = changes + shift[None] * steps
        with one_thread(steps.device):
            sy = (steps * changes).sum(1)
            keep = sy > 1e-10 * (steps.norm(dim=1) * changes.norm(dim=1)).clamp_min(1e-300)
        if bool(keep.any()):
            self.steps, self.changes = steps[keep], changes[keep]

    def remember(self, s: Tensor, y: Tensor, history: int) -> None:
        if self.steps is None or self.changes is None:
            self.steps, self.changes = s[None], y[None]
            return
        keep = max(history - 1, 0)
        self.steps = torch.cat([self.steps[-keep:] if keep else self.steps[:0], s[None]])
        self.changes = torch.cat([self.changes[-keep:] if keep else self.changes[:0], y[None]])


def start(fun: Function, x0: Tensor) -> LbfgsState:
    """The state at ``x0``. The iterate, gradients and memory are kept in float64 (``fun``
    sees the iterate in ``x0``'s dtype): the direction's sums then round alike whatever
    order a thread count gives them."""
    x = x0.detach().to(torch.float64)
    loss, grad = _call(fun, x, x0.dtype)
    return LbfgsState(x, loss, grad, dtype=x0.dtype)


def _call(fun: Function, x: Tensor, dtype: torch.dtype) -> tuple[float, Tensor]:
    loss, grad = fun(x.to(dtype))
    return loss, grad.to(torch.float64)


def _direction(state: LbfgsState) -> Tensor:
    """``-H g`` for the L-BFGS inverse Hessian ``H`` of the stored pairs, in the compact form
    ``H = gamma I + [S, gamma Y] M [S^T; gamma Y^T]`` (Byrd, Nocedal and Schnabel, 1994):
    a few matrix products instead of the two-loop recursion's 4m small ones, on one thread
    (see :func:`_dot`)."""
    g = state.grad
    if state.steps is None or state.changes is None:
        return -g
    with one_thread(g.device):
        return _compact_direction(g, state.steps, state.changes)


def _compact_direction(g: Tensor, s_mat: Tensor, y_mat: Tensor) -> Tensor:
    sy = s_mat @ y_mat.T  # (m, m): s_i . y_j
    yy = y_mat @ y_mat.T
    gamma = float(sy[-1, -1] / yy[-1, -1])
    r = torch.triu(sy)
    a = s_mat @ g
    b = y_mat @ g
    q = torch.linalg.solve_triangular(r, a[:, None], upper=True)
    inner = (torch.diag(torch.diagonal(sy)) + gamma * yy) @ q - gamma * b[:, None]
    top = torch.linalg.solve_triangular(r.T, inner, upper=False)
    hg = gamma * g + s_mat.T @ top[:, 0] - gamma * (y_mat.T @ q[:, 0])
    return -hg


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
        gtd = _dot(state.grad, d)
        if not gtd < 0:  # not a descent direction: forget the memory, go downhill
            state.forget()
            d = -state.grad
            gtd = _dot(state.grad, d)
            if not gtd < 0:
                return "stall"
        cold = state.iterations == 0 and state.steps is None  # no curvature known yet
        if cold:
            with one_thread(d.device):
                t = lr * min(1.0, 1.0 / float(state.grad.abs().sum()))
        else:
            t = lr
        found = _line_search(fun, state, d, gtd, t)
        if found is None:
            if state.steps is not None:  # retry once from a fresh memory before giving up
                state.forget()
                continue
            return "stall"
        t, loss, grad = found
        s = t * d
        y = grad - state.grad
        with one_thread(s.device):
            sy = float(s.dot(y))
            sy_floor = 1e-10 * max(float(s.norm() * y.norm()), 1e-300)
        if sy > sy_floor:
            state.remember(s, y, history)
        state.x = state.x + s
        changed = loss != state.loss
        state.loss, state.grad = loss, grad
        state.iterations += 1
        if not changed:
            return "tol" if float(grad.abs().max()) <= tol else "stall"
    return "tol" if float(state.grad.abs().max()) <= tol else "max_iter"


def _dot(a: Tensor, b: Tensor) -> float:
    """``a . b`` on one thread: BLAS splits a long dot product among the threads, and the
    partial sums then add in another order. The direction and the step's products are kept
    to one thread so that, from the same gradients, the iterates are the same bits whatever
    the thread count (float64 does not make the orders agree: a last-bit difference in the
    iterate sometimes rounds to another float32 basis, and a flat objective carries that
    far)."""
    with one_thread(a.device):
        return float(a.dot(b))


def _line_search(
    fun: Function, state: LbfgsState, d: Tensor, gtd: float, t: float
) -> tuple[float, float, Tensor] | None:
    """A step ``t`` along ``d`` satisfying the Armijo condition, with its loss and gradient;
    None when none was found."""
    f0 = state.loss
    for _ in range(MAX_BACKTRACK):
        loss, grad = _call(fun, state.x + t * d, state.dtype)
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
        if _dot(grad, d) > CURVATURE * gtd:
            break
        longer, longer_grad = _call(fun, state.x + 2.0 * t * d, state.dtype)
        state.evaluations += 1
        if not longer < loss:
            break
        t, loss, grad = 2.0 * t, longer, longer_grad
    return t, loss, grad
