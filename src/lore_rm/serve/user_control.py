"""Users' control of their data in the service: what is stored about a user, the users the
service knows, and deletion (``GET /users/{id}/data``, ``GET /users``,
``DELETE /users/{id}``).

A deleted user is unknown afterwards, in every server process and after a restart: their
rows leave the database (:func:`lore_rm.serve.user_records.delete_user`) and their weights
leave the served model, so a seen user of the model folder falls back to the population's
weights. What deletion cannot undo: the basis was learned from the seen users' training
data, and the model folder still holds their fitted weights; removing a seen user from the
basis needs a refit without their data (``docs/serving.md``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from lore_rm.fit.model import LowRankReward
from lore_rm.serve.user_records import (
    comparison_counts,
    delete_user,
    deleted_hashes,
    idempotency_keys,
    user_comparisons,
    user_sha256,
)

if TYPE_CHECKING:
    from lore_rm.serve.service import RewardService


class UnknownUser(LookupError):
    """Nothing is stored or served for this user (the routes answer 404)."""


def delete(svc: RewardService, user: str) -> dict[str, Any]:
    """Delete everything stored about ``user`` and stop serving their weights.

    Raises :class:`UnknownUser` when the service neither serves nor stores anything for
    them."""
    svc.sync()
    with svc._personalize_lock:  # no onboarding of this process interleaves
        source = _source(svc, user)
        stored = svc.store.count_comparisons(user)
        if source == "population-mean" and stored == 0:
            raise UnknownUser(f"user {user!r}: nothing is stored or served for this user")
        done = delete_user(svc.store, user)
        svc.forget([user])
    return {"user": user, "deleted": True, "was": source, **asdict(done)}


def _source(svc: RewardService, user: str) -> str:
    with svc._lock:
        if user in svc._n_fit:
            return "onboarded"
        return "model" if user in svc._model_users else "population-mean"


def user_data(
    svc: RewardService, user: str, *, offset: int = 0, limit: int = 100, features: bool = False
) -> dict[str, Any]:
    """Everything stored about ``user``: what :meth:`RewardService.user_info` reports, a page
    of their stored comparisons (texts, posting time and, with ``features``, the feature row
    ``x`` each holds) and their idempotency keys. Raises :class:`UnknownUser` for a user
    with nothing stored or served."""
    info = svc.user_info(user)
    if info["source"] == "population-mean" and info["n_comparisons"] == 0:
        raise UnknownUser(f"user {user!r}: nothing is stored or served for this user")
    return {
        **info,
        "offset": offset,
        "limit": limit,
        "comparisons": user_comparisons(svc.store, user, offset, limit, features=features),
        "idempotency_keys": idempotency_keys(svc.store, user),
    }


def list_users(svc: RewardService, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """A page of the users the service serves weights for (the model folder's first, then
    onboarded ones, in the order they were added), with their source and stored count."""
    svc.sync()
    with svc._lock:
        total = len(svc.model.users_)
        page = list(svc.model.users_[offset : offset + limit])
        onboarded = {u for u in page if u in svc._n_fit}
    counts = comparison_counts(svc.store, page)
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "next_offset": offset + len(page) if offset + len(page) < total else None,
        "users": [
            {
                "user": u,
                "source": "onboarded" if u in onboarded else "model",
                "n_comparisons": counts.get(u, 0),
            }
            for u in page
        ],
    }


def deleted_model_users(model: LowRankReward, hashes: set[str]) -> list[str]:
    """The users of ``model`` whose id hash is in ``hashes``."""
    if not hashes:
        return []
    return [u for u in model.users_ if user_sha256(u) in hashes]


__all__ = [
    "UnknownUser",
    "delete",
    "deleted_hashes",
    "deleted_model_users",
    "list_users",
    "user_data",
]
