"""``async`` reward functions: TRL's ``GRPOTrainer`` awaits an ``async def`` reward function
(it runs them concurrently with the other reward functions), and verl's reward loop (0.7
and later) awaits an ``async def compute_score`` for each sample, many at once.

Scoring itself (embedding with the backbone, or an HTTP request to ``lore serve``) blocks,
so it runs on a worker thread and the event loop stays free. :class:`AsyncBatcher` gathers
the calls that arrive while a batch is being scored into the next batch: verl's per-sample
calls then cost about what one batched call costs, as the service's micro-batching does for
concurrent requests.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from lore_rm.embed.base import Embedder
from lore_rm.fit.model import LowRankReward
from lore_rm.serve.integrations import (
    _users_from,
    local_scorer,
    remote_scorer,
    trl_conversations,
)

T = TypeVar("T")
R = TypeVar("R")


class AsyncBatcher:
    """``await batcher(items)`` -> ``fn(all items gathered)`` sliced back to the caller.

    ``fn`` (blocking) takes a list of items and returns one result per item; it runs on a
    worker thread, one batch at a time per event loop. Calls that arrive while a batch runs
    join the next one (up to ``max_items`` items, never splitting a call)."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_items: int = 256) -> None:
        self.fn = fn
        self.max_items = max_items
        self._state: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple] = (
            weakref.WeakKeyDictionary()
        )

    def _loop_state(self) -> tuple[asyncio.Lock, list]:
        loop = asyncio.get_running_loop()
        if loop not in self._state:
            self._state[loop] = (asyncio.Lock(), [])
        return self._state[loop]

    async def __call__(self, items: Sequence[Any]) -> list[Any]:
        lock, pending = self._loop_state()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        pending.append((list(items), future))
        async with lock:
            if not future.done():
                batch: list[tuple[list[Any], asyncio.Future]] = []
                n = 0
                while pending and (not batch or n + len(pending[0][0]) <= self.max_items):
                    batch.append(pending.pop(0))
                    n += len(batch[-1][0])
                flat = [item for part, _ in batch for item in part]
                try:
                    results = list(await asyncio.to_thread(self.fn, flat))
                except Exception as exc:  # every caller of the batch gets the error
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                else:
                    start = 0
                    for part, f in batch:
                        f.set_result(results[start : start + len(part)])
                        start += len(part)
        return await future


def _async_trl(score: Callable, user_column: str, name: str, max_items: int) -> Callable:
    batcher = AsyncBatcher(lambda rows: _pairs(score, rows), max_items)

    async def reward_func(completions, prompts=None, **kwargs) -> list[float]:
        conversations = trl_conversations(completions, prompts)
        users = _users_from(kwargs, user_column, len(conversations))
        return await batcher(list(zip(conversations, users, strict=True)))

    reward_func.__name__ = reward_func.__qualname__ = name
    return reward_func


def _pairs(score: Callable, rows: list[tuple[Any, Any]]) -> list[float]:
    """Rewards of (conversation, user) rows."""
    if not rows:
        return []
    rewards, _ = score([c for c, _ in rows], [u for _, u in rows])
    return list(rewards)


def make_async_reward_func(
    model: LowRankReward,
    embedder: Embedder,
    *,
    user_column: str = "user_id",
    batch_size: int = 64,
    name: str = "lore_reward",
) -> Callable[..., Awaitable[list[float]]]:
    """:func:`~lore_rm.serve.integrations.make_reward_func` as an ``async def`` (TRL awaits
    it; scoring runs on a worker thread, concurrent calls are batched together)."""
    score = local_scorer(model, embedder, batch_size=batch_size)
    return _async_trl(score, user_column, name, max(batch_size, 256))


def make_async_remote_reward_func(
    url: str,
    *,
    user_column: str = "user_id",
    token: str | None = None,
    batch_size: int = 64,
    timeout_s: float = 120.0,
    name: str = "lore_reward",
) -> Callable[..., Awaitable[list[float]]]:
    """:func:`~lore_rm.serve.integrations.make_remote_reward_func` as an ``async def``."""
    score = remote_scorer(url, token=token, batch_size=batch_size, timeout_s=timeout_s)
    return _async_trl(score, user_column, name, max(batch_size, 256))
