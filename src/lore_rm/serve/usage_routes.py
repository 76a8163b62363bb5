"""Routes for using personalised rewards: best-of-N (``POST /rank``), group choice
(``POST /group-rank``) and users' control of their data (``GET /users``,
``GET /users/{id}/data``, ``DELETE /users/{id}``). Behind the same token and limits as the
other routes; see ``docs/serving.md``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from lore_rm.conversation import Conversation
from lore_rm.errors import LoreError
from lore_rm.serve.choice import group_rewards, group_view, rank_scored
from lore_rm.serve.formats import to_conversation
from lore_rm.serve.routes import Score, _check_batch, _loose, _unprocessable
from lore_rm.serve.schemas import Limits, UserId
from lore_rm.serve.service import RewardService
from lore_rm.serve.usage_schemas import (
    Deletion,
    GroupRankRequest,
    GroupRankResponse,
    RankBatchResult,
    RankRequest,
    RankResult,
    UserData,
    UserList,
)
from lore_rm.serve.user_control import UnknownUser, delete, list_users, user_data

MAX_PAGE = 1000
Offset = Annotated[int, Query(ge=0, description="how many to skip")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE, description="how many to return")]


def _candidates(prompt: Any, responses: Sequence[Any], loc: list[Any]) -> list[Conversation]:
    """Prompt + each response as a conversation; a bad one is a 422 naming it."""
    out = []
    for i, response in enumerate(responses):
        where = ".".join(str(p) for p in loc) + f"[{i}]"
        try:
            out.append(to_conversation(_loose(prompt), _loose(response), where, "prompt"))
        except LoreError as exc:
            raise _unprocessable([*loc, i], str(exc)) from exc
    return out


def usage_router(
    svc: RewardService,
    limits: Limits,
    check_token: Callable[..., Awaitable[None]],
    score: Score,
) -> APIRouter:
    api = APIRouter(dependencies=[Depends(check_token)])

    @api.post("/rank", response_model=RankResult | RankBatchResult, tags=["rewards"])
    async def rank(body: RankRequest) -> RankResult | RankBatchResult:
        """Best-of-N: the candidates ranked by a user's reward (rewards equal /reward's),
        each reward's interval under the user's posterior; ``items`` ranks several prompts."""
        single = body.items is None
        if single:
            if body.prompt is None or body.responses is None:
                raise _unprocessable([], "give 'prompt' and 'responses', or 'items'")
            loc: list[Any] = ["responses"]
            groups = [(body.user, body.prompt, body.responses, loc)]
        else:
            if body.prompt is not None or body.responses is not None:
                raise _unprocessable([], "give either 'prompt' + 'responses' or 'items'")
            assert body.items is not None
            _check_batch("items", len(body.items), limits.max_batch)
            groups = [
                (it.user if it.user is not None else body.user, it.prompt, it.responses,
                 ["items", j, "responses"])
                for j, it in enumerate(body.items)
            ]  # fmt: skip
        total = sum(len(g[2]) for g in groups)
        if total > limits.max_batch:
            raise _unprocessable(
                ["responses" if single else "items"],
                f"{total} responses in all; this server accepts at most {limits.max_batch} "
                "per request",
                413,
            )
        conversations: list[Conversation] = []
        for _, prompt, responses, loc in groups:
            conversations += _candidates(prompt, responses, loc)
        users = [g[0] for g in groups]
        sizes = [len(g[2]) for g in groups]
        rows = [u for u, n in zip(users, sizes, strict=True) for _ in range(n)]
        scored = await score(conversations, rows)
        rankings = await run_in_threadpool(rank_scored, svc, scored, users, sizes, body.level)
        results = [
            RankResult(user=u, level=body.level, **r.to_dict())
            for u, r in zip(users, rankings, strict=True)
        ]
        return results[0] if single else RankBatchResult(results=results)

    @api.post("/group-rank", response_model=GroupRankResponse, tags=["rewards"])
    async def group_rank(body: GroupRankRequest) -> GroupRankResponse:
        """One ranking of the candidates for a group of users (borda, plurality or
        copeland), with each user's own ranking; ties are tiers."""
        _check_batch("users", len(body.users), limits.max_batch)
        _check_batch("responses", len(body.responses), limits.max_batch)
        seen: dict[str, int] = {}
        for i, user in enumerate(body.users):
            if user in seen:
                raise _unprocessable(["users", i], f"repeats users[{seen[user]}] ({user!r})")
            seen[user] = i
        conversations = _candidates(body.prompt, body.responses, ["responses"])
        scored = await score(conversations, [None] * len(conversations))
        rewards, known = group_rewards(svc, scored, body.users)
        view = await run_in_threadpool(group_view, rewards, body.rule)
        return GroupRankResponse(
            rule=body.rule,
            n_unknown=int((~known).sum()),
            users=[
                {"user": u, "known": bool(k), "rewards": r, "ranking": t}  # type: ignore[misc]
                for u, k, r, t in zip(
                    body.users, known.tolist(), rewards.tolist(), view.user_tiers, strict=True
                )
            ],
            aggregate={  # type: ignore[arg-type]
                "scores": view.scores,
                "ranking": view.ranking,
                "winners": view.ranking[0],
            },
        )

    @api.delete("/users/{user_id}", response_model=Deletion, tags=["users"])
    def delete_user(user_id: UserId) -> Deletion:
        """Delete everything stored about the user (comparisons, weights, idempotency keys)
        and stop serving their weights; a seen user of the model folder falls back to the
        population's weights, also after a restart. 404 when nothing is stored or served."""
        try:
            return Deletion(**delete(svc, user_id))
        except UnknownUser as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc

    @api.get("/users/{user_id}/data", response_model=UserData, tags=["users"])
    def data(
        user_id: UserId,
        offset: Offset = 0,
        limit: PageSize = 100,
        features: Annotated[bool, Query(description="include each comparison's x")] = False,
    ) -> UserData:
        """Everything stored about the user: weights, posterior, a page of their stored
        comparisons (texts; with ``features=true`` the feature rows) and idempotency keys."""
        try:
            found = user_data(svc, user_id, offset=offset, limit=limit, features=features)
            return UserData(**found)
        except UnknownUser as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc

    @api.get("/users", response_model=UserList, tags=["users"])
    def users(offset: Offset = 0, limit: PageSize = 100) -> UserList:
        """A page of the users the service serves weights for."""
        return UserList(**list_users(svc, offset=offset, limit=limit))

    return api
