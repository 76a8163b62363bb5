"""Telling the pooled saddle from a minimum, and leaving it.

The joint objective has a symmetric stationary set where the model is the pooled reward:
every basis column the same direction (simplex) or no personal columns (signed), or every
user at the population's weights. On it the gradient keeps columns equal and users alike, so
L-BFGS can stop there with a small gradient; whether it does can hang on the last bits of a
float reduction (a thread count). Near that set the loss changes only at second order, by

    (s / K) sum_u (M_u . A b_u) + (ridge / 2) ||A||^2 + (user penalty / 2) sum_u ||b_u||^2

for a column spread ``A`` and user offsets ``b_u``, where ``M_u = sum_{n of u} r_n x_n`` is
user ``u``'s residual-weighted feature sum. The cross term is most negative along the top
singular vectors of ``M`` (d x U): the directions in which the users' residuals disagree.
That is the escape direction, computed without any random draw (a subspace iteration from
the users' own residual sums).

:func:`check_pooled` flags the problems at the pooled configuration; :func:`escape` probes
their loss along the escape direction and moves them downhill where it goes down. A stop the
probe cannot leave is a verified minimum along the direction most likely to leave it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lore_rm.fit.link import joint_weights
from lore_rm.fit.objective import JointObjective

Tensor = torch.Tensor
#: relative spread below which columns are "alike" / users "at the population's weights"
POOLED_SPREAD = 1e-2
POWER_STEPS = 6  # subspace iterations for the escape direction
#: probe step sizes along the escape direction (relative to the basis' norm; logits in units)
PROBE_STEPS = (0.3, 0.1, 0.03, 0.01)


@dataclass
class Spread:
    columns: Tensor  # (G,) ||V - mean column|| / ||V|| (signed: ||personal columns|| / ||V||)
    users: Tensor  # (G,) largest |w_u - mean w| over present users and columns

    @property
    def pooled(self) -> Tensor:
        return (self.columns < POOLED_SPREAD) | (self.users < POOLED_SPREAD)


def spread(basis: Tensor, logits: Tensor, space: str, present: Tensor) -> Spread:
    """How far every problem is from the pooled configuration (see :class:`Spread`)."""
    norm = basis.norm(dim=(1, 2)).clamp_min(1e-30)
    w = joint_weights(logits, space, present)  # (G, U, K)
    mask = present.to(w.dtype)[..., None]
    mean = (w * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    users = ((w - mean).abs() * mask).amax(dim=(1, 2))
    if space == "simplex":
        cols = (basis - basis.mean(2, keepdim=True)).norm(dim=(1, 2)) / norm
    else:
        cols = basis[:, :, 1:].norm(dim=(1, 2)) / norm
    return Spread(cols, users)


def _frame(k: int, space: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(K, K-1): orthonormal directions of the weights that keep the pooled reward's mass:
    centred vectors (simplex), the personal coordinates e_2..e_K (signed)."""
    if space == "simplex":
        centred = torch.eye(k, dtype=torch.float64) - 1.0 / k
        q, _ = torch.linalg.qr(centred)
        frame = q[:, : k - 1]
    else:
        frame = torch.eye(k, dtype=torch.float64)[:, 1:]
    return frame.to(device, dtype)


def escape_direction(
    objective: JointObjective, basis: Tensor, logits: Tensor
) -> tuple[Tensor, Tensor]:
    """The escape direction (dV (G, d, K), dlogits (G, U, K)) of every problem: the top K-1
    singular vectors of its users' residual sums (module docstring), the basis part scaled
    to the basis' norm and the users' part to a largest entry of 1."""
    n_problems, d, k = basis.shape
    r = k - 1
    data, sigma, u = objective.data, objective.sigma, objective.data.user_index
    n_users = data.n_users
    c = objective.residuals(basis, logits)  # (G, N)

    def users_times(a: Tensor) -> Tensor:  # M^T A: (G, d, r) -> (G, U, r)
        raw = (a / sigma[None, :, None]).permute(1, 0, 2).reshape(d, n_problems * r)
        z = data.project(raw).reshape(-1, n_problems, r).permute(1, 0, 2)  # (G, N, r)
        out = torch.zeros(n_problems, n_users, r, dtype=z.dtype, device=z.device)
        out.index_add_(1, u, c[:, :, None] * z)
        return out

    def features_times(b: Tensor) -> Tensor:  # M B: (G, U, r) -> (G, d, r)
        rows = (c[:, :, None] * b[:, u, :]).permute(1, 0, 2).reshape(-1, n_problems * r)
        back = data.backproject(rows.contiguous()).reshape(d, n_problems, r).permute(1, 0, 2)
        return back / sigma[None, :, None]

    # start: the users' residual sums along the first r axes of their rank (deterministic)
    b = torch.zeros(n_problems, n_users, r, device=basis.device)
    ones = torch.ones(n_problems, n_users, 1, device=basis.device)
    a = features_times(ones.expand(-1, -1, r) * _staircase(n_users, r, basis.device))
    for _ in range(POWER_STEPS):
        a = torch.linalg.qr(a)[0]
        b = users_times(a)
        a = features_times(b)
    a = torch.linalg.qr(a)[0]
    b = users_times(a)  # the users' coordinates: cross term -sum_j ||M^T a_j||^2 along -b
    frame = _frame(k, objective.space, basis.dtype, basis.device)
    d_basis = a @ frame.T  # (G, d, K)
    d_basis = (
        d_basis
        * (basis.norm(dim=(1, 2)) / d_basis.norm(dim=(1, 2)).clamp_min(1e-30))[:, None, None]
    )
    d_logits = -(b @ frame.T)
    d_logits = d_logits / d_logits.abs().amax(dim=(1, 2)).clamp_min(1e-30)[:, None, None]
    return d_basis, d_logits


def _staircase(n_users: int, r: int, device: torch.device) -> Tensor:
    """(1, U, r): a fixed, full-rank start for the users' side (no random draw)."""
    i = torch.arange(n_users, dtype=torch.float32, device=device)[:, None]
    j = torch.arange(1, r + 1, dtype=torch.float32, device=device)[None, :]
    return torch.cos(torch.pi * i * j / max(n_users, 1))[None]


def escape(
    objective: JointObjective, basis: Tensor, logits: Tensor, flagged: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Probe the ``flagged`` problems (G,) along their escape direction; returns the new
    basis and logits and which problems moved (those whose loss went down)."""
    if basis.shape[2] < 2 or not bool(flagged.any()):
        return basis, logits, torch.zeros_like(flagged)
    with torch.no_grad():
        d_basis, d_logits = escape_direction(objective, basis, logits)
        here = objective.values(basis, logits)
        best = here.clone()
        best_step = torch.zeros_like(here)
        for step in PROBE_STEPS:
            trial = objective.values(basis + step * d_basis, logits + step * d_logits)
            better = flagged & (trial < best - 1e-12 * here.abs().clamp_min(1.0))
            best = torch.where(better, trial, best)
            best_step = torch.where(better, torch.full_like(best_step, step), best_step)
        moved = best_step > 0
        s = best_step.to(basis.dtype)[:, None, None]
        return basis + s * d_basis, logits + s * d_logits, moved
