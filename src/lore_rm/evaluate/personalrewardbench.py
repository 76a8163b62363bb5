"""PersonalRewardBench's score: pairwise accuracy over both orderings of every test pair.

The benchmark (SynthesizeMe) shows each test pair to a judge twice, chosen first and chosen
second, and scores every judgment: 1 when the judge names the chosen response, else 0 (a
tie names neither). Its headline is the accuracy over all judgments with a 95% bootstrap
interval over judgments; per user, the accuracy over that user's judgments. A reward model
judges a pair by comparing the two rewards, so both orderings agree and a tie (equal
rewards) is wrong in both: the score equals the pairwise accuracy with ties wrong, counted
over 2 judgments per pair as the benchmark counts them. Intervals are
:func:`lore_rm.metrics.bootstrap_mean`'s (percentile method): over judgments for the pooled
accuracy, over users for the mean of per-user accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.fit.model import LowRankReward
from lore_rm.metrics import MeanInterval, bootstrap_mean
from lore_rm.protocol import ProtocolSplit

Tensor = torch.Tensor


@dataclass(frozen=True)
class BenchmarkScore:
    """The benchmark's figures for one model on the test pairs."""

    pooled: MeanInterval  # accuracy over every judgment, interval over judgments
    user_mean: MeanInterval  # mean over users of per-user accuracy, interval over users
    per_user: dict[str, float]
    pairs: int
    judgments: int
    ties: int

    def to_dict(self) -> dict:
        return {
            "accuracy": self.pooled.to_dict(),
            "user_mean_accuracy": self.user_mean.to_dict(),
            "users": len(self.per_user),
            "pairs": self.pairs,
            "judgments": self.judgments,
            "ties": self.ties,
            "level": self.pooled.level,
            "per_user": self.per_user,
        }


def both_orderings(margins: Tensor) -> Tensor:
    """(2N,) judgments, 1.0 where the judge names the chosen response: first each pair shown
    (chosen, rejected) -- the first is named when ``r(chosen) > r(rejected)`` -- then
    (rejected, chosen) -- the second is named when ``r(rejected) < r(chosen)``."""
    m = margins.detach().cpu().double()
    chosen_first = m > 0
    chosen_second = -m < 0
    return torch.cat([chosen_first, chosen_second]).double()


def score_margins(
    parts: list[tuple[Tensor, Comparisons]], *, n_boot: int = 2000, seed: int = 0
) -> BenchmarkScore:
    """The score of the test pairs of each (margins, comparisons) part (users of different
    parts are different users)."""
    judged, per_user, pairs, ties = [], {}, 0, 0
    for margins, data in parts:
        if not data.n:
            continue
        j = both_orderings(margins)
        judged.append(j)
        n = data.n
        # a user's accuracy over their 2n judgments: the mean of the two orderings per pair
        acc = _per_user_mean((j[:n] + j[n:]) / 2, data)
        per_user.update({u: a for u, a in zip(data.user_ids, acc, strict=True) if a == a})
        pairs += n
        ties += int((margins == 0).sum())
    outcomes = torch.cat(judged) if judged else torch.zeros(0, dtype=torch.float64)
    values = torch.tensor(list(per_user.values()), dtype=torch.float64)
    return BenchmarkScore(
        pooled=bootstrap_mean(outcomes, n_boot=n_boot, seed=seed),
        user_mean=bootstrap_mean(values, n_boot=n_boot, seed=seed),
        per_user=per_user,
        pairs=pairs,
        judgments=2 * pairs,
        ties=ties,
    )


def _per_user_mean(values: Tensor, data: Comparisons) -> list[float]:
    index = data.user_index.cpu()
    total = torch.bincount(index, weights=values, minlength=data.n_users)
    count = torch.bincount(index, minlength=data.n_users).to(torch.float64)
    return torch.where(count > 0, total / count.clamp_min(1), torch.nan).tolist()


def score_personalrewardbench(
    model: LowRankReward, split: ProtocolSplit, *, n_boot: int = 2000, seed: int = 0
) -> BenchmarkScore:
    """Score ``model`` on the test pairs of a PersonalRewardBench dataset (``seen-test`` and
    ``unseen-test``). Test users the model does not know are first personalised (on a copy)
    from their own train + val comparisons (``seen-train`` / ``unseen-fewshot``), as the
    benchmark fits each user; a user with none gets the population's mean weights."""
    known = set(model.users_)
    scored = model
    for part in (split.seen_train, split.unseen_fewshot):
        if not part.n:
            continue
        unknown = torch.tensor([u not in known for u in part.user_ids], dtype=torch.bool)
        rows = unknown[part.user_index.cpu()]
        if bool(rows.any()):
            if scored is model:
                scored = model.copy()
            scored.personalize(part.subset(rows))
    parts = [
        (scored.margins(data, unknown="mean"), data)
        for data in (split.seen_test, split.unseen_test)
    ]
    return score_margins(parts, n_boot=n_boot, seed=seed)
