"""Pool-based active-learning sweep for new users (issue #9).

Each unseen user's few-shot comparisons are their candidate pool (the labels stay hidden
until a question is asked). Round after round, every user is asked ``batch`` questions chosen
by :meth:`LowRankReward.select_questions` under their current Laplace posterior; the answers
are revealed from the pool's labels, the users' weights are refitted on everything they
answered (the ordinary few-shot fit) and their posterior recomputed. After every round the
unseen users' test comparisons are scored: accuracy, the expected calibration error of the
posterior-integrated probabilities and, where the split knows the true margins (a planted
population), the coverage of the 90% intervals of the margin. All users move together: one
fit, one posterior and one selection per round, whatever the number of users.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.errors import LoreError
from lore_rm.evaluate.shots import sample_shots
from lore_rm.fit.active import CRITERIA
from lore_rm.fit.model import LowRankReward
from lore_rm.fit.posterior import WeightsPosterior, probit_proba
from lore_rm.metrics import expected_calibration_error, interval_coverage, mean_accuracy
from lore_rm.progress import progress_bar
from lore_rm.protocol import ProtocolSplit


def round_scores(
    model: LowRankReward,
    posterior: WeightsPosterior,
    test: Comparisons,
    true_margins: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    """Unseen-user test accuracy, the ECE of the posterior-integrated probabilities, and the
    90% interval coverage of ``true_margins`` (nan without them)."""
    accuracy = mean_accuracy(model.margins(test, unknown="mean"), test)[0]
    mean, std = model.margin_std(test, posterior, unknown="mean")
    ece = expected_calibration_error(probit_proba(mean, std))
    coverage = math.nan if true_margins is None else interval_coverage(true_margins, mean, std)
    return accuracy, ece, coverage


def ask_sequence(
    seen: LowRankReward,
    pool: Comparisons,
    test: Comparisons,
    questions: int,
    criterion: str,
    *,
    batch: int = 1,
    seed: int = 0,
    true_margins: torch.Tensor | None = None,
) -> list[tuple[float, float, float]]:
    """:func:`round_scores` after 0, batch, 2 batch, ... up to ``questions`` answers.

    ``pool`` holds every user's candidates with their labels (row orientation = the answer);
    ``true_margins`` are ``test``'s true margins, when known.
    """
    model = seen.copy()
    users = list(pool.user_ids)
    asked = torch.zeros(pool.n, dtype=torch.bool)

    def posterior() -> WeightsPosterior:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*have no comparisons")
            return model.weights_posterior(pool.subset(asked), users=users, unknown="mean")

    post = posterior()
    scores = [round_scores(model, post, test, true_margins)]
    step = 0
    for done in range(0, questions, batch):
        answered = pool.subset(asked)
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
        post = posterior()
        scores.append(round_scores(model, post, test, true_margins))
        step += 1
    return scores


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
    """Unseen-user test accuracy (and calibration) against the questions asked, per criterion.

    ``pool`` draws that many few-shot comparisons per user at random in each trial. Without
    it every user's whole few-shot set is the pool: ``"information"`` and ``"uncertainty"``
    are then deterministic and run once (``trials`` 1 in their rows). One row per
    (criterion, questions asked): the mean over trials of the mean-over-users accuracy and
    its std over trials, the mean ECE of the posterior-integrated probabilities and, when the
    split knows the unseen test comparisons' true margins (``split.unseen_test_margins``), the
    mean coverage of their 90% intervals (``None`` otherwise).
    """
    for c in criteria:
        if c not in CRITERIA:
            raise LoreError(f"criterion must be among {CRITERIA}, got {c!r}")
    if questions < 1 or batch < 1 or trials < 1:
        raise LoreError("questions, batch and trials must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    few, test = split.unseen_fewshot, split.unseen_test
    truth = split.unseen_test_margins
    if truth is not None and truth.numel() != test.n:
        raise LoreError(
            f"split.unseen_test_margins has {truth.numel()} rows but unseen_test has {test.n}"
        )
    curves: dict[str, list[list[tuple[float, float, float]]]] = {c: [] for c in criteria}
    bar = progress_bar(trials * len(criteria), "active sweep", progress)
    for trial in range(trials):
        candidates = sample_shots(few, pool, gen) if pool else few
        for c in criteria:
            if trial and not pool and c != "random":
                continue  # the same pool and no randomness: the same curve
            curve = ask_sequence(
                seen,
                candidates,
                test,
                questions,
                c,
                batch=batch,
                seed=seed + trial,
                true_margins=truth,
            )
            curves[c].append(curve)
            bar.update(1)
    bar.close()
    counts = few.counts_per_user()
    size = counts[counts > 0].clamp_max(pool) if pool else counts[counts > 0]
    steps = [0, *range(batch, questions, batch), questions]
    rows = []
    for c in criteria:
        scores = torch.tensor(curves[c], dtype=torch.float64)  # (trials, steps, 3)
        acc, ece, coverage = scores.unbind(-1)
        for j, q in enumerate(steps):
            rows.append(
                {
                    "rank": seen.rank_,
                    "criterion": c,
                    "questions": q,
                    "unseen_test": float(acc[:, j].mean()),
                    "unseen_test_std": float(acc[:, j].std(unbiased=False)),
                    "ece": float(ece[:, j].mean()),
                    "coverage_90": None if truth is None else float(coverage[:, j].mean()),
                    "trials": acc.shape[0],
                    "batch": batch,
                    "pool_min": int(size.min()) if size.numel() else 0,
                }
            )
    return rows
