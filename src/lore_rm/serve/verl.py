"""Reward functions for verl's ``custom_reward_function``.

verl calls a custom reward function once per sample,
``compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`` (awaited
when it is an ``async def``: verl 0.7 and later run it in their reward loop, many samples at
once), and its ``batch`` reward manager (before verl 0.7) calls one with lists,
``compute_score(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=...,
**kwargs)``. Which configuration keys load the function depends on verl's version: see
``docs/serving.md``. verl never passes the prompt, so lore-rm reads
the prompt (a string or a list of ``{"role", "content"}`` messages) and the user id from each
sample's ``extra_info`` (the dataset's ``extra_info`` column), under ``prompt_key`` and
``user_key``:

>>> from lore_rm.serve.verl import make_verl_reward
>>> reward = make_verl_reward(model, embedder)            # or make_verl_reward(url=...)
>>> reward.compute_score("prism", "Sure: ...", None, {"prompt": "Plan my weekend",
...                                                    "user_id": "alice"})
{'score': 1.73, 'lore_unknown_user': 0.0, 'lore_missing_prompt': 0.0}

* a user the model does not know (or no user id) is scored with the population's mean
  weights and flagged ``lore_unknown_user = 1``;
* a sample whose ``extra_info`` has no usable prompt is scored on the response alone and
  flagged ``lore_missing_prompt = 1``; neither is ever an error.

``details=False`` returns bare floats instead of dicts. verl logs every key of the dicts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

from lore_rm.conversation import Conversation
from lore_rm.embed.base import Embedder
from lore_rm.errors import DataError, LoreError
from lore_rm.fit.model import LowRankReward
from lore_rm.serve.async_rewards import AsyncBatcher
from lore_rm.serve.formats import to_conversation
from lore_rm.serve.integrations import Scorer, local_scorer, remote_scorer

Score = float | dict[str, float]


class VerlReward(NamedTuple):
    """verl's calling conventions over one scorer."""

    compute_score: Callable[..., Score]  # one sample
    compute_score_batch: Callable[..., list[Score]]  # the "batch" reward manager (verl < 0.7)
    # one sample, awaited (verl >= 0.7's reward loop): concurrent calls are scored together
    compute_score_async: Callable[..., Awaitable[Score]]


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (what verl's parquet loading gives) -> lists and scalars."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def verl_sample(
    solution_str: Any, extra_info: Any, prompt_key: str, user_key: str, where: str
) -> tuple[Conversation, str | None, bool]:
    """One verl sample -> (conversation, user id or None, whether a prompt was used)."""
    info = extra_info if isinstance(extra_info, Mapping) else {}
    user = _plain(info.get(user_key))
    user = None if user is None or user == "" else str(user)
    response = "" if solution_str is None else str(_plain(solution_str))
    prompt = _plain(info.get(prompt_key))
    if prompt is not None and prompt != "" and prompt != []:
        try:
            conv = to_conversation(prompt, response, where, f"{where}.extra_info.{prompt_key}")
            return conv, user, True
        except LoreError:
            pass  # an unusable prompt is scored like a missing one, and flagged
    return to_conversation(None, response, where), user, False


def make_verl_reward(
    model: LowRankReward | None = None,
    embedder: Embedder | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    prompt_key: str = "prompt",
    user_key: str = "user_id",
    details: bool = True,
    batch_size: int = 64,
    timeout_s: float = 120.0,
) -> VerlReward:
    """verl reward functions scoring with ``model`` over ``embedder`` in-process, or through
    the ``lore serve`` at ``url`` (with ``token`` when it needs one): give one or the other.

    The prompt and the user id of each sample are read from ``extra_info[prompt_key]`` and
    ``extra_info[user_key]``. ``details``: return ``{"score", "lore_unknown_user",
    "lore_missing_prompt"}`` per sample (verl logs the flags), else the bare float.
    """
    if (url is None) == (model is None):
        raise DataError("give either a model and an embedder, or the url of a lore serve")
    score: Scorer
    if model is not None:
        if embedder is None:
            raise DataError("a local model needs its embedder")
        score = local_scorer(model, embedder, batch_size=batch_size)
    else:
        assert url is not None
        score = remote_scorer(url, token=token, batch_size=batch_size, timeout_s=timeout_s)

    def batch(
        data_sources: Sequence[Any] | None = None,
        solution_strs: Sequence[Any] = (),
        ground_truths: Sequence[Any] | None = None,
        extra_infos: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[Score]:
        responses = list(_plain(solution_strs))
        infos = [None] * len(responses) if extra_infos is None else list(_plain(extra_infos))
        if len(infos) != len(responses):
            raise DataError(f"{len(infos)} extra_infos for {len(responses)} solution_strs")
        samples = [
            verl_sample(r, info, prompt_key, user_key, f"solution_strs[{i}]")
            for i, (r, info) in enumerate(zip(responses, infos, strict=True))
        ]
        if not samples:
            return []
        rewards, known = score([s[0] for s in samples], [s[1] for s in samples])
        if not details:
            return list(rewards)
        return [
            {
                "score": r,
                "lore_unknown_user": 0.0 if k else 1.0,
                "lore_missing_prompt": 0.0 if s[2] else 1.0,
            }
            for r, k, s in zip(rewards, known, samples, strict=True)
        ]

    def single(
        data_source: Any = None,
        solution_str: Any = "",
        ground_truth: Any = None,
        extra_info: Any = None,
        **kwargs: Any,
    ) -> Score:
        return batch([data_source], [solution_str], [ground_truth], [extra_info])[0]

    batcher = AsyncBatcher(
        lambda samples: batch(
            [s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples],
            [s[3] for s in samples],
        ),
        max(batch_size, 256),
    )  # fmt: skip

    async def single_async(
        data_source: Any = None,
        solution_str: Any = "",
        ground_truth: Any = None,
        extra_info: Any = None,
        **kwargs: Any,
    ) -> Score:
        (result,) = await batcher([(data_source, solution_str, ground_truth, extra_info)])
        return result

    single.__name__ = single.__qualname__ = "compute_score"
    batch.__name__ = batch.__qualname__ = "compute_score_batch"
    single_async.__name__ = single_async.__qualname__ = "compute_score_async"
    return VerlReward(single, batch, single_async)
