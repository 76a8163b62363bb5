"""The published evaluation protocols: the four numbers, rank sweep, shots sweep."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lore_rm.evaluate.personalization import PersonalizationReport, personalization_report
from lore_rm.evaluate.rank_choice import cross_validated_rank
from lore_rm.evaluate.shots import plan_shots, sample_shots
from lore_rm.fit.config import Recipe
from lore_rm.fit.model import LowRankReward
from lore_rm.fit.search_memo import shared_searches
from lore_rm.metrics import METRICS, FourNumbers, mean_accuracy
from lore_rm.progress import progress_bar
from lore_rm.protocol import ProtocolSplit

__all__ = [
    "METRICS",
    "FourNumbers",
    "ProtocolResult",
    "four_numbers",
    "rank_sweep",
    "run_protocol",
    "plan_shots",
    "sample_shots",
    "select_rank",
    "shots_sweep",
]

Tensor = torch.Tensor
REPORT_TRIALS = 5  # draws per shot count of the personalisation report


def four_numbers(seen: LowRankReward, split: ProtocolSplit) -> FourNumbers:
    """train / seen_test / fewshot_train / unseen_test (means and stds over users).

    ``seen`` is fitted on ``split.seen_train``; unseen users are personalised on a copy.
    """
    unseen = seen.copy().personalize(split.unseen_fewshot)
    out: dict[str, float] = {}
    for key, model, data in (
        ("train", seen, split.seen_train),
        ("seen_test", seen, split.seen_test),
        ("fewshot_train", unseen, split.unseen_fewshot),
        ("unseen_test", unseen, split.unseen_test),
    ):
        mean, std = mean_accuracy(model.margins(data), data) if data.n else (math.nan, math.nan)
        out[key], out[f"{key}_std"] = mean, std
    return FourNumbers(**out)


def rank_sweep(
    split: ProtocolSplit,
    ranks: Sequence[int],
    alphas: Sequence[float] = (0.0,),
    *,
    recipe: Recipe = "default",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    **settings,
) -> list[dict]:
    """The published ``run`` / ``run_regularized`` protocol: the four numbers per (rank, alpha).

    Rank 0 (the reference head) does not depend on alpha and is evaluated once.
    """
    return _sweep(split, ranks, alphas, recipe, seed, device, progress, settings)[0]


def _sweep(
    split: ProtocolSplit,
    ranks: Sequence[int],
    alphas: Sequence[float],
    recipe: Recipe,
    seed: int,
    device: str,
    progress: bool,
    settings: dict,
) -> tuple[list[dict], dict[tuple[int, float], LowRankReward]]:
    """The rank sweep's rows and its fitted models, keyed by (rank, alpha)."""
    rows = []
    models = {}
    jobs = [(k, a) for k in ranks for a in (alphas if k > 0 else alphas[:1])]
    users = {
        f"{m}_users": int((data.counts_per_user() > 0).sum())
        for m, data in zip(
            METRICS,
            (split.seen_train, split.seen_test, split.unseen_fewshot, split.unseen_test),
            strict=True,
        )
    }
    bar = progress_bar(len(jobs), "rank sweep", progress)
    with shared_searches():  # every rank's search walks rank 1 too: once for the sweep
        for rank, alpha in jobs:
            t0 = time.perf_counter()
            model = LowRankReward(
                rank=rank, recipe=recipe, seed=seed, device=device, alpha=alpha, **settings
            ).fit(split.seen_train, split.reference_head)
            row = {"rank": rank, "alpha": alpha, "recipe": recipe}
            row.update(four_numbers(model, split))
            row.update(users)  # for intervals over users: std / sqrt(users)
            row["fit_seconds"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            models[(rank, alpha)] = model
            bar.update(1)
    bar.close()
    return rows, models


def select_rank(rows: Sequence[dict], tolerance: float = 0.005) -> dict | None:
    """The smallest learned rank (K >= 1) whose seen-user test accuracy is within
    ``tolerance`` of the best: seen users' held-out prompts choose, unseen users never do."""
    learned = [r for r in rows if r["rank"] > 0 and r["seen_test"] == r["seen_test"]]
    if not learned:
        return None
    best = max(r["seen_test"] for r in learned)
    return min(
        (r for r in learned if r["seen_test"] >= best - tolerance),
        key=lambda r: (r["rank"], -r["seen_test"]),
    )


def shots_sweep(
    seen: LowRankReward,
    split: ProtocolSplit,
    shots: Sequence[int],
    trials: int = 20,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Unseen-user test accuracy after personalising on ``shots`` random comparisons each.

    Returns one row per shots value: the mean over trials of the mean-over-users accuracy,
    and its standard deviation over trials. Values no user's pool can tell apart are merged
    (:func:`plan_shots`, with a warning).
    """
    shots, notes = plan_shots(split.unseen_fewshot, shots)
    for note in notes:
        warnings.warn(f"shots sweep: {note}", stacklevel=2)
    counts = split.unseen_fewshot.counts_per_user()
    counts = counts[counts > 0]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    bar = progress_bar(len(shots) * trials, "shots sweep", progress)
    for s in shots:
        accs = []
        for _ in range(trials):
            few = sample_shots(split.unseen_fewshot, s, gen)
            model = seen.copy().personalize(few)
            test = split.unseen_test
            accs.append(mean_accuracy(model.margins(test, unknown="mean"), test)[0])
            bar.update(1)
        t = torch.tensor(accs, dtype=torch.float64)
        rows.append(
            {
                "rank": seen.rank_,
                "shots": s,
                "unseen_test": float(t.mean()),
                "unseen_test_std": float(t.std(unbiased=False)),
                "trials": trials,
                "shots_capped_users": int((counts < s).sum()),
            }
        )
    bar.close()
    return rows


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` found: the rank sweep, the selected row and the shots sweep."""

    rows: list[dict]
    selected: dict | None
    shot_rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why the shots sweep changed or was skipped
    active_rows: list[dict] = field(default_factory=list)  # accuracy vs questions asked
    personalization: PersonalizationReport | None = None  # at the selected (or shots) rank
    models: dict = field(default_factory=dict, repr=False)  # the swept models, (rank, alpha)
    #: the rank lore fit's cross-validation picks among the swept fits (rank_choice)
    cross_validated: dict | None = None


def run_protocol(
    split: ProtocolSplit,
    ranks: Sequence[int],
    alphas: Sequence[float] = (0.0,),
    shots: Sequence[int] = (),
    trials: int = 20,
    *,
    shots_rank: int | None = None,
    recipe: Recipe = "default",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    active: int = 0,
    active_batch: int = 1,
    **settings,
) -> ProtocolResult:
    """The whole published protocol, as ``lore demo`` and ``lore evaluate`` run it.

    Rank sweep (the four numbers per (rank, alpha)) -> select the rank on seen users' test
    accuracy (:func:`select_rank`) -> the swept model at that rank (or a fit at ``shots_rank``
    with the first alpha, unless swept) -> shots sweep for the unseen users. The shots sweep
    is skipped when ``shots`` is empty, when no learned rank was swept and ``shots_rank``
    is not given, or at rank 1 (one pooled reward: nothing to personalise); ``notes`` says why.
    ``active > 0`` adds the active-learning sweep at the same rank
    (:func:`lore_rm.evaluate.active.active_sweep`: up to ``active`` questions per unseen
    user, ``active_batch`` per round, information gain against random over ``trials``).
    """
    rows, models = _sweep(split, ranks, alphas, recipe, seed, device, progress, settings)
    selected = select_rank(rows)
    result = ProtocolResult(rows, selected, models=models)
    result.cross_validated = cross_validated_rank(
        models, selected["alpha"] if selected is not None else alphas[0]
    )
    if shots_rank is None and selected is None:
        return result
    if shots_rank is None:
        assert selected is not None
        rank, alpha = selected["rank"], selected["alpha"]
    else:
        rank, alpha = shots_rank, alphas[0]
    values, notes = plan_shots(split.unseen_fewshot, shots) if shots else ([], [])
    model = models.get((rank, alpha))  # the swept model: the same fit, so not fitted again
    if model is None:
        model = LowRankReward(
            rank=rank, recipe=recipe, seed=seed, device=device, alpha=alpha, **settings
        ).fit(split.seen_train, split.reference_head)
        models[(rank, alpha)] = model
    result.personalization = personalization_report(
        model,
        split,
        pooled=models.get((1, alpha)),
        shots=[*values, None] if not values or values[-1] < _largest_pool(split) else values,
        trials=min(trials, REPORT_TRIALS),
        seed=seed,
    )
    if not (shots or active):
        return result
    if rank <= 1:
        result.notes.append(
            f"shots sweep skipped: at rank {rank} every user has the same reward, so shots "
            "cannot change it (--shots-rank / shots_rank >= 2 sweeps anyway)"
            if shots_rank is None
            else f"shots sweep skipped: rank {rank} has one reward for every user"
        )
        return result
    result.notes.extend(notes)
    if not values and not active:
        return result
    if values:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="shots sweep:")  # the notes say it once
            result.shot_rows = shots_sweep(
                model, split, values, trials, seed=seed, progress=progress
            )
    if active:
        from lore_rm.evaluate.active import active_sweep

        result.active_rows = active_sweep(
            model, split, active, trials=trials, batch=active_batch, seed=seed, progress=progress
        )
    return result


def _largest_pool(split: ProtocolSplit) -> int:
    counts = split.unseen_fewshot.counts_per_user()
    return int(counts.max()) if counts.numel() else 0
