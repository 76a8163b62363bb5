"""The fits' L-BFGS: its direction, and where and why it stops."""

from __future__ import annotations

import torch

from lore_rm.fit import lbfgs


def two_loop(g: torch.Tensor, steps: list, changes: list) -> torch.Tensor:
    """The textbook two-loop recursion (Nocedal and Wright, Algorithm 7.4), in float64."""
    q = g.clone()
    alphas = []
    for s, y in zip(reversed(steps), reversed(changes), strict=True):
        a = float(s @ q) / float(s @ y)
        q -= a * y
        alphas.append(a)
    q *= float(steps[-1] @ changes[-1]) / float(changes[-1] @ changes[-1])
    for s, y, a in zip(steps, changes, reversed(alphas), strict=True):
        b = float(y @ q) / float(s @ y)
        q += (a - b) * s
    return -q


def test_the_compact_direction_is_the_two_loop_recursion():
    gen = torch.Generator().manual_seed(0)
    p = 40
    a = torch.randn(p, p, generator=gen, dtype=torch.float64)
    hessian = a @ a.T / p + torch.eye(p, dtype=torch.float64)
    steps = [torch.randn(p, generator=gen, dtype=torch.float64) for _ in range(7)]
    changes = [hessian @ s for s in steps]  # positive curvature, as stored pairs have
    g = torch.randn(p, generator=gen, dtype=torch.float64)
    state = lbfgs.LbfgsState(torch.zeros(p, dtype=torch.float64), 0.0, g)
    for s, y in zip(steps, changes, strict=True):
        state.remember(s, y, history=5)
    torch.testing.assert_close(lbfgs._direction(state), two_loop(g, steps[-5:], changes[-5:]))


def rosenbrock(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    a, b = x[:-1].double(), x[1:].double()
    loss = float((100 * (b - a**2) ** 2 + (1 - a) ** 2).sum())
    g = torch.zeros_like(x, dtype=torch.float64)
    g[:-1] += -400 * a * (b - a**2) - 2 * (1 - a)
    g[1:] += 200 * (b - a**2)
    return loss, g.to(x.dtype)


def test_it_reaches_the_minimum_and_says_why_it_stopped():
    state = lbfgs.start(rosenbrock, torch.full((6,), -1.0, dtype=torch.float64))
    assert lbfgs.minimize(rosenbrock, state, 5, 1e-8) == "max_iter"
    assert lbfgs.minimize(rosenbrock, state, 500, 1e-8) == "tol"
    torch.testing.assert_close(state.x, torch.ones(6, dtype=torch.float64))
    assert float(state.grad.abs().max()) <= 1e-8
    iterations = state.iterations
    assert lbfgs.minimize(rosenbrock, state, 500, 1e-8) == "tol"  # already there
    assert state.iterations == iterations


def test_a_function_that_cannot_go_down_is_a_stall():
    def flat_with_a_lying_gradient(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        return 1.0, torch.ones_like(x)

    state = lbfgs.start(flat_with_a_lying_gradient, torch.zeros(3))
    assert lbfgs.minimize(flat_with_a_lying_gradient, state, 10, 1e-6) == "stall"


def test_a_recalled_memory_is_exact_for_a_changed_ridge_and_saves_iterations():
    """Pairs measured under ridge 0.01, corrected by the ridge's change, are the pairs of the
    objective under ridge 0.5; a run started from them needs fewer iterations than a cold one
    and reaches the same minimum."""
    gen = torch.Generator().manual_seed(3)
    p = 30
    a = torch.randn(p, p, generator=gen, dtype=torch.float64)
    hessian = a @ a.T / p
    target = torch.randn(p, generator=gen, dtype=torch.float64)

    def quadratic(ridge: float):
        def fun(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            r = x - target
            return float(0.5 * r @ hessian @ r + 0.5 * ridge * x @ x), hessian @ r + ridge * x

        return fun

    weak = lbfgs.start(quadratic(0.01), torch.zeros(p, dtype=torch.float64))
    assert lbfgs.minimize(quadratic(0.01), weak, 200, 1e-3) == "tol"
    assert weak.steps is not None and weak.changes is not None
    shift = torch.full((p,), 0.49, dtype=torch.float64)
    warm = lbfgs.start(quadratic(0.5), weak.x)
    warm.recall(weak.steps, weak.changes, shift)
    assert warm.steps is not None and warm.changes is not None
    torch.testing.assert_close(warm.changes, warm.steps @ (hessian + 0.5 * torch.eye(p)).T)
    cold = lbfgs.start(quadratic(0.5), weak.x)
    assert lbfgs.minimize(quadratic(0.5), warm, 200, 1e-8) == "tol"
    assert lbfgs.minimize(quadratic(0.5), cold, 200, 1e-8) == "tol"
    assert warm.iterations < cold.iterations
    torch.testing.assert_close(warm.x, cold.x, atol=1e-7, rtol=0)
