"""Pairwise accuracy: the metrics every protocol and ``LowRankReward.score`` use."""

from __future__ import annotations

import math

import torch

from lore_rm.comparisons import Comparisons

Tensor = torch.Tensor


def per_user_accuracy(margins: Tensor, comparisons: Comparisons) -> Tensor:
    """Accuracy of each user of ``comparisons.user_ids`` (NaN where a user has none).

    A comparison is right when its margin is strictly positive: a tie counts as wrong.
    """
    u = comparisons.user_index.cpu()
    n = comparisons.n_users
    right = torch.bincount(u, weights=(margins.cpu() > 0).to(torch.float64), minlength=n)
    total = torch.bincount(u, minlength=n).to(torch.float64)
    return torch.where(total > 0, right / total.clamp_min(1), torch.full_like(total, math.nan))


def mean_accuracy(margins: Tensor, comparisons: Comparisons) -> tuple[float, float]:
    """Mean and standard deviation over users of per-user accuracy."""
    acc = per_user_accuracy(margins, comparisons)
    acc = acc[~torch.isnan(acc)]
    if acc.numel() == 0:
        return math.nan, math.nan
    std = float(acc.std(unbiased=False)) if acc.numel() > 1 else 0.0
    return float(acc.mean()), std
