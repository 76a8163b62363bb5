"""The joint fit's objective and its gradient in closed form (no autograd graph).

The joint fit minimises, for each of G independent problems over the same comparisons
(cross-validation folds, or G = 1),

    L_g = sum_n r_gn softplus(-m_gn) / R_g + ridge_g / 2 ||V_g||^2 + (user penalties),
    m_gn = s * (x_n V_g / sigma) . w_g,u(n),

``r_gn`` the rows' weights and ``R_g`` their total. Its gradient needs one ``X @ V`` (all
problems' columns at once) and one ``X.T @ G``, as autograd's would, but none of autograd's
bookkeeping: on small problems (thousands of rows) that bookkeeping cost more than the two
products (measured in docs/recipes.md, "Speed"). The loss is accumulated in float64, so a
flat stretch of the objective still shows its changes to the optimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F

from lore_rm.comparisons import Comparisons
from lore_rm.fit.link import joint_weights
from lore_rm.fit.prior import LogitPrior
from lore_rm.fit.user_layout import RowLayout, user_layout
from lore_rm.thread_invariant import sigmoid, softplus, total

Tensor = torch.Tensor
USER_NEWTON_STEPS = 20  # at most, per evaluation of the users' best logits
USER_BACKTRACK = 10  # step halvings per user and Newton step
MAX_USER_STEP = 2.0  # the largest change of one logit in one Newton step
#: a Newton step (and a trial halved for some users) computes those users alone while they
#: are at most this share
RESTRICT_USERS = 0.5


def reference_penalty(basis: Tensor, v_ref: Tensor, kind: str) -> Tensor:
    """The pull of a basis (d, K) toward the reference head ``v_ref`` (d,): ``mean_k(1 -
    cos(V_k, v_ref))`` ("cosine") or ``sum_k ||V_k - v_ref||^2`` ("l2")."""
    if kind == "cosine":
        cos = F.cosine_similarity(basis, v_ref[:, None].expand_as(basis), dim=0)
        return (1.0 - cos).mean()
    return ((basis - v_ref[:, None]) ** 2).sum()


class JointObjective:
    """Loss and gradient of G joint problems (see the module docstring).

    ``row_weights`` (G, N); ``decay`` the G ridges; ``space`` the users' weight space;
    ``user_l2`` the simplex logits' penalty (divided by the number of users); ``signed_prior``
    the signed offsets' precision (per summed loss); ``logit_prior`` every user's negative
    log prior (per summed loss); ``reference`` (alpha, head, kind) the pull toward a reference
    head (its small gradient by autograd on the basis alone).
    """

    def __init__(
        self,
        data: Comparisons,
        sigma: Tensor,
        row_weights: Tensor,
        decay: Tensor,
        scale: float,
        space: str,
        *,
        user_l2: float = 0.0,
        signed_prior: float = 0.0,
        logit_prior: LogitPrior | None = None,
        reference: tuple[float, Tensor, str] | None = None,
    ) -> None:
        self.data = data
        self.sigma = sigma
        self.row_weights = row_weights
        self.row_total = row_weights.sum(1, dtype=torch.float64).clamp_min(1.0)
        self.coef = (row_weights / self.row_total[:, None]).to(torch.float32)  # (G, N)
        self.coef_rows = self.coef.T.contiguous()  # (N, G)
        self.decay = decay
        self.scale = float(scale)
        self.space = space
        self.user_l2 = float(user_l2)
        self.signed_prior = float(signed_prior)
        self.reference = reference
        u = data.user_index
        g = row_weights.shape[0]
        present = torch.zeros(g, data.n_users, device=data.device)
        present.index_add_(1, u, (row_weights > 0).to(present.dtype))
        self.present = present > 0
        self.n_users = max(data.n_users, 1)
        self.prior_mean = self.prior_precision = None
        self._penalty_hess: Tensor | None = None
        self._layout: RowLayout | None = None  # the users' solve's (lore_rm.fit.user_layout)
        if logit_prior is not None:
            self.prior_mean = logit_prior.mean.to(data.device, torch.float32)
            self.prior_precision = logit_prior.precision.to(data.device, torch.float32)

    def projected(self, basis: Tensor) -> Tensor:
        """``X @ (V_g / sigma)`` for every problem: (N, G, K)."""
        g, d, k = basis.shape
        raw = (basis / self.sigma[None, :, None]).permute(1, 0, 2).reshape(d, g * k)
        return self.data.project(raw).reshape(-1, g, k)

    def _user_rows(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Users' weights (G, U, K) and every row's user's weights (N, G, K)."""
        w = joint_weights(logits, self.space, self.present)
        return w, w.permute(1, 0, 2)[self.data.user_index]

    def margins(self, basis: Tensor, logits: Tensor) -> Tensor:
        """Every problem's Bradley–Terry logits (G, N)."""
        z = self.projected(basis)
        return self.scale * (z * self._user_rows(logits)[1]).sum(-1).T

    def values(self, basis: Tensor, logits: Tensor) -> Tensor:
        """Every problem's objective (G,), float64 (no gradient)."""
        m = self.margins(basis, logits)
        out = (softplus(-m) * self.coef).sum(1, dtype=torch.float64)
        out = out + 0.5 * self.decay.double() * (basis.double() ** 2).sum((1, 2))
        lg = logits.double()
        if self.space == "simplex":
            out = out + 0.5 * self.user_l2 * (lg**2).sum((1, 2)) / self.n_users
        else:
            out = out + 0.5 * self.signed_prior * (lg**2).sum((1, 2)) / self.row_total
        if self.prior_mean is not None and self.prior_precision is not None:
            diff = lg - self.prior_mean.double()
            quad = ((diff @ self.prior_precision.double()) * diff).sum((1, 2))
            out = out + 0.5 * quad / self.row_total
        if self.reference is not None:
            alpha, head, kind = self.reference
            out = out + torch.stack(
                [
                    alpha * reference_penalty(b / self.sigma[:, None], head, kind).double()
                    for b in basis
                ]
            )
        return out

    def residuals(self, basis: Tensor, logits: Tensor) -> Tensor:
        """``s * dL/dm`` of every problem's rows (G, N): the weight of each row in the
        gradient of a new basis direction."""
        m = self.margins(basis, logits)
        return -sigmoid(-m) * self.coef * self.scale

    def value_and_grad(
        self, basis: Tensor, logits: Tensor, z: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The summed objective (float64 scalar) and its gradients w.r.t. ``basis`` (G, d, K)
        and ``logits`` (G, U, K); ``z`` is :meth:`projected` of ``basis`` when known."""
        n_problems, d, k = basis.shape
        u = self.data.user_index
        z = self.projected(basis) if z is None else z  # (N, G, K)
        w, wr = self._user_rows(logits)  # (G, U, K), (N, G, K)
        m = self.scale * (z * wr).sum(-1)  # (N, G)
        coef = self.coef_rows
        loss = total(softplus(-m) * coef, torch.float64)
        c = -sigmoid(-m) * coef * self.scale  # dL/dm times s: (N, G)
        g_raw = self.data.backproject((c[:, :, None] * wr).reshape(-1, n_problems * k))
        g_raw = g_raw.reshape(d, n_problems, k).permute(1, 0, 2)
        g_basis = g_raw / self.sigma[None, :, None] + self.decay[:, None, None] * basis
        loss = loss + 0.5 * (self.decay.double() * (basis.double() ** 2).sum((1, 2))).sum()
        g_w = torch.zeros(w.shape[1], n_problems, k, dtype=w.dtype, device=w.device)
        g_w = g_w.index_add_(0, u, c[:, :, None] * z).permute(1, 0, 2)  # (G, U, K)
        if self.space == "simplex":
            g_logits = w * (g_w - (w * g_w).sum(-1, keepdim=True))
            loss = loss + 0.5 * self.user_l2 * (logits.double() ** 2).sum() / self.n_users
            g_logits = g_logits + (self.user_l2 / self.n_users) * logits
        else:
            mask = self.present.to(g_w.dtype)[..., None]
            count = mask.sum(1, keepdim=True).clamp_min(1)
            g_logits = g_w - mask * g_w.sum(1, keepdim=True) / count
            per = (self.signed_prior / self.row_total).to(logits.dtype)[:, None, None]
            quad = (logits.double() ** 2).sum((1, 2))
            loss = loss + (0.5 * self.signed_prior * quad / self.row_total).sum()
            g_logits = g_logits + per * logits
        if self.prior_mean is not None and self.prior_precision is not None:
            diff = logits - self.prior_mean
            pd = diff @ self.prior_precision
            loss = loss + (0.5 * (pd.double() * diff.double()).sum((1, 2)) / self.row_total).sum()
            g_logits = g_logits + pd / self.row_total.to(pd.dtype)[:, None, None]
        if self.reference is not None:
            extra, g_ref = self._reference(basis)
            loss, g_basis = loss + extra, g_basis + g_ref
        return loss, g_basis, g_logits

    def _user_penalty(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every (problem, user)'s logit penalty (G, U), its gradient (G, U, K) and Hessian
        (G, 1, K, K), float64: the simplex penalty and the learned prior (simplex only). The
        penalty is quadratic, so its Hessian is computed once."""
        k = logits.shape[2]
        if self._penalty_hess is None or self._penalty_hess.shape[-1] != k:
            self._penalty_hess = self._quadratic_hessian(logits.shape[0], k, logits.device)
        rate = self.user_l2 / self.n_users
        lg = logits.double()
        grad = rate * lg
        value = 0.5 * (grad * lg).sum(-1)
        if self.prior_mean is not None and self.prior_precision is not None:
            diff = lg - self.prior_mean.double()
            pd = (diff @ self.prior_precision.double()) / self.row_total[:, None, None]
            value = value + 0.5 * (pd * diff).sum(-1)
            grad = grad + pd
        return value, grad, self._penalty_hess

    def _quadratic_hessian(self, g: int, k: int, device: torch.device) -> Tensor:
        eye = torch.eye(k, dtype=torch.float64, device=device)
        hess = (self.user_l2 / self.n_users * eye).expand(g, 1, k, k)
        if self.prior_precision is not None:
            per = (1.0 / self.row_total)[:, None, None, None]  # (G, 1, 1, 1)
            hess = hess + self.prior_precision.double() * per
        return hess.contiguous()

    def best_point(
        self, z: Tensor, logits: Tensor, tol: float, max_iter: int = USER_NEWTON_STEPS
    ) -> tuple[NewtonPoint, bool]:
        """Every (problem, user)'s logits minimising the objective with the basis fixed
        (``z`` its projection; simplex weights), from ``logits``: :func:`newton_point`."""
        if self._layout is None:
            self._layout = user_layout(self.data.user_index, self.data.n_users)
        return newton_point(
            z,
            logits,
            self.data.user_index,
            self.coef_rows,
            self.scale,
            self._user_penalty,
            tol,
            max_iter,
            layout=self._layout,
        )

    def basis_value_and_grad(self, basis: Tensor, point: NewtonPoint) -> tuple[Tensor, Tensor]:
        """The summed objective (float64 scalar) and its gradient w.r.t. ``basis`` (G, d, K)
        at the users' logits of ``point`` (simplex weights; ``point`` evaluated at
        :meth:`projected` of ``basis``): what :meth:`value_and_grad` gives, from the
        quantities the users' solve has already computed."""
        n_problems, d, k = basis.shape
        loss = (
            point.loss.sum() + 0.5 * (self.decay.double() * (basis.double() ** 2).sum((1, 2))).sum()
        )
        s, wr = point.row_terms()
        c = -s[..., 0] * self.coef_rows * self.scale  # dL/dm times s: (N, G)
        g_raw = self.data.backproject((c[:, :, None] * wr).reshape(-1, n_problems * k))
        g_raw = g_raw.reshape(d, n_problems, k).permute(1, 0, 2)
        g_basis = g_raw / self.sigma[None, :, None] + self.decay[:, None, None] * basis
        if self.reference is not None:
            extra, g_ref = self._reference(basis)
            loss, g_basis = loss + extra, g_basis + g_ref
        return loss, g_basis

    def _reference(self, basis: Tensor) -> tuple[Tensor, Tensor]:
        alpha, head, kind = self.reference  # type: ignore[misc]
        with torch.enable_grad():
            b = basis.detach().requires_grad_(True)
            total = torch.stack(
                [
                    alpha * reference_penalty(b[g] / self.sigma[:, None], head, kind)
                    for g in range(b.shape[0])
                ]
            ).sum()
            (grad,) = torch.autograd.grad(total, b)
        return total.detach().double(), grad


Penalty = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


class NewtonPoint:
    """One evaluation of :func:`newton_point`' objective at ``logits`` (G, U, K): every
    (problem, user)'s loss (G, U) and gradient (G, U, K), float64, and what the Hessian there
    needs. ``z`` (rows, G, K) and ``coef_rows`` (rows, G) come in ``layout``'s arrangement of
    the rows (:mod:`lore_rm.fit.user_layout`). A step the backtracking accepts is the next
    step's point, so no point is evaluated twice."""

    def __init__(
        self,
        z: Tensor,
        logits: Tensor,
        layout: RowLayout,
        coef_rows: Tensor,
        scale: float,
        penalty: Penalty,
        simplex: bool,
    ) -> None:
        self.logits = logits
        self.layout = layout
        self.w = w = logits.softmax(dim=-1) if simplex else logits
        self.wr = layout.per_row(w.permute(1, 0, 2))  # every row's user's weights
        mz = (z * self.wr).sum(-1, keepdim=True)  # (rows, G, 1)
        self.a = scale * (z - mz) if simplex else scale * z  # simplex: dm/dtheta = w * a
        m = scale * mz
        self.s = sigmoid(-m)  # (rows, G, 1)
        coef = coef_rows[..., None]
        # every user's loss (float64: a user's summed loss over many rows) and their sum of
        # c_n a_n over their rows (simplex: w * that is the gradient)
        rows = (softplus(-m) * coef)[..., 0].double()
        loss = layout.user_sum(rows).T  # (G, U)
        spread = layout.user_sum((-self.s * coef) * self.a).permute(1, 0, 2)
        self.spread = spread.double()  # (G, U, K)
        pen, pen_grad, self.pen_hess = penalty(logits)
        self.loss = loss + pen
        self.grad = (w.double() * self.spread if simplex else self.spread) + pen_grad

    def of_users(self, users: Tensor) -> NewtonPoint:
        """This point for ``users`` (ascending) alone, in ``layout.of_users(users)``."""
        sub = NewtonPoint.__new__(NewtonPoint)
        sub.logits, sub.w = self.logits[:, users], self.w[:, users]
        sub.layout = self.layout.of_users(users)
        rows = cast(Tensor, sub.layout.index)
        sub.wr = sub.layout.per_row(sub.w.permute(1, 0, 2))
        sub.a, sub.s = self.a[rows], self.s[rows]
        sub.spread, sub.loss, sub.grad = (
            self.spread[:, users],
            self.loss[:, users],
            self.grad[:, users],
        )
        sub.pen_hess = self.pen_hess if self.pen_hess.shape[1] == 1 else self.pen_hess[:, users]
        return sub

    def with_users(self, users: Tensor, sub: NewtonPoint) -> NewtonPoint:
        """This point with ``users``' values replaced by ``sub``'s (a point of
        :meth:`of_users`)."""
        out = NewtonPoint.__new__(NewtonPoint)
        out.layout = self.layout
        rows = cast(Tensor, sub.layout.index)
        out.logits = self.logits.index_copy(1, users, sub.logits)
        out.w = self.w.index_copy(1, users, sub.w)
        out.wr = self.layout.per_row(out.w.permute(1, 0, 2))
        out.a, out.s = self.a.index_copy(0, rows, sub.a), self.s.index_copy(0, rows, sub.s)
        out.spread = self.spread.index_copy(1, users, sub.spread)
        out.loss = self.loss.index_copy(1, users, sub.loss)
        out.grad = self.grad.index_copy(1, users, sub.grad)
        same = self.pen_hess.shape[1] == 1
        out.pen_hess = self.pen_hess if same else self.pen_hess.index_copy(1, users, sub.pen_hess)
        return out

    def row_terms(self) -> tuple[Tensor, Tensor]:
        """``sigmoid(-m)`` (N, G, 1) and the users' weights (N, G, K) on every row, in the
        rows' own order."""
        return self.layout.to_rows(self.s), self.layout.to_rows(self.wr)

    def hessian(self, coef_rows: Tensor, simplex: bool) -> Tensor:
        """Every (problem, user)'s Hessian (G, U, K, K), float64."""
        dm = self.wr * self.a if simplex else self.a  # (rows, G, K)
        curve = self.s * (1.0 - self.s) * coef_rows[..., None]
        hess = self.layout.user_outer_sum(curve * dm, dm)
        hess = hess.permute(1, 0, 2, 3).double() + self.pen_hess
        if simplex:
            # the softmax's own curvature: sum_n c_n d2m_n/dtheta2 = diag(v) - v w^T - w v^T
            wd = self.w.double()
            v = wd * self.spread
            cross = v[..., :, None] * wd[..., None, :]
            hess = hess + torch.diag_embed(v) - cross - cross.transpose(-1, -2)
        return hess


def saddle_free_step(hess: Tensor, grad: Tensor) -> Tensor:
    """``-|H|^-1 g`` for every (problem, user): ``|H|`` has ``H``'s eigenvectors and the
    absolute values of its eigenvalues, floored at 1e-9. A positive definite ``H`` (most
    users, most steps) takes a Cholesky solve, the same step at a fraction of an
    eigendecomposition's cost; only the others are decomposed."""
    chol, info = torch.linalg.cholesky_ex(hess)
    step = torch.cholesky_solve(-grad[..., None], chol)[..., 0]
    indefinite = info != 0
    if bool(indefinite.any()):
        vals, vecs = torch.linalg.eigh(hess[indefinite])
        vals = vals.abs().clamp_min(1e-9)
        g = grad[indefinite][..., None]
        step[indefinite] = -(vecs @ ((vecs.transpose(-1, -2) @ g) / vals[..., None]))[..., 0]
    return step


def _restricted(penalty: Penalty, full: Tensor, users: Tensor) -> Penalty:
    """``penalty`` of ``users``' logits alone, every other user's staying as in ``full``."""

    def of_users(lg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        value, grad, hess = penalty(full.index_copy(1, users, lg))
        hess = hess if hess.shape[1] == 1 else hess[:, users]
        return value[:, users], grad[:, users], hess

    return of_users


def newton_point(
    z: Tensor,
    logits: Tensor,
    u: Tensor,
    coef_rows: Tensor,
    scale: float,
    penalty: Penalty,
    tol: float,
    max_iter: int = USER_NEWTON_STEPS,
    space: str = "simplex",
    layout: RowLayout | None = None,
) -> tuple[NewtonPoint, bool]:
    """Every (problem, user)'s parameters minimising their Bradley–Terry loss plus penalty,
    the rows' projections ``z`` (N, G, K) fixed: damped Newton from ``logits`` (G, U, K),
    all users of all problems at once. Row n (user ``u[n]``) weighs ``coef_rows[n, g]`` in
    problem g; ``penalty(logits)`` gives every (problem, user)'s penalty (G, U) float64, its
    gradient (G, U, K) and Hessian (G, 1 or U, K, K). Simplex weights are ``softmax``, signed
    weights the parameters themselves.

    A user whose gradient is within ``tol`` stops; the others' steps are halved, user by
    user, until their own loss goes down (a user whose loss cannot go down stops too).
    Returns the point reached (parameters, losses, gradients) and whether every user's
    largest gradient entry is within ``tol``. ``layout`` is :func:`user_layout` of ``u``
    where the caller keeps one."""
    simplex = space == "simplex"
    g_count, n_users, k = logits.shape
    layout = user_layout(u, n_users) if layout is None else layout
    z, coef_rows = layout.rows(z), layout.rows(coef_rows)
    eye = torch.eye(k, dtype=torch.float64, device=z.device)
    # the all-ones direction (no weight moves, simplex) keeps a tiny curvature
    tiny = 1e-9 * (eye + torch.full((k, k), 1.0 / k, dtype=torch.float64, device=z.device))
    active = torch.ones(g_count, n_users, dtype=torch.bool, device=z.device)
    converged = False

    def newton_step(point: NewtonPoint, active: Tensor, z, coef_rows, layout, penalty):
        """One damped Newton step of the ``active`` (problem, user) pairs: the point
        reached and which pairs moved."""
        step = saddle_free_step(point.hessian(coef_rows, simplex) + tiny, point.grad)
        # a step longer than MAX_USER_STEP (a flat or nearly singular direction) is shortened
        # to it: backtracking alone could halve such a step to nothing and stop the user above
        # tol
        longest = step.abs().amax(-1, keepdim=True).clamp_min(MAX_USER_STEP)
        step = step * (MAX_USER_STEP / longest) * active[..., None]
        slope = (point.grad * step).sum(-1)
        step = step.to(logits.dtype)
        t = active.to(logits.dtype)[..., None]
        n = point.logits.shape[1]

        def at(t: Tensor, last: NewtonPoint | None, redo: Tensor | None) -> NewtonPoint:
            """The point at step lengths ``t``: whole, or ``last`` with the users of the
            ``redo`` pairs evaluated again (while they are at most ``RESTRICT_USERS``)."""
            target = point.logits + t * step
            if last is not None and redo is not None:
                users = redo.any(0).nonzero()[:, 0]
                if users.numel() <= RESTRICT_USERS * n:
                    part = layout.of_users(users)
                    rows = cast(Tensor, part.index)
                    sub = NewtonPoint(
                        z[rows],
                        target[:, users],
                        part,
                        coef_rows[rows],
                        scale,
                        _restricted(penalty, target, users),
                        simplex,
                    )
                    return last.with_users(users, sub)
            return NewtonPoint(z, target, layout, coef_rows, scale, penalty, simplex)

        trial = at(t, None, None)
        for attempt in range(USER_BACKTRACK):
            short = (trial.loss > point.loss + 1e-4 * t[..., 0].double() * slope) & (t[..., 0] > 0)
            if not bool(short.any()):
                break
            # halve the short pairs' steps (the last time: no step for them)
            cut = 0.0 if attempt == USER_BACKTRACK - 1 else 0.5
            t = torch.where(short[..., None], cut * t, t)
            trial = at(t, trial, short)
        return trial, t[..., 0] > 0

    point = NewtonPoint(z, logits, layout, coef_rows, scale, penalty, simplex)
    for _ in range(max_iter):
        big = point.grad.abs().amax(-1) > tol
        converged = not bool(big.any())
        active &= big
        if not bool(active.any()):
            break
        users = active.any(0).nonzero()[:, 0]
        if users.numel() <= RESTRICT_USERS * n_users:
            # the users still moving alone: the others' values stay as they are
            part = point.of_users(users)
            rows = cast(Tensor, part.layout.index)
            sub, moved = newton_step(
                part,
                active[:, users],
                z[rows],
                coef_rows[rows],
                part.layout,
                _restricted(penalty, point.logits, users),
            )
            point = point.with_users(users, sub)
            active[:, users] &= moved
        else:
            point, moved = newton_step(point, active, z, coef_rows, layout, penalty)
            active &= moved
    return point, converged
