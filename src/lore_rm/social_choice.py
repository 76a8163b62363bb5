"""Group choice: one ranking of candidates from several users' rewards.

Each user ranks the candidates by their personalised reward; equal rewards (the same
response posted twice, for one) are a tie in that user's ranking. Three rules aggregate
the users' rankings, each written for rankings with ties and vectorised over users and
candidates (``rewards`` is a users x candidates matrix):

``borda``
    a user gives each candidate one point per candidate it beats and half a point per
    other candidate it ties with (0 to N - 1 points); the scores are summed over users.
``plurality``
    a user gives one point to their best candidate, split equally among candidates tied
    for best; summed over users.
``copeland``
    for every pair, the candidate more users rank higher wins the pair; a candidate scores
    one point per pair won and half a point per pair drawn (users indifferent between the
    two do not count).

Candidates with equal scores share a tier: rankings are lists of tiers, best first, and
ties are explicit. (A maintained social-choice library, ``pref-voting``, implements these
rules and many more, but it pulls in numba, OR-Tools, matplotlib, seaborn, nashpy and
scipy and scores one profile at a time in Python: heavier than the three rules it would
replace. ``docs/serving.md`` says so.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lore_rm.errors import DataError

Rule = Literal["borda", "plurality", "copeland"]
RULES: tuple[str, ...] = ("borda", "plurality", "copeland")
TIE_TOL = 1e-9  # scores closer than this are a tie (plurality's shares are fractions)
_PAIR_CHUNK = 1 << 22  # users x candidates^2 comparisons per pass of copeland


def _check(rewards: Tensor) -> Tensor:
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise DataError(f"rewards must be a (users, candidates) matrix, got {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()):
        raise DataError("rewards hold NaN or inf")
    return r


def borda(rewards: Tensor) -> Tensor:
    """Borda scores (N,) over users' rankings with ties (half a point per tie)."""
    r = _check(rewards)
    ranked = torch.sort(r, dim=1).values
    below = torch.searchsorted(ranked, r, right=False)
    at_most = torch.searchsorted(ranked, r, right=True)
    return (below + 0.5 * (at_most - below - 1)).sum(0)


def plurality(rewards: Tensor) -> Tensor:
    """Plurality scores (N,): each user's point split among their best candidates."""
    r = _check(rewards)
    top = (r == r.max(dim=1, keepdim=True).values).to(torch.float64)
    return (top / top.sum(dim=1, keepdim=True)).sum(0)


def pairwise_margins(rewards: Tensor) -> Tensor:
    """(N, N): how many users rank candidate a above b, less how many rank b above a."""
    r = _check(rewards)
    n = r.shape[1]
    net = torch.zeros(n, n, dtype=torch.float64)
    step = max(1, _PAIR_CHUNK // max(1, n * n))
    for start in range(0, r.shape[0], step):  # chunks of users bound the memory
        part = r[start : start + step]
        net += torch.sign(part[:, :, None] - part[:, None, :]).sum(0)
    return net


def copeland(rewards: Tensor) -> Tensor:
    """Copeland scores (N,): pairwise majority wins, half a point per drawn pair."""
    net = pairwise_margins(rewards)
    return (net > 0).sum(1).to(torch.float64) + 0.5 * ((net == 0).sum(1) - 1).to(torch.float64)


_SCORES = {"borda": borda, "plurality": plurality, "copeland": copeland}


def scores(rewards: Tensor, rule: str) -> Tensor:
    """The aggregate score (N,) of every candidate under ``rule``."""
    if rule not in _SCORES:
        raise DataError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    return _SCORES[rule](rewards)


def tiers(values: Tensor, tol: float = 0.0) -> list[list[int]]:
    """Indices of ``values`` (N,) in tiers, highest first; values within ``tol`` of the
    previous one in sorted order join its tier; each tier in index order."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    order = torch.argsort(v, descending=True, stable=True)
    s = v[order]
    new = torch.ones(len(s), dtype=torch.bool)
    new[1:] = (s[:-1] - s[1:]) > tol
    counts = torch.bincount(torch.cumsum(new.to(torch.int64), 0) - 1).tolist()
    return [sorted(t.tolist()) for t in torch.split(order, counts)]


def user_tiers(rewards: Tensor) -> list[list[list[int]]]:
    """Each user's ranking (a row of ``rewards``) as tiers of exactly equal rewards."""
    r = _check(rewards)
    order = torch.argsort(r, dim=1, descending=True, stable=True)
    s = torch.gather(r, 1, order)
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, :-1] != s[:, 1:]
    out = []
    for row, starts in zip(order.tolist(), new.tolist(), strict=True):
        user: list[list[int]] = []
        for index, start in zip(row, starts, strict=True):
            if start:
                user.append([])
            user[-1].append(index)
        out.append([sorted(t) for t in user])
    return out


def aggregate(rewards: Tensor, rule: str) -> tuple[Tensor, list[list[int]]]:
    """The aggregate scores (N,) and ranking (tiers, best first) of ``rewards`` (U, N)."""
    s = scores(rewards, rule)
    return s, tiers(s, TIE_TOL)
