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

import torch
import torch.nn.functional as F

from lore_rm.comparisons import Comparisons
from lore_rm.fit.link import joint_weights
from lore_rm.fit.prior import LogitPrior

Tensor = torch.Tensor


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
        if logit_prior is not None:
            self.prior_mean = logit_prior.mean.to(data.device, torch.float32)
            self.prior_precision = logit_prior.precision.to(data.device, torch.float32)

    def projected(self, basis: Tensor) -> Tensor:
        """``X @ (V_g / sigma)`` for every problem: (N, G, K)."""
        g, d, k = basis.shape
        raw = (basis / self.sigma[None, :, None]).permute(1, 0, 2).reshape(d, g * k)
        return self.data.project(raw).reshape(-1, g, k)

    def margins(self, basis: Tensor, logits: Tensor) -> Tensor:
        """Every problem's Bradley–Terry logits (G, N)."""
        z = self.projected(basis)
        w = joint_weights(logits, self.space, self.present)[:, self.data.user_index, :]
        return self.scale * torch.einsum("ngk,gnk->gn", z, w)

    def values(self, basis: Tensor, logits: Tensor) -> Tensor:
        """Every problem's objective (G,), float64 (no gradient)."""
        m = self.margins(basis, logits)
        out = (F.softplus(-m) * self.coef).sum(1, dtype=torch.float64)
        out = out + 0.5 * self.decay.double() * (basis.double() ** 2).sum((1, 2))
        lg = logits.double()
        if self.space == "simplex":
            out = out + 0.5 * self.user_l2 * (lg**2).sum((1, 2)) / self.n_users
        else:
            out = out + 0.5 * self.signed_prior * (lg**2).sum((1, 2)) / self.row_total
        if self.prior_mean is not None:
            diff = lg - self.prior_mean.double()
            quad = ((diff @ self.prior_precision.double()) * diff).sum((1, 2))
            out = out + 0.5 * quad / self.row_total
        if self.reference is not None:
            alpha, head, kind = self.reference
            from lore_rm.fit.solvers import reference_penalty

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
        return -torch.sigmoid(-m) * self.coef * self.scale

    def value_and_grad(self, basis: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The summed objective (float64 scalar) and its gradients w.r.t. ``basis`` (G, d, K)
        and ``logits`` (G, U, K)."""
        n_problems, d, k = basis.shape
        u = self.data.user_index
        z = self.projected(basis)  # (N, G, K)
        w = joint_weights(logits, self.space, self.present)  # (G, U, K)
        wr = w[:, u, :]  # (G, N, K)
        m = self.scale * torch.einsum("ngk,gnk->gn", z, wr)
        loss = (F.softplus(-m) * self.coef).sum(dtype=torch.float64)
        c = -torch.sigmoid(-m) * self.coef * self.scale  # dL/dm times s: (G, N)
        g_z = (c.T[:, :, None] * wr.permute(1, 0, 2)).reshape(-1, n_problems * k)  # (N, G*K)
        g_raw = self.data.backproject(g_z).reshape(d, n_problems, k).permute(1, 0, 2)
        g_basis = g_raw / self.sigma[None, :, None] + self.decay[:, None, None] * basis
        loss = loss + 0.5 * (self.decay.double() * (basis.double() ** 2).sum((1, 2))).sum()
        g_w = torch.zeros_like(w)
        g_w.index_add_(1, u, c[:, :, None] * z.permute(1, 0, 2))
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
        if self.prior_mean is not None:
            diff = logits - self.prior_mean
            pd = diff @ self.prior_precision
            loss = loss + (0.5 * (pd.double() * diff.double()).sum((1, 2)) / self.row_total).sum()
            g_logits = g_logits + pd / self.row_total.to(pd.dtype)[:, None, None]
        if self.reference is not None:
            extra, g_ref = self._reference(basis)
            loss, g_basis = loss + extra, g_basis + g_ref
        return loss, g_basis, g_logits

    def _reference(self, basis: Tensor) -> tuple[Tensor, Tensor]:
        from lore_rm.fit.solvers import reference_penalty

        alpha, head, kind = self.reference  # type: ignore[misc]
        with torch.enable_grad():
            b = basis.detach().requires_grad_(True)
            total = sum(
                alpha * reference_penalty(b[g] / self.sigma[:, None], head, kind)
                for g in range(b.shape[0])
            )
            (grad,) = torch.autograd.grad(total, b)
        return total.detach().double(), grad
