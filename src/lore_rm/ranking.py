"""Best-of-N for a user: candidate responses ranked by the user's personalised reward.

Each group is one prompt's candidates, scored for one user. A :class:`Ranking` gives the
rewards in the order posted, the candidates best first (equal rewards keep their posted
order) and, with a posterior, each reward's interval at ``level`` (the delta-method std of
the reward under the Laplace posterior of the user's logits, ``reward ± z * std``).
``uncertain`` is true when the intervals of the two best candidates overlap. That test is
conservative: both rewards move with the same user weights, so their difference is often
surer than two overlapping intervals suggest.

Ranking many groups is one vectorised sort (:func:`rank_groups`); only building the result
objects loops over groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from lore_rm.errors import DataError

LEVEL = 0.9  # the default interval level, as the demo's calibration tables use


@dataclass(frozen=True)
class Ranking:
    """One prompt's candidates for one user."""

    rewards: list[float]  # in the order posted
    ranking: list[int]  # candidate indices, best first
    best: int
    known: bool  # False: the user has no weights; the population's were used
    lower: list[float] | None  # the rewards' intervals (None: no posterior for this user)
    upper: list[float] | None
    uncertain: bool | None  # the two best intervals overlap (None without intervals)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interval_z(level: float) -> float:
    """The normal quantile of a central interval of probability ``level``."""
    if not 0.0 < float(level) < 1.0:
        raise DataError(f"level must be between 0 and 1 (exclusive), got {level!r}")
    return NormalDist().inv_cdf(0.5 + float(level) / 2.0)


def order_within_groups(values: Tensor, sizes: Tensor) -> Tensor:
    """For rows split into consecutive groups of ``sizes``: each group's row positions
    (0-based within the group), highest value first, ties in row order; flattened (M,)."""
    sizes = sizes.to(torch.int64)
    group = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    by_value = torch.argsort(values, descending=True, stable=True)
    order = by_value[torch.argsort(group[by_value], stable=True)]
    starts = torch.cumsum(sizes, 0) - sizes
    return order - starts[group]


def rank_groups(
    rewards: Tensor,
    sizes: Sequence[int] | Tensor,
    *,
    known: Sequence[bool] | Tensor,
    std: Tensor | None = None,
    level: float = LEVEL,
) -> list[Ranking]:
    """Rankings of consecutive groups of ``rewards`` (M,), ``sizes`` rows each.

    ``known`` has one flag per group. ``std`` (M,): each reward's std; NaN for rows without
    one (their group gets no interval)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    sizes_t = torch.as_tensor(sizes, dtype=torch.int64).reshape(-1)
    if bool((sizes_t < 1).any()):
        raise DataError("every group needs at least one candidate")
    if int(sizes_t.sum()) != rewards.shape[0]:
        raise DataError(f"group sizes add up to {int(sizes_t.sum())}, not {rewards.shape[0]}")
    known_l = [bool(k) for k in torch.as_tensor(known).reshape(-1).tolist()]
    if len(known_l) != len(sizes_t):
        raise DataError(f"{len(known_l)} known flags for {len(sizes_t)} groups")
    order = order_within_groups(rewards, sizes_t)
    starts = torch.cumsum(sizes_t, 0) - sizes_t
    lower = upper = None
    overlap = None
    if std is not None:
        half = interval_z(level) * torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        lower, upper = rewards - half, rewards + half
        first = order[starts] + starts
        second = order[torch.minimum(starts + 1, starts + sizes_t - 1)] + starts
        overlap = (sizes_t > 1) & (lower[first] <= upper[second])
    out = []
    for g, (start, size) in enumerate(zip(starts.tolist(), sizes_t.tolist(), strict=True)):
        rows = slice(start, start + size)
        ranked = order[rows].tolist()
        has_interval = lower is not None and bool(torch.isfinite(lower[rows]).all())
        out.append(
            Ranking(
                rewards=rewards[rows].tolist(),
                ranking=ranked,
                best=ranked[0],
                known=known_l[g],
                lower=lower[rows].tolist() if has_interval else None,  # type: ignore[index]
                upper=upper[rows].tolist() if has_interval else None,  # type: ignore[index]
                uncertain=bool(overlap[g]) if has_interval else None,  # type: ignore[index]
            )
        )
    return out


def candidate_groups(
    candidates: Tensor | Sequence[Tensor], users: str | None | Sequence[str | None]
) -> tuple[Tensor, list[str | None], list[str | None], list[int]]:
    """Candidates to rank, checked and stacked: ``candidates`` is one prompt's candidates
    (N, d) or a list of such tensors, one per prompt; ``users`` one id for all prompts or one
    per prompt (``None``: the population's weights). Returns the stacked embeddings (M, d),
    each row's user, each group's user and the group sizes."""
    given: list[Any] = [candidates] if isinstance(candidates, Tensor) else list(candidates)
    if not given:
        raise DataError("no candidates to rank")
    groups = [torch.as_tensor(g) for g in given]
    for i, g in enumerate(groups):
        if g.ndim != 2 or g.shape[0] < 1:
            raise DataError(f"candidates[{i}] must have shape (N >= 1, d), got {tuple(g.shape)}")
    if users is None or isinstance(users, str):
        per_group: list[str | None] = [users] * len(groups)
    else:
        per_group = list(users)
        if len(per_group) != len(groups):
            raise DataError(f"{len(per_group)} users for {len(groups)} groups of candidates")
    sizes = [int(g.shape[0]) for g in groups]
    rows = [u for u, n in zip(per_group, sizes, strict=True) for _ in range(n)]
    return torch.cat(groups), rows, per_group, sizes
