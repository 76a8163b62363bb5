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
    if int(embedder.dim) != int(model.d_):
        raise DataError(
            f"the embedder gives d = {embedder.dim} but the model was fitted on d = {model.d_}"
        )

    def reward_func(completions, prompts=None, **kwargs) -> list[float]:
        conversations = trl_conversations(completions, prompts)
        users = _users_from(kwargs, user_column, len(conversations))
        out: list[float] = []
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            ids = users[start : start + batch_size]
            e = torch.as_tensor(embedder.embed(chunk), dtype=torch.float32)
            r = model.reward(e, ids, unknown="mean")
            out.extend(float(v) for v in r.tolist())
        return out

    reward_func.__name__ = name
    reward_func.__qualname__ = name
    return reward_func


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
    endpoint = url.rstrip("/") + "/reward"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def reward_func(completions, prompts=None, **kwargs) -> list[float]:
        conversations = trl_conversations(completions, prompts)
        users = _users_from(kwargs, user_column, len(conversations))
        out: list[float] = []
        for start in range(0, len(conversations), batch_size):
            body = json.dumps(
                {
                    "users": users[start : start + batch_size],
                    "conversations": conversations[start : start + batch_size],
                }
            ).encode()
            req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                out.extend(float(v) for v in json.loads(resp.read())["rewards"])
        return out

    reward_func.__name__ = name
    reward_func.__qualname__ = name
    return reward_func
