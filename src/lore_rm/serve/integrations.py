"""Reward functions for TRL's ``GRPOTrainer`` (and anything with the same calling convention).

TRL calls a custom reward function with keyword arguments: ``prompts``, ``completions``,
the completions' token ids, ``trainer_state``, and every dataset column but ``prompt``
(one value per completion) -- hence the documented signature
``def reward_func(completions, prompts=None, **kwargs) -> list[float]``. Put each prompt's
user id in a dataset column (``user_id`` by default) and the function reads it from
``kwargs``:

>>> from lore_rm import LowRankReward
>>> from lore_rm.embed.hashing import HashingEmbedder
>>> from lore_rm.serve.integrations import make_reward_func
>>> reward_func = make_reward_func(model, HashingEmbedder(64), user_column="user_id")
>>> trainer = GRPOTrainer(model=..., reward_funcs=reward_func, train_dataset=dataset)

Prompts and completions may be strings (TRL's standard format) or lists of messages (its
conversational format). Users the model does not know get the population's mean weights.

:func:`make_remote_reward_func` does the same through a running ``lore serve``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lore_rm.conversation import Conversation
from lore_rm.embed.base import Embedder
from lore_rm.errors import DataError
from lore_rm.fit.model import LowRankReward
from lore_rm.serve.formats import to_conversation

RewardFunc = Callable[..., list[float]]
# conversations, their users -> (rewards, known: the user had weights)
Scorer = Callable[[Sequence[Conversation], Sequence[str | None]], tuple[list[float], list[bool]]]


def _chunked(
    score_chunk: Callable[[list[Conversation], list[str | None]], tuple[list[float], list[bool]]],
    batch_size: int,
) -> Scorer:
    """A scorer calling ``score_chunk`` on ``batch_size`` conversations at a time."""

    def score(
        conversations: Sequence[Conversation], users: Sequence[str | None]
    ) -> tuple[list[float], list[bool]]:
        rewards: list[float] = []
        known: list[bool] = []
        for start in range(0, len(conversations), batch_size):
            r, k = score_chunk(
                list(conversations[start : start + batch_size]),
                list(users[start : start + batch_size]),
            )
            rewards.extend(float(v) for v in r)
            known.extend(bool(v) for v in k)
        return rewards, known

    return score


def local_scorer(model: LowRankReward, embedder: Embedder, *, batch_size: int = 64) -> Scorer:
    """Score conversations in-process: embed ``batch_size`` at a time, then ``model.reward``
    (unknown users and ``None`` get the population's mean weights)."""
    if int(embedder.dim) != int(model.d_):
        raise DataError(
            f"the embedder gives d = {embedder.dim} but the model was fitted on d = {model.d_}"
        )

    def score_chunk(
        conversations: list[Conversation], users: list[str | None]
    ) -> tuple[list[float], list[bool]]:
        e = torch.as_tensor(embedder.embed(conversations), dtype=torch.float32)
        rewards = model.reward(e, users, unknown="mean").tolist()
        return rewards, model.weights_for(users, unknown="mean")[1].tolist()

    return _chunked(score_chunk, batch_size)


def remote_scorer(
    url: str, *, token: str | None = None, batch_size: int = 64, timeout_s: float = 120.0
) -> Scorer:
    """Score conversations through a running ``lore serve`` at ``url`` (``POST /reward``,
    ``batch_size`` conversations a request)."""
    endpoint = url.rstrip("/") + "/reward"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def score_chunk(
        conversations: list[Conversation], users: list[str | None]
    ) -> tuple[list[float], list[bool]]:
        body = json.dumps({"users": users, "conversations": conversations}).encode()
        req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
        return answer["rewards"], answer["known"]

    return _chunked(score_chunk, batch_size)


def trl_conversations(
    completions: Sequence[Any], prompts: Sequence[Any] | None
) -> list[Conversation]:
    """TRL's ``prompts`` / ``completions`` (strings or message lists) -> conversations."""
    if prompts is not None and len(prompts) != len(completions):
        raise DataError(f"{len(prompts)} prompts for {len(completions)} completions")
    return [
        to_conversation(
            None if prompts is None else prompts[i], c, f"completions[{i}]", f"prompts[{i}]"
        )
        for i, c in enumerate(completions)
    ]


def _users_from(kwargs: dict, column: str, n: int) -> list[str | None]:
    if column not in kwargs:
        have = ", ".join(sorted(k for k in kwargs if k not in ("trainer_state",))) or "none"
        raise DataError(
            f"the reward function reads user ids from the dataset column {column!r}, which "
            f"the trainer did not pass (columns passed: {have}); add that column to the "
            "dataset or pass user_column="
        )
    users = kwargs[column]
    if isinstance(users, str) or not isinstance(users, Sequence):
        users = [users] * n
    if len(users) != n:
        raise DataError(f"column {column!r} has {len(users)} values for {n} completions")
    return [None if u is None else str(u) for u in users]


def _trl_func(score: Scorer, user_column: str, name: str) -> RewardFunc:
    def reward_func(completions, prompts=None, **kwargs) -> list[float]:
        conversations = trl_conversations(completions, prompts)
        return score(conversations, _users_from(kwargs, user_column, len(conversations)))[0]

    reward_func.__name__ = name
    reward_func.__qualname__ = name
    return reward_func


def make_reward_func(
    model: LowRankReward,
    embedder: Embedder,
    *,
    user_column: str = "user_id",
    batch_size: int = 64,
    name: str = "lore_reward",
) -> RewardFunc:
    """A ``reward_func(completions, prompts=None, **kwargs) -> list[float]`` scoring each
    completion for the user in ``kwargs[user_column]`` with ``model`` over ``embedder``.

    Unknown users (and ``None``) get the population's mean weights. ``name`` becomes the
    function's ``__name__`` (TRL logs rewards under it).
    """
    return _trl_func(local_scorer(model, embedder, batch_size=batch_size), user_column, name)


def make_remote_reward_func(
    url: str,
    *,
    user_column: str = "user_id",
    token: str | None = None,
    batch_size: int = 64,
    timeout_s: float = 120.0,
    name: str = "lore_reward",
) -> RewardFunc:
    """Like :func:`make_reward_func`, scoring through a running ``lore serve`` at ``url``
    (e.g. ``http://127.0.0.1:8000``) with its ``POST /reward`` endpoint."""
    return _trl_func(
        remote_scorer(url, token=token, batch_size=batch_size, timeout_s=timeout_s),
        user_column,
        name,
    )
