"""How the users' Newton solve lays out the comparison rows for its per-user sums.

Every step of :func:`lore_rm.fit.objective.newton_point` sums each user's rows: their loss,
gradient and Hessian (an outer product per row). Two layouts give the same sums:

* :class:`RowLayout`: the rows as they come; a user's weights are gathered onto each row and
  the sums are ``index_add_`` over the user index (the outer products materialised per row).
* :class:`PaddedLayout`: the rows regrouped user by user, every user padded with zero-weight
  rows to the largest user's count, as a (users, count, ...) tensor: a user's weights
  broadcast over their rows, the sums are reductions over the count axis and the Hessian one
  batched product: 1.3-1.8x faster per step where users have about as many rows each
  (``bench/users_solve.py``); :func:`user_layout` takes it while the padding adds at most half
  the rows again.

The two add in another order, so their sums agree to float32 rounding, not bit for bit.
Either gives the layout of some users alone (``of_users``): once most users have stopped, a
Newton step, or a backtracked trial, evaluates the others there and gets the sums the whole
layout gives them, bit for bit.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
#: the padded layout is used while users x (largest count) <= this x rows
MAX_PADDING = 1.5


class RowLayout:
    """The rows in their own order (N, ...)."""

    def __init__(self, u: Tensor, n_users: int) -> None:
        self.u = u
        self.n_users = n_users
        #: a sub-layout's entries in its parent's tensors (:meth:`of_users`)
        self.index: Tensor | None = None

    def of_users(self, users: Tensor) -> RowLayout:
        """The layout of ``users``' rows alone (ascending ``users``, renumbered from 0): its
        entries are ``x[sub.index]`` of this layout's tensors, in their order, so every user's
        sums add the same rows in the same order. Its :meth:`rows` and :meth:`to_rows` are
        not defined."""
        number = torch.full((self.n_users,), -1, dtype=self.u.dtype, device=self.u.device)
        number[users] = torch.arange(users.numel(), dtype=self.u.dtype, device=self.u.device)
        renumbered = number[self.u]
        index = (renumbered >= 0).nonzero()[:, 0]
        sub = RowLayout(renumbered[index], users.numel())
        sub.index = index
        return sub

    def rows(self, x: Tensor) -> Tensor:
        """A per-row tensor (N, ...) in this layout."""
        return x

    def to_rows(self, x: Tensor) -> Tensor:
        """A tensor of this layout back to one entry per row (N, ...)."""
        return x

    def per_row(self, per_user: Tensor) -> Tensor:
        """Users' values (U, ...) on their rows."""
        return per_user[self.u]

    def user_sum(self, x: Tensor) -> Tensor:
        """Every user's sum of ``x`` over their rows: (U, ...), in ``x``'s dtype."""
        out = torch.zeros(self.n_users, *x.shape[1:], dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.u, x)

    def user_outer_sum(self, a: Tensor, b: Tensor) -> Tensor:
        """Every user's ``sum_n a_n b_n^T`` over the last axis: (U, ..., K, K)."""
        return self.user_sum(a[..., :, None] * b[..., None, :])


class PaddedLayout(RowLayout):
    """The rows user by user, padded to the largest count: (U, C, ...)."""

    def __init__(self, u: Tensor, n_users: int, counts: Tensor, width: int) -> None:
        super().__init__(u, n_users)
        self.width = width
        order = torch.argsort(u, stable=True)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(u)
        slot[order] = u[order] * width + torch.arange(u.numel(), device=u.device) - first[u[order]]
        self.slot = slot  # every row's place in the (U * C) padded rows

    def rows(self, x: Tensor) -> Tensor:
        out = torch.zeros(self.n_users * self.width, *x.shape[1:], dtype=x.dtype, device=x.device)
        out[self.slot] = x
        return out.view(self.n_users, self.width, *x.shape[1:])

    def to_rows(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:  # broadcast over a user's rows
            return x[self.u, 0]
        return x.reshape(self.n_users * self.width, *x.shape[2:])[self.slot]

    def per_row(self, per_user: Tensor) -> Tensor:
        return per_user[:, None]

    def user_sum(self, x: Tensor) -> Tensor:
        return x.sum(1)

    def user_outer_sum(self, a: Tensor, b: Tensor) -> Tensor:
        a = a.movedim(1, -1)  # (U, ..., K, C)
        b = b.movedim(1, -2)  # (U, ..., C, K)
        return a @ b

    def of_users(self, users: Tensor) -> PaddedLayout:
        """This layout's sums for the padded rows of ``users`` alone (``x[sub.index]``, i.e.
        ``x[users]``, of a padded tensor): :meth:`per_row`, :meth:`user_sum` and
        :meth:`user_outer_sum`, not the rows' order (:meth:`rows`, :meth:`to_rows`)."""
        sub = PaddedLayout.__new__(PaddedLayout)
        sub.u, sub.slot, sub.width, sub.n_users = self.u, self.slot, self.width, users.numel()
        sub.index = users
        return sub


def user_layout(u: Tensor, n_users: int) -> RowLayout:
    """The padded layout where padding adds at most half the rows again, else the rows'."""
    n = u.numel()
    if not n:
        return RowLayout(u, n_users)
    counts = torch.bincount(u, minlength=n_users)
    width = int(counts.max())
    if n_users * width > MAX_PADDING * n:
        return RowLayout(u, n_users)
    return PaddedLayout(u, n_users, counts, width)
