"""Best-of-N and group choice over the service's scored conversations (``POST /rank``,
``POST /group-rank``).

The rewards are the ones ``/reward`` gives for the same conversations: the routes score
through the same path (micro-batched with the other reward traffic), which also returns each
conversation's projection on the basis, ``y = e @ V``. From it come

* each reward's interval: the delta-method std of ``reward_scale * y @ w(theta)`` under the
  user's posterior (the one ``GET /users/{id}`` reports; the prior around the population's
  weights for an unknown user; none for a seen user of the model folder without stored
  comparisons, whose training data the folder does not keep), computed for all the users of
  a request at once;
* every group member's rewards, ``reward_scale * y @ w_u``, without embedding anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lore_rm.comparisons import Comparisons
from lore_rm.errors import LoreError
from lore_rm.fit.posterior import linear_std
from lore_rm.ranking import Ranking, rank_groups
from lore_rm.serve.user_records import features_of_users
from lore_rm.social_choice import aggregate, user_tiers

if TYPE_CHECKING:
    from lore_rm.fit.model import LowRankReward
    from lore_rm.serve.service import RewardService, Scored
    from lore_rm.serve.user_store import Store


def user_posteriors(svc: RewardService, users: Sequence[str | None]) -> Tensor | None:
    """Logit covariance (len(users), K, K) of each user's posterior, from the stored
    comparisons their served weights were fitted on (the prior for an unknown user or
    ``None``); NaN rows for users without a posterior (a seen user of the model folder
    without stored comparisons). None for a model without a few-shot prior."""
    ids = list(dict.fromkeys(u for u in users if u is not None))
    with svc._lock:
        view = svc.model.for_users(svc._served_ids(ids))  # their served weights, basis shared
        n_fit = {u: svc._n_fit[u] for u in ids if u in svc._n_fit}
        without = {u for u in ids if u in svc._model_users and u not in svc._n_fit}
    return posterior_covariances(view, svc.store, users, n_fit, without, svc.history)


def posterior_covariances(
    model: LowRankReward,
    store: Store | None,
    users: Sequence[str | None],
    n_fit: dict[str, int],
    without: set[str],
    history: int | None = None,
) -> Tensor | None:
    """Logit covariance (len(users), K, K) of each user's Laplace posterior at ``model``'s
    weights, conditioned on their first ``n_fit[u]`` comparisons stored in ``store`` (the
    last ``history`` of them, as the service's own posteriors; the prior's covariance for
    users with none, unknown users and ``None``); NaN rows for the users in ``without`` and
    for users whose rows are gone. None for a model without a few-shot prior."""
    ids = list(dict.fromkeys(u for u in users if u is not None))
    without = set(without)
    with_rows = [u for u in ids if n_fit.get(u)]
    stored = features_of_users(store, with_rows, model.d_) if store is not None else {}
    xs, owners = [], []
    for user in ids:
        n = n_fit.get(user, 0)
        if not n:
            continue
        x = stored.get(user)
        if x is None or x.shape[0] < n:  # deleted meanwhile: no interval rather than a guess
            without.add(user)
            continue
        x = x[:n] if history is None else x[max(0, n - history) : n]
        xs.append(x)
        owners += [user] * int(x.shape[0])
    answers = Comparisons.from_features(np.concatenate(xs), owners) if xs else None
    try:
        post = model.weights_posterior(answers, users=ids, unknown="mean")
    except LoreError:
        return None
    k = model.n_components_
    cov = post.prior_covariance().expand(len(users), k, k).clone()
    rows = post.rows(list(users))
    found = rows >= 0
    cov[found] = post.covariance[rows[found]].to(cov.dtype)
    cov[torch.tensor([u in without for u in users], dtype=torch.bool)] = float("nan")
    return cov


def reward_std(
    model: LowRankReward,
    y: Tensor,
    users: Sequence[str | None],
    covariance: Tensor,
    strengths: Sequence[float | None] | None = None,
) -> Tensor:
    """Each reward's std (M,) from the projections ``y = e @ V`` (M, K) and the logit
    covariance (M, K, K) of each row's user, as :meth:`LowRankReward.reward` computes it: the
    delta method at the user's own weights, times the personalisation strength for known
    users (``strengths``, one per row, None: the model's; unknown users have the prior's
    spread around the population's weights)."""
    own, known = model.weights_for(list(users), unknown="mean", personalization=1.0)
    std = linear_std(y, own, covariance, model.reward_scale, model.weight_space_)
    lam = model._strength(strengths)
    return torch.where(known, lam * std, std)


def rank_scored(
    svc: RewardService,
    scored: Scored,
    users: Sequence[str | None],
    sizes: Sequence[int],
    level: float,
) -> list[Ranking]:
    """Rankings of consecutive groups of ``scored`` conversations (``sizes`` each), group
    ``g`` scored for ``users[g]``, with intervals where the user has a posterior."""
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(sizes))
    std = None
    cov = user_posteriors(svc, users)
    if cov is not None and scored.projections is not None:
        y = torch.from_numpy(np.asarray(scored.projections))
        rows = [users[g] for g in group.tolist()]
        strengths = svc.strengths_of(rows)
        with svc._lock:
            std = reward_std(svc.model, y, rows, cov[group], strengths)
    starts = np.cumsum(sizes) - np.asarray(sizes)
    known = np.asarray(scored.known)[starts]
    return rank_groups(torch.from_numpy(scored.rewards), sizes, known=known, std=std, level=level)


def group_rewards(
    svc: RewardService, scored: Scored, users: Sequence[str]
) -> tuple[Tensor, Tensor]:
    """Rewards (U, N) of the ``scored`` conversations for each user of ``users`` (their
    served weights; the population's for unknown users) and which users were known."""
    assert scored.projections is not None
    with svc._lock:
        w, known = svc.model.weights_for(list(users), unknown="mean")
    y = torch.from_numpy(np.asarray(scored.projections))
    r = svc.model.reward_scale * (y[None, :, :] * w[:, None, :]).sum(-1)
    return r.double(), known


@dataclass(frozen=True)
class GroupView:
    """Each member's ranking and the aggregate, as tiers (best first)."""

    user_tiers: list[list[list[int]]]
    scores: list[float]
    ranking: list[list[int]]


def group_view(rewards: Tensor, rule: str) -> GroupView:
    """The members' rankings of ``rewards`` (U, N) and their aggregate under ``rule``."""
    scores, ranking = aggregate(rewards, rule)
    return GroupView(user_tiers(rewards), scores.tolist(), ranking)
