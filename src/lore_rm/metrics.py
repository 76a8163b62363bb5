"""Pairwise accuracy as pure tensor functions, and the four standard numbers.

The functions take margins (N,) and each comparison's user index (N,); a
:class:`~lore_rm.comparisons.Comparisons` may stand in for the index (its ``user_index`` and
``n_users`` are used). They sit below the model and the protocols, so ``LowRankReward.score``
and every protocol share them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Protocol

import torch

Tensor = torch.Tensor

METRICS = ("train", "seen_test", "fewshot_train", "unseen_test")


class _Indexed(Protocol):
    @property
    def user_index(self) -> Tensor: ...

    @property
    def n_users(self) -> int: ...


def _index(users: Tensor | _Indexed, n_users: int | None) -> tuple[Tensor, int]:
    if isinstance(users, Tensor):
        index = users
        n = int(index.max()) + 1 if n_users is None and index.numel() else (n_users or 0)
        return index.cpu(), n
    return users.user_index.cpu(), users.n_users if n_users is None else n_users


def user_hits(
    margins: Tensor,
    user_index: Tensor,
    n_users: int,
    weight: Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """The per-user accuracy kernel: right answers and comparisons of each user, (...,
    n_users) each, from margins (..., N) (a batch of rows: one per fold, say) and each
    comparison's user (N,). A comparison is right when its margin is strictly positive (a
    tie counts as wrong) and counts with its ``weight`` (..., N) (default 1). Computed in
    ``dtype`` (default the margins') on the margins' device."""
    dtype = dtype or margins.dtype
    w = torch.ones(margins.shape, dtype=dtype, device=margins.device)
    if weight is not None:
        w = weight.to(dtype)
    right = (margins > 0).to(dtype) * w
    shape = (*margins.shape[:-1], n_users)
    hits = torch.zeros(shape, dtype=dtype, device=margins.device).index_add_(-1, user_index, right)
    total = torch.zeros_like(hits).index_add_(-1, user_index, w)
    return hits, total


def per_user_accuracy(
    margins: Tensor, users: Tensor | _Indexed, n_users: int | None = None
) -> Tensor:
    """Accuracy (n_users,) of each user (NaN where a user has no comparison).

    ``users``: each comparison's user index (N,), or a ``Comparisons``. A comparison is right
    when its margin is strictly positive: a tie counts as wrong.
    """
    u, n = _index(users, n_users)
    right, total = user_hits(margins.cpu(), u, n, dtype=torch.float64)
    return torch.where(total > 0, right / total.clamp_min(1), torch.full_like(total, math.nan))


def mean_accuracy(
    margins: Tensor, users: Tensor | _Indexed, n_users: int | None = None
) -> tuple[float, float]:
    """Mean and standard deviation over users of per-user accuracy."""
    acc = per_user_accuracy(margins, users, n_users)
    acc = acc[~torch.isnan(acc)]
    if acc.numel() == 0:
        return math.nan, math.nan
    std = float(acc.std(unbiased=False)) if acc.numel() > 1 else 0.0
    return float(acc.mean()), std


@dataclass(frozen=True, eq=False)
class FourNumbers(Mapping[str, float]):
    """The four standard numbers (means over users) and their standard deviations.

    Reads like the dict it used to be: ``numbers["unseen_test"]``, ``dict(numbers)``,
    ``row.update(numbers)``; compares equal to a dict with the same items.
    """

    train: float
    train_std: float
    seen_test: float
    seen_test_std: float
    fewshot_train: float
    fewshot_train_std: float
    unseen_test: float
    unseen_test_std: float

    def __getitem__(self, key: str) -> float:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, float]:
        return dict(self)


def interval_coverage(truth: Tensor, mean: Tensor, std: Tensor, level: float = 0.9) -> float:
    """Share of ``truth`` inside the central ``level`` normal intervals ``mean +- z std``."""
    if not truth.numel():
        return math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    inside = (truth.double() - mean.double()).abs() <= z * std.double()
    return float(inside.double().mean())


def expected_calibration_error(proba: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of ``P(chosen preferred)`` for comparisons whose outcome is
    the chosen response (every stored comparison).

    Each prediction's confidence ``max(p, 1 - p)`` is binned into ``n_bins`` equal bins on
    [0.5, 1]; the ECE is the rows-weighted mean of ``|accuracy - mean confidence|`` over bins
    (a prediction is right when ``p > 0.5``).
    """
    p = proba.detach().cpu().to(torch.float64).flatten()
    if p.numel() == 0:
        return math.nan
    conf = torch.maximum(p, 1.0 - p)
    right = (p > 0.5).to(torch.float64)
    bins = ((conf - 0.5) * 2.0 * n_bins).long().clamp(0, n_bins - 1)
    total = torch.bincount(bins, minlength=n_bins).to(torch.float64)
    gap = torch.bincount(bins, weights=right, minlength=n_bins) - torch.bincount(
        bins, weights=conf, minlength=n_bins
    )
    return float(gap.abs().sum() / total.sum())


@dataclass(frozen=True)
class MeanInterval:
    """A mean over users with its bootstrap interval (``level``, percentile method)."""

    mean: float
    lower: float
    upper: float
    n: int
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.n > 0 and (self.lower > 0.0 or self.upper < 0.0)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lower": self.lower, "upper": self.upper, "n": self.n}


def bootstrap_mean(
    values: Tensor, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> MeanInterval:
    """The mean of ``values`` (one per user; NaN rows dropped) and a percentile bootstrap
    interval over users: ``n_boot`` resamples of the users with replacement, in one batched
    draw. For a paired difference pass the per-user differences."""
    v = values.detach().cpu().to(torch.float64).flatten()
    v = v[~torch.isnan(v)]
    n = int(v.numel())
    if n == 0:
        return MeanInterval(math.nan, math.nan, math.nan, 0, level)
    mean = float(v.mean())
    if n == 1:
        return MeanInterval(mean, mean, mean, 1, level)
    gen = torch.Generator().manual_seed(seed)
    draws = v[torch.randint(n, (n_boot, n), generator=gen)].mean(1)
    tail = (1.0 - level) / 2.0
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return MeanInterval(mean, float(lo), float(hi), n, level)
