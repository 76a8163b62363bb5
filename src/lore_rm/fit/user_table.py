"""The users a model knows: their ids, their weight rows and the population's weights.

:class:`UserTable` is the state behind ``LowRankReward.users_``, ``user_weights_`` and
``population_weights_``. Looking a user up is O(1) (the id index is kept with the rows);
adding users costs O(added) amortised, whatever the number already known: the weight rows
live at the front of a buffer with spare capacity, doubled when full.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lore_rm.errors import DataError, LoreError, UnknownUserError

Tensor = torch.Tensor
UNKNOWN = ("error", "mean")


class UserTable:
    """User ids (in row order), their weights (U, K) and the population's weights (K,)."""

    def __init__(self, ids: Sequence[str], weights: Tensor, population: Tensor) -> None:
        self._reset([str(u) for u in ids], weights)
        self.population = population

    def _reset(self, ids: list[str], weights: Tensor) -> None:
        if weights.ndim != 2 or weights.shape[0] != len(ids):
            raise DataError(
                f"user weights must have shape ({len(ids)}, K), got {tuple(weights.shape)}"
            )
        self._ids = ids
        self._buffer = weights
        self._n = len(ids)
        self._index = {u: i for i, u in enumerate(ids)}

    # ---- reading ----------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """The ids in row order (the table's own list: read it, do not change it)."""
        return self._ids

    @property
    def weights(self) -> Tensor:
        """The weight rows (U, K), a view: writing a row writes the table."""
        return self._buffer[: self._n]

    @property
    def k(self) -> int:
        return int(self._buffer.shape[1])

    def __len__(self) -> int:
        return self._n

    def __contains__(self, user: object) -> bool:
        return user is not None and str(user) in self._index

    def rows(self, users: Sequence[str | None]) -> Tensor:
        """Row of each id (int64), -1 for ``None`` and for ids the table does not hold."""
        index = self._index
        return torch.tensor(
            [-1 if u is None else index.get(str(u), -1) for u in users], dtype=torch.int64
        )

    def lookup(self, users: Sequence[str | None], unknown: str = "error") -> tuple[Tensor, Tensor]:
        """Each user's own weights (M, K) and which users are known (M,) bool. Unknown users
        (``None`` included) are an :class:`UnknownUserError`, or with ``unknown="mean"`` get
        the population's weights."""
        if unknown not in UNKNOWN:
            raise LoreError(f"unknown must be 'error' or 'mean', got {unknown!r}")
        rows = self.rows(users)
        known = rows >= 0
        if unknown == "error" and not bool(known.all()):
            bad = users[int((~known).nonzero()[0])]
            if bad is None:
                raise UnknownUserError(
                    "user id None: a missing id is an unknown user; pass unknown='mean' to "
                    "give it the population's mean weights"
                )
            raise UnknownUserError(
                f"unknown user id {bad!r}: the model knows {self._n} users; "
                "personalize() them first or pass unknown='mean'"
            )
        w = torch.empty(len(users), self.k)
        if bool(known.any()):
            w[known] = self.weights[rows[known]]
        if not bool(known.all()):
            w[~known] = self.population
        return w, known

    def subset(self, users: Sequence[str | None]) -> UserTable:
        """A new table of the ``users`` this one holds (their rows copied), in the order
        given, with the same population weights."""
        rows = self.rows(list(dict.fromkeys(users)))
        rows = rows[rows >= 0]
        return UserTable(
            [self._ids[i] for i in rows.tolist()], self.weights[rows].clone(), self.population
        )

    # ---- changing ---------------------------------------------------------------------------
    def set(self, ids: Sequence[str], weights: Tensor) -> None:
        """Set the weights (len(ids), K) of ``ids``, adding the ids not held yet (in order)."""
        ids = [str(u) for u in ids]
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (len(ids), self.k):
            raise DataError(
                f"weights must have shape ({len(ids)}, {self.k}), got {tuple(weights.shape)}"
            )
        new = list(dict.fromkeys(u for u in ids if u not in self._index))
        if new:
            self._grow(len(new))
            first = len(self._ids)
            self._ids.extend(new)
            self._index.update((u, first + i) for i, u in enumerate(new))
        rows = torch.tensor([self._index[u] for u in ids], dtype=torch.int64)
        self.weights[rows] = weights.to(self._buffer.dtype)

    def drop(self, ids: Iterable[str]) -> list[str]:
        """Remove ``ids`` (they are unknown from now on); returns those that were held.
        Costs one pass over the users."""
        gone = set(ids)
        removed = [u for u in self._ids if u in gone]
        if not removed:
            return []
        keep = [i for i, u in enumerate(self._ids) if u not in gone]
        weights = self.weights[torch.tensor(keep, dtype=torch.int64)].clone()
        self._reset([self._ids[i] for i in keep], weights)
        return removed

    def _grow(self, extra: int) -> None:
        """``extra`` zero rows after the last one, in spare capacity when there is some."""
        n = self._n
        if self._buffer.shape[0] < n + extra:
            buffer = torch.zeros(max(n + extra, 2 * n, 16), self.k, dtype=self._buffer.dtype)
            buffer[:n] = self._buffer[:n]
            self._buffer = buffer
        self._buffer[n : n + extra] = 0
        self._n = n + extra
