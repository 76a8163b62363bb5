"""Drawing a few comparisons per user, and which shot counts are worth running."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lore_rm.comparisons import Comparisons


def sample_shots(data: Comparisons, shots: int, generator: torch.Generator) -> Comparisons:
    """At most ``shots`` comparisons per user, drawn uniformly without replacement."""
    n = data.n
    key = torch.rand(n, generator=generator)
    order = torch.argsort(key)
    order = order[torch.argsort(data.user_index[order].cpu(), stable=True)]
    users_sorted = data.user_index[order].cpu()
    counts = torch.bincount(users_sorted, minlength=data.n_users)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(n) - starts[users_sorted]
    return data.subset(order[position < shots])


def plan_shots(data: Comparisons, shots: Sequence[int]) -> tuple[list[int], list[str]]:
    """The shots values worth running on the pools ``data`` and why any others were dropped.

    A value at or above the largest user's pool gives every user their whole pool: all such
    values are one and the same draw, so only the largest pool size itself is kept.
    """
    counts = data.counts_per_user()
    counts = counts[counts > 0]
    if not counts.numel():
        return [], ["no unseen user has few-shot comparisons: the shots sweep is skipped"]
    largest = int(counts.max())
    wanted = sorted(set(int(s) for s in shots if s > 0))
    kept = [s for s in wanted if s < largest]
    capped = [s for s in wanted if s >= largest]
    notes = []
    if capped:
        kept.append(largest)
        if capped != [largest]:
            notes.append(
                f"shots {', '.join(map(str, capped))}: no unseen user has more than {largest} "
                f"few-shot comparisons, so these are one draw (every user's whole pool), "
                f"reported once as {largest} shots"
            )
    short = [s for s in kept if bool((counts < s).any())]
    if short:
        s = short[0]
        notes.append(
            f"{int((counts < s).sum())} of {counts.numel()} unseen users have fewer than {s} "
            "few-shot comparisons and use all they have (the shots_capped_users column)"
        )
    return kept, notes
