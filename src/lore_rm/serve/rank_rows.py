"""Best-of-N for a file of prompts and candidates, offline (``lore rank``).

Input rows (JSON Lines, a JSON list, parquet or CSV) hold a user id in ``user`` (or
``user_id``), a ``prompt`` (a string, or a list of ``{role, content}`` messages) and
``responses``: a list of candidates, each a string or a list of assistant messages (JSON
text in a CSV cell). An ``id`` is carried to the output. Each row is ranked as
``POST /rank`` ranks it: the rewards are the user's (the population's for an unknown user
with ``unknown="mean"``), the intervals come from the user's posterior where there is one
(onboarded users: their comparisons stored in the serve database; unknown users: the
prior), and equal rewards keep their posted order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lore_rm.conversation import Conversation
from lore_rm.data.sources import SourceFile
from lore_rm.embed.base import Embedder
from lore_rm.errors import DataError, LoreError
from lore_rm.fit.model import LowRankReward
from lore_rm.ranking import LEVEL, Ranking, rank_groups
from lore_rm.serve.scoring import USER_FIELDS, embed_unique, json_cell


@dataclass
class RankRows:
    """The rows of a file to rank, in file order: each row's candidates as conversations."""

    users: list[str] = field(default_factory=list)
    candidates: list[list[Conversation]] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)


def read_rank_rows(path: str | os.PathLike) -> RankRows:
    """The rows of ``path``; a :class:`DataError` naming the file, line and field otherwise."""
    from lore_rm.serve.formats import to_conversation

    src = SourceFile(Path(path))
    rows = RankRows()
    for row, rec in src.records():
        name = next((f for f in USER_FIELDS if rec.get(f) not in (None, "")), None)
        if name is None:
            raise src.error(row, "missing field 'user' (or 'user_id')")
        user = rec[name]
        if isinstance(user, bool) or not isinstance(user, str | int):
            raise src.error(row, f"{name!r} must be a string or an integer, got {user!r}")
        prompt, responses = json_cell(rec.get("prompt"), src), json_cell(rec.get("responses"), src)
        if prompt is None:
            raise src.error(row, "missing field 'prompt'")
        if not isinstance(responses, list) or not responses:
            raise src.error(row, "'responses' must be a non-empty list of candidates")
        convs = []
        for i, response in enumerate(responses):
            try:
                convs.append(to_conversation(prompt, response, f"responses[{i}]", "prompt"))
            except LoreError as exc:
                raise src.error(row, str(exc)) from None
        rows.users.append(str(user))
        rows.candidates.append(convs)
        rows.ids.append(rec.get("id"))
    if not rows.users:
        raise DataError(f"{src.path}: no rows to rank")
    return rows


def rank_rows(
    model: LowRankReward,
    embedder: Embedder,
    rows: RankRows,
    *,
    db: Path | None = None,
    level: float = LEVEL,
    unknown: str = "error",
    progress: bool = False,
) -> list[Ranking]:
    """Each row's candidates ranked for its user (``model`` holds the serve database's
    weights: :func:`~lore_rm.serve.export.load_with_served_users`); intervals from ``db``'s
    stored comparisons where the user has a posterior."""
    from lore_rm.serve.choice import reward_std
    from lore_rm.serve.export import check_users

    if unknown not in ("error", "mean"):
        raise LoreError(f"unknown must be 'error' or 'mean', got {unknown!r}")
    if unknown == "error":
        check_users(model, list(dict.fromkeys(rows.users)), db)
    sizes = [len(c) for c in rows.candidates]
    flat = [c for convs in rows.candidates for c in convs]
    per_row = [u for u, n in zip(rows.users, sizes, strict=True) for _ in range(n)]
    e = embed_unique(embedder, flat, progress=progress)
    rewards = model.reward(e, per_row, unknown="mean")
    _, known = model.weights_for(rows.users, unknown="mean")
    cov = _covariances(model, rows.users, db)
    std = None
    if cov is not None:
        group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        std = reward_std(model, e @ model.basis_, per_row, cov[group])
    return rank_groups(rewards, sizes, known=known, std=std, level=level)


def _covariances(model: LowRankReward, users: list[str], db: Path | None) -> torch.Tensor | None:
    """Each row user's posterior covariance: onboarded users from the database's stored
    comparisons, unknown users the prior, seen users of the model folder none (NaN)."""
    from lore_rm.serve.choice import posterior_covariances
    from lore_rm.serve.service import DEFAULT_HISTORY
    from lore_rm.serve.user_store import Store

    store = Store(db) if db is not None and Path(db).is_file() else None
    try:
        n_fit: dict[str, int] = {}
        if store is not None:
            ids, _, fits, _ = store.weights_since(0)
            n_fit = dict(zip(ids, fits, strict=True))
        without = {u for u in model.users_ if u not in n_fit}
        # the window lore serve's posteriors use by default (--user-history)
        return posterior_covariances(model, store, users, n_fit, without, DEFAULT_HISTORY)
    finally:
        if store is not None:
            store.close()


def ranking_records(rows: RankRows, rankings: list[Ranking], level: float) -> list[dict]:
    """One output record per row: index, id (when the file has ids), user and the ranking."""
    with_ids = any(i is not None for i in rows.ids)
    out = []
    for i, (user, r) in enumerate(zip(rows.users, rankings, strict=True)):
        head: dict[str, Any] = {"index": i, "id": rows.ids[i]} if with_ids else {"index": i}
        out.append({**head, "user": user, **r.to_dict(), "level": level})
    return out
