"""Pool-based active-learning sweep for new users (issue #9).

Each unseen user's few-shot comparisons are their candidate pool (the labels stay hidden
until a question is asked). Round after round, every user is asked ``batch`` questions chosen
by :meth:`LowRankReward.select_questions` under their current Laplace posterior; the answers
are revealed from the pool's labels, the users' weights are refitted on everything they
answered (the ordinary few-shot fit) and their posterior recomputed. Unseen-user test
accuracy is recorded after every round. All users move together: one fit, one posterior
and one selection per round, whatever the number of users.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.errors import LoreError
from lore_rm.evaluate.protocols import sample_shots
from lore_rm.fit.active import CRITERIA
from lore_rm.fit.model import LowRankReward
from lore_rm.metrics import mean_accuracy
from lore_rm.progress import progress_bar
from lore_rm.protocol import ProtocolSplit


def ask_sequence(
    seen: LowRankReward,
    pool: Comparisons,
    test: Comparisons,
    questions: int,
    criterion: str,
    *,
    batch: int = 1,
    seed: int = 0,
) -> list[float]:
    """Unseen-user test accuracy after 0, batch, 2 batch, ... up to ``questions`` answers.

    ``pool`` holds every user's candidates with their labels (row orientation = the answer).
    """
    model = seen.copy()
    users = list(pool.user_ids)
    asked = torch.zeros(pool.n, dtype=torch.bool)
    accuracy = [mean_accuracy(model.margins(test, unknown="mean"), test)[0]]
    step = 0
    for done in range(0, questions, batch):
        answered = pool.subset(asked)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*have no comparisons")
            post = model.weights_posterior(answered, users=users, unknown="mean")
        left = (~asked).nonzero().flatten()
        sel = model.select_questions(
            pool.subset(left),
            min(batch, questions - done),
            posterior=post,
            criterion=criterion,
            seed=seed * 100_003 + step,
            asked=answered,
        )
        asked[left[sel.flat()]] = True
        model.personalize(pool.subset(asked))
        accuracy.append(mean_accuracy(model.margins(test, unknown="mean"), test)[0])
        step += 1
    return accuracy


def active_sweep(
    seen: LowRankReward,
    split: ProtocolSplit,
    questions: int = 10,
    criteria: Sequence[str] = ("information", "random"),
    trials: int = 5,
    *,
    batch: int = 1,
    pool: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Unseen-user test accuracy against the number of questions asked, per criterion.

    ``pool`` draws that many few-shot comparisons per user at random in each trial. Without
    it every user's whole few-shot set is the pool: ``"information"`` and ``"uncertainty"``
    are then deterministic and run once (``trials`` 1 in their rows). One row per
    (criterion, questions asked): the mean over trials of the mean-over-users accuracy and
    its std over trials.
    """
    for c in criteria:
        if c not in CRITERIA:
            raise LoreError(f"criterion must be among {CRITERIA}, got {c!r}")
    if questions < 1 or batch < 1 or trials < 1:
        raise LoreError("questions, batch and trials must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    few, test = split.unseen_fewshot, split.unseen_test
    curves: dict[str, list[list[float]]] = {c: [] for c in criteria}
    bar = progress_bar(trials * len(criteria), "active sweep", progress)
    for trial in range(trials):
        candidates = sample_shots(few, pool, gen) if pool else few
        for c in criteria:
            if trial and not pool and c != "random":
                continue  # the same pool and no randomness: the same curve
            curve = ask_sequence(
                seen, candidates, test, questions, c, batch=batch, seed=seed + trial
            )
            curves[c].append(curve)
            bar.update(1)
    bar.close()
    counts = few.counts_per_user()
    size = counts[counts > 0].clamp_max(pool) if pool else counts[counts > 0]
    steps = [0, *range(batch, questions, batch), questions]
    rows = []
    for c in criteria:
        acc = torch.tensor(curves[c], dtype=torch.float64)  # (trials, steps)
        for j, q in enumerate(steps):
            rows.append(
                {
                    "rank": seen.rank_,
                    "criterion": c,
                    "questions": q,
                    "unseen_test": float(acc[:, j].mean()),
                    "unseen_test_std": float(acc[:, j].std(unbiased=False)),
                    "trials": acc.shape[0],
                    "batch": batch,
                    "pool_min": int(size.min()) if size.numel() else 0,
                }
            )
    return rows
