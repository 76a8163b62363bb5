"""Personalised rewards for a file of conversations, offline (``lore score``).

Input rows (JSON Lines, a JSON list, parquet or CSV; see :mod:`lore_rm.data.sources`) hold a
user id in ``user`` (or ``user_id``) and the conversation either as ``messages`` (a list of
``{role, content}`` messages ending with the assistant response being scored; JSON text in a
CSV cell) or as ``prompt`` (a string, or messages) plus ``response`` (a string). An ``id``
field, when present, is carried to the output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lore_rm.conversation import Conversation, check_conversation
from lore_rm.data.sources import SourceFile
from lore_rm.embed.base import Embedder
from lore_rm.errors import DataError, LoreError
from lore_rm.fit.model import LowRankReward

USER_FIELDS = ("user", "user_id")


@dataclass
class ScoreRows:
    """The rows of a file to score, in file order."""

    users: list[str] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)  # each row's ``id`` field, or None


def read_score_rows(path: str | os.PathLike) -> ScoreRows:
    """The rows of ``path``; a :class:`DataError` naming the file, line and field otherwise."""
    src = SourceFile(Path(path))
    rows = ScoreRows()
    for row, rec in src.records():
        rows.users.append(_user(rec, src, row))
        rows.conversations.append(_conversation(rec, src, row))
        rows.ids.append(rec.get("id"))
    if not rows.users:
        raise DataError(f"{src.path}: no rows to score")
    return rows


def _user(rec: dict, src: SourceFile, row: int) -> str:
    name = next((f for f in USER_FIELDS if rec.get(f) not in (None, "")), None)
    if name is None:
        raise src.error(row, "missing field 'user' (or 'user_id')")
    value = rec[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise src.error(row, f"{name!r} must be a string or an integer, got {value!r}")
    return str(value)


def _conversation(rec: dict, src: SourceFile, row: int) -> Conversation:
    where = src.where(row)
    if rec.get("messages") is not None:
        if rec.get("prompt") is not None or rec.get("response") is not None:
            raise src.error(row, "give either 'messages' or 'prompt' + 'response', not both")
        return check_conversation(json_cell(rec["messages"], src), f"{where}: 'messages'")
    for name in ("prompt", "response"):
        if rec.get(name) is None:
            raise src.error(
                row, f"missing field {name!r} (or give the whole conversation as 'messages')"
            )
    prompt, response = json_cell(rec["prompt"], src), rec["response"]
    if not isinstance(response, str):
        raise src.error(row, f"'response' must be a string, got {type(response).__name__}")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif not isinstance(prompt, list):
        raise src.error(
            row, f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}"
        )
    conversation = [*prompt, {"role": "assistant", "content": response}]
    return check_conversation(conversation, f"{where}: 'prompt'")


def json_cell(value: Any, src: SourceFile) -> Any:
    """A CSV cell holding a list (messages, responses) as JSON text, parsed; any other
    value as it is."""
    if src.format == "csv" and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def embed_unique(
    embedder: Embedder, conversations: Sequence[Conversation], *, progress: bool = False
) -> torch.Tensor:
    """Embeddings (M, d) of ``conversations``, each distinct conversation embedded once."""
    from tqdm.auto import tqdm

    from lore_rm.embed.runner import embed_with_progress

    slots: dict[str, int] = {}
    index = [
        slots.setdefault(json.dumps(c, sort_keys=True, ensure_ascii=False), len(slots))
        for c in conversations
    ]
    unique = [json.loads(k) for k in slots]
    bar = tqdm(
        total=len(unique), unit="text", leave=False, dynamic_ncols=True, disable=not progress
    )
    try:
        e = embed_with_progress(embedder, unique, bar)
    finally:
        bar.close()
    e = torch.as_tensor(e, dtype=torch.float32)
    if not torch.isfinite(e).all():
        raise DataError(f"{embedder.name} produced NaN or inf embeddings")
    return e[torch.tensor(index, dtype=torch.int64)]


def score_rows(
    model: LowRankReward,
    embedder: Embedder,
    rows: ScoreRows,
    *,
    unknown: str = "error",
    db: Path | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward (M,) of each row's conversation for its user, and which users were known.

    ``unknown="error"``: an :class:`UnknownUserError` naming every user without weights
    (before anything is embedded; ``db`` is named in it); ``"mean"``: such users are scored
    with the population's mean weights."""
    from lore_rm.serve.export import check_users

    if unknown not in ("error", "mean"):
        raise LoreError(f"unknown must be 'error' or 'mean', got {unknown!r}")
    if unknown == "error":
        check_users(model, list(dict.fromkeys(rows.users)), db)
    e = embed_unique(embedder, rows.conversations, progress=progress)
    return model.reward(e, rows.users, unknown="mean", return_known=True)
