"""Per-user rows for the group report: each user's accuracy under three models.

- ``pooled``: one pooled rank-1 Bradley–Terry reward, the same for every user;
- ``shared``: the fitted basis with every user at the population's mean weights
  (``model.population_weights_``);
- ``personal``: each user's own weights (``model.accuracy_per_user``).

This module is the one place that turns fitted models into the rows
:func:`lore_rm.evaluate.groups.group_report` reads (user id -> {pooled, shared, personal,
their mean log-losses, population}); the per-user personalisation report can stand in for it
without touching the report.
"""

from __future__ import annotations

import torch

from lore_rm.comparisons import Comparisons
from lore_rm.fit.config import Recipe
from lore_rm.fit.model import LowRankReward
from lore_rm.metrics import per_user_accuracy
from lore_rm.protocol import ProtocolSplit

Rows = dict[str, dict[str, object]]


def shared_model(model: LowRankReward, users: tuple[str, ...] | list[str]) -> LowRankReward:
    """``model``'s basis with every one of ``users`` at the population's mean weights."""
    w = model.population_weights_.reshape(1, -1).expand(len(users), -1)
    return LowRankReward.from_arrays(
        model.basis_,
        w,
        list(users),
        scale=model.scale_,
        margin_scale=model.margin_scale_,
        population_weights=model.population_weights_,
    )


def _accuracy_and_loss(margins: torch.Tensor, data: Comparisons) -> tuple[list, list]:
    acc = per_user_accuracy(margins, data)
    n = torch.bincount(data.user_index.cpu(), minlength=data.n_users).to(torch.float64)
    loss_sum = torch.bincount(
        data.user_index.cpu(),
        weights=torch.nn.functional.softplus(-margins.double()),
        minlength=data.n_users,
    )
    loss = torch.where(n > 0, loss_sum / n.clamp_min(1), torch.full_like(n, float("nan")))
    return acc.tolist(), loss.tolist()


def per_user_rows(
    personal: LowRankReward,
    data: Comparisons,
    pooled: LowRankReward | None = None,
    *,
    population: str | None = None,
) -> Rows:
    """Accuracy (and mean log-loss) of every user of ``data`` under ``personal`` (their own
    weights; users it does not know get the population's), ``shared`` and ``pooled`` (left
    out when None)."""
    models = {
        "personal": personal.margins(data, unknown="mean"),
        "shared": shared_model(personal, data.user_ids).margins(data),
    }
    if pooled is not None:
        models["pooled"] = pooled.margins(data, unknown="mean")
    rows: Rows = {}
    counts = data.counts_per_user().tolist()
    for name, margins in models.items():
        acc, loss = _accuracy_and_loss(margins, data)
        for i, u in enumerate(data.user_ids):
            if counts[i]:
                row = rows.setdefault(u, {"comparisons": counts[i]})
                row[name], row[f"{name}_loss"] = acc[i], loss[i]
                if population is not None:
                    row["population"] = population
    return rows


def personalisation_rows(
    split: ProtocolSplit,
    rank: int,
    *,
    recipe: Recipe = "default",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    **settings,
) -> Rows:
    """Fit the model at ``rank`` and the pooled rank-1 reward on the seen users, personalise
    the unseen users from their few-shot comparisons, and give every test user's row: seen
    users on their held-out prompts, unseen users on theirs."""
    kw = dict(recipe=recipe, seed=seed, device=device, **settings)
    model = LowRankReward(rank=rank, **kw).fit(
        split.seen_train, split.reference_head, progress=progress
    )
    pooled = model
    if rank != 1:
        pooled = LowRankReward(rank=1, **kw).fit(split.seen_train, split.reference_head)
    rows = per_user_rows(model, split.seen_test, pooled, population="seen")
    if split.unseen_test.n:
        unseen = model.copy()
        if split.unseen_fewshot.n:
            unseen.personalize(split.unseen_fewshot)
        rows.update(per_user_rows(unseen, split.unseen_test, pooled, population="unseen"))
    return rows
