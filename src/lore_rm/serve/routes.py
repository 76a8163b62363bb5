"""The service's endpoints (all but ``/health``), as one router over a RewardService."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from lore_rm.conversation import Conversation
from lore_rm.errors import DataError, IdempotencyKeyReused, LoreError
from lore_rm.serve.batching import Batching, MicroBatcher, ShuttingDown
from lore_rm.serve.formats import (
    as_messages,
    check_conversation,
    lone_surrogate,
    read_query,
    to_conversation,
)
from lore_rm.serve.schemas import (
    GetRewardRequest,
    GetRewardResponse,
    IdempotencyKey,
    Limits,
    Message,
    ModelInfo,
    NextQuestionsRequest,
    NextQuestionsResponse,
    OnboardRequest,
    OnboardResponse,
    PersonalizationRequest,
    QueryFormat,
    Question,
    RewardRequest,
    RewardResponse,
    UserId,
    UserInfo,
)
from lore_rm.serve.service import NoPosterior, RewardService, Scored
from lore_rm.serve.user_store import StoredComparison


def _unprocessable(loc: Sequence[Any], msg: str, status: int = 422) -> HTTPException:
    kind = "too_large" if status == 413 else "value_error"
    return HTTPException(
        status_code=status, detail=[{"loc": ["body", *loc], "msg": msg, "type": kind}]
    )


def _check_batch(name: str, n: int, limit: int) -> None:
    if n > limit:
        raise _unprocessable(
            [name],
            f"{name} holds {n} items; this server accepts at most {limit} per request",
            413,
        )


def _check_chars(loc: Sequence[Any], text: str, limit: int) -> None:
    if len(text) > limit:
        raise _unprocessable(
            loc, f"a text of {len(text)} characters; this server accepts at most {limit} per text"
        )


def _check_messages(loc: Sequence[Any], messages: Sequence[dict[str, str]], limit: int) -> None:
    for j, m in enumerate(messages):
        _check_chars([*loc, j, "content"], m["content"], limit)


def _message_dicts(msgs: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in msgs]


def _loose(value: str | list[Message]) -> Any:
    return value if isinstance(value, str) else _message_dicts(value)


def _read_pair(
    prompt: Any, first: Any, second: Any, where: str, names: tuple[str, str]
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """Prompt and two responses as messages, refused as ``lore prepare`` refuses them: empty
    text, or the two responses identical. ``names`` name the responses in errors."""
    msgs = (
        as_messages(_loose(prompt), "user", f"{where}.prompt"),
        as_messages(_loose(first), "assistant", f"{where}.{names[0]}"),
        as_messages(_loose(second), "assistant", f"{where}.{names[1]}"),
    )
    for name, m in zip(("prompt", *names), msgs, strict=True):
        if not m:
            raise DataError(f"{where}.{name}: empty")
        for j, message in enumerate(m):
            if not message["content"].strip():
                raise DataError(f"{where}.{name}: empty text (message {j})")
    if msgs[1] == msgs[2]:
        raise DataError(f"{where}: {names[0]} is identical to {names[1]}")
    return msgs


def _conversations(
    field: str, items: Sequence[Any], names: tuple[str, str], max_chars: int
) -> tuple[list[tuple[Conversation, Conversation]], list[StoredComparison]]:
    """Each item's two conversations (prompt + response), and the item as messages; a bad
    item (or a text over ``max_chars``) is a 422 naming ``field[i]``."""
    pairs, raw = [], []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        try:
            prompt, first, second = _read_pair(
                item.prompt, getattr(item, names[0]), getattr(item, names[1]), where, names
            )
            for name, msgs in zip(("prompt", *names), (prompt, first, second), strict=True):
                _check_messages([field, i, name], msgs, max_chars)
            pairs.append(
                (
                    to_conversation(prompt, first, f"{where}.{names[0]}"),
                    to_conversation(prompt, second, f"{where}.{names[1]}"),
                )
            )
        except LoreError as exc:
            raise _unprocessable([field, i], str(exc)) from exc
        raw.append(StoredComparison(prompt=prompt, chosen=first, rejected=second))
    return pairs, raw


Score = Callable[..., Awaitable[Scored]]


def scorer(svc: RewardService, batcher: MicroBatcher | None) -> Score:
    """How the reward routes score: off the event loop, on the batcher's thread (embedded
    in its queue with every other backbone call, then scored there), or on a threadpool
    thread. ``personalization`` overrides every user's strength for the call."""

    async def score(
        conversations: list[Conversation],
        users: list[str | None],
        personalization: float | None = None,
    ) -> Scored:
        if batcher is None:
            return await run_in_threadpool(svc.reward, conversations, users, personalization)
        try:
            future = batcher.submit(conversations, lambda e: svc.score(e, users, personalization))
        except ShuttingDown as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return await asyncio.wrap_future(future)

    return score


def path_is_utf8(request: Request) -> None:
    """A 422 for a path that is not UTF-8 once percent-decoded: the server would read each bad
    byte as U+FFFD, so ``/users/caf%E9`` and ``/users/caf%FF`` would be one user."""
    raw = request.scope.get("raw_path") or b""
    if b"%" not in raw:
        return
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        where = ["path", "user_id"] if raw.startswith(b"/users/") else ["path"]
        msg = "not valid UTF-8 once percent-decoded (percent-encode the id's UTF-8 bytes)"
        raise HTTPException(
            status_code=422, detail=[{"loc": where, "msg": msg, "type": "value_error"}]
        ) from None


def api_router(
    svc: RewardService,
    limits: Limits,
    qf: QueryFormat,
    check_token: Callable[..., Awaitable[None]],
    token: str | None,
    batcher: MicroBatcher | None = None,
    batching: Batching | None = None,
) -> APIRouter:
    """Every endpoint but ``/health``, each behind ``check_token``. With a ``batcher`` the
    reward endpoints are embedded and scored on its thread (in its queue, with every other
    backbone call)."""
    api = APIRouter(dependencies=[Depends(check_token), Depends(path_is_utf8)])
    score = scorer(svc, batcher)

    def user_of_label(i: int, label: Any, bad: set[int]) -> str | None:
        """Sample ``i``'s user id; ``i`` joins ``bad`` when ``--label-key`` is set and the
        label carries no such key."""
        if label is None or label == "":  # OpenRLHF sends "" when no label key is set
            return None
        if qf.label_key is not None:
            obj = label
            if isinstance(label, str):
                try:
                    obj = json.loads(label)
                except json.JSONDecodeError:
                    obj = None
            if not isinstance(obj, dict) or qf.label_key not in obj:
                # a plain string, or an object without the key: an unknown user, flagged
                # (a 422 made OpenRLHF drop the sample, or the whole batch up to 0.9.0)
                bad.add(i)
                return None
            label = obj[qf.label_key]
            if label is None:
                return None
        if isinstance(label, dict | list) or (
            isinstance(label, float) and not math.isfinite(label)
        ):
            raise _unprocessable(["labels", i], "a user id must be a string or a finite number")
        user = str(label)
        problem = lone_surrogate(user)
        if problem is not None:
            raise _unprocessable(["labels", i], f"user id {problem}")
        if len(user) > limits.max_user_id_chars:
            raise _unprocessable(
                ["labels", i], f"user id longer than {limits.max_user_id_chars} characters"
            )
        return user

    @api.post("/get_reward", response_model=GetRewardResponse, tags=["rewards"])
    async def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        """OpenRLHF remote reward model: ``labels[i]`` is sample i's user id."""
        n = len(body.query)
        _check_batch("query", n, limits.max_batch)
        for name, values in (("prompts", body.prompts), ("labels", body.labels)):
            if values is not None and len(values) != n:
                raise _unprocessable([name], f"has {len(values)} items but query has {n}")
        conversations, mismatch = [], []
        for name, texts in (("query", body.query), ("prompts", body.prompts or [])):
            for i, text in enumerate(texts):
                _check_chars([name, i], text, limits.max_text_chars)
        for i, q in enumerate(body.query):
            # a query that does not start with its prompt (OpenRLHF truncated the prompt) is
            # read on its own and flagged: one such sample never fails the batch
            conv, matched = read_query(
                q,
                body.prompts[i] if body.prompts is not None else None,
                suffixes=qf.strip_suffixes,
                parse_templates=qf.parse_templates,
            )
            conversations.append(conv)
            mismatch.append(0.0 if matched else 1.0)
        labels = body.labels if body.labels is not None else [None] * n
        bad: set[int] = set()
        users = [user_of_label(i, lab, bad) for i, lab in enumerate(labels)]
        scored = await score(conversations, users)
        rewards = [float(v) for v in scored.rewards]
        return GetRewardResponse(
            rewards=rewards,
            scores=rewards,
            extra_logs={
                "lore_unknown_user": [0.0 if k else 1.0 for k in scored.known],
                "lore_prompt_mismatch": mismatch,
                "lore_bad_label": [1.0 if i in bad else 0.0 for i in range(n)],
            },
        )

    @api.post("/reward", response_model=RewardResponse, tags=["rewards"])
    async def reward(body: RewardRequest) -> RewardResponse:
        """Personalised rewards of conversations for one user (or one user each)."""
        n = len(body.conversations)
        _check_batch("conversations", n, limits.max_batch)
        if (body.user is None) == (body.users is None):
            raise _unprocessable(["user"], "give exactly one of 'user' and 'users'")
        if body.users is not None and len(body.users) != n:
            raise _unprocessable(
                ["users"], f"has {len(body.users)} items but conversations has {n}"
            )
        users = [body.user] * n if body.users is None else list(body.users)
        for i, u in enumerate(users):
            if u is not None and not 0 < len(u) <= limits.max_user_id_chars:
                loc = ["user"] if body.users is None else ["users", i]
                raise _unprocessable(
                    loc, f"a user id has 1 to {limits.max_user_id_chars} characters"
                )
        conversations = []
        for i, msgs in enumerate(body.conversations):
            for j, m in enumerate(msgs):
                _check_chars(["conversations", i, j, "content"], m.content, limits.max_text_chars)
            try:
                conversations.append(
                    check_conversation(_message_dicts(msgs), f"conversations[{i}]")
                )
            except LoreError as exc:
                raise _unprocessable(["conversations", i], str(exc)) from exc
        scored = await score(conversations, users, body.personalization)
        known = [bool(k) for k in scored.known]
        return RewardResponse(
            rewards=[float(v) for v in scored.rewards],
            users=users,
            known=known,
            n_unknown=known.count(False),
        )

    @api.post("/users/{user_id}/comparisons", response_model=OnboardResponse, tags=["users"])
    def onboard(
        user_id: UserId,
        body: OnboardRequest,
        response: Response,
        idempotency_key: IdempotencyKey = None,
    ) -> OnboardResponse:
        """Store comparisons for a user (new or seen) and refit their weights (basis frozen)
        on all their stored comparisons; the next request is scored with the new weights.
        Stored and refit in one transaction: a failed write (503) stores nothing."""
        _check_batch("comparisons", len(body.comparisons), limits.max_comparisons)
        pairs, raw = _conversations(
            "comparisons", body.comparisons, ("chosen", "rejected"), limits.max_text_chars
        )
        try:
            done = svc.onboard(user_id, pairs, raw, idempotency_key=idempotency_key)
        except IdempotencyKeyReused as exc:
            detail = [
                {"loc": ["header", "Idempotency-Key"], "msg": str(exc), "type": "value_error"}
            ]
            raise HTTPException(status_code=422, detail=detail) from exc
        result = asdict(done)
        if result.pop("replayed"):
            response.headers["Idempotent-Replayed"] = "true"
        return OnboardResponse(**result)

    @api.post(
        "/users/{user_id}/next-questions", response_model=NextQuestionsResponse, tags=["users"]
    )
    def next_questions(user_id: UserId, body: NextQuestionsRequest) -> NextQuestionsResponse:
        """The ``n`` candidate pairs whose answers would tell the most about the user (greedy
        D-optimal under their posterior; the prior for a user with no stored comparisons),
        in the order to ask them; near-duplicates (of each other or of the user's stored
        comparisons) are skipped, so fewer may come back."""
        m = len(body.candidates)
        _check_batch("candidates", m, limits.max_candidates)
        if body.n > m:
            raise _unprocessable(["n"], f"n = {body.n} is more than the {m} candidates")
        pairs, _ = _conversations(
            "candidates", body.candidates, ("response_a", "response_b"), limits.max_text_chars
        )
        try:
            chosen = svc.next_questions(user_id, pairs, body.n)
        except NoPosterior as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return NextQuestionsResponse(
            user=user_id,
            known=chosen.known,
            n_answers=chosen.n_answers,
            prior=chosen.prior,  # type: ignore[arg-type]
            reason=chosen.reason,
            questions=[
                Question(
                    index=i,
                    prompt=body.candidates[i].prompt,
                    response_a=body.candidates[i].response_a,
                    response_b=body.candidates[i].response_b,
                    information_gain=g,
                )
                for i, g in zip(chosen.rows, chosen.gains, strict=True)
            ],
        )

    @api.get("/users/{user_id}", response_model=UserInfo, tags=["users"])
    def user_info(user_id: UserId) -> UserInfo:
        """The weights a user is served with, where they come from, and their posterior."""
        return UserInfo(**svc.user_info(user_id))

    @api.put("/users/{user_id}/personalization", response_model=UserInfo, tags=["users"])
    def set_personalization(user_id: UserId, body: PersonalizationRequest) -> UserInfo:
        """Set how far the user's rewards move from the shared reward toward their own
        weights (0: opt out, every reward is the shared one; 1: their own weights; null:
        back to the model's strength). Kept in the database, for every worker and restart;
        removed with the user's other data by ``DELETE /users/{id}``."""
        svc.strengths.set(user_id, body.personalization)
        return UserInfo(**svc.user_info(user_id))

    @api.get("/model-info", response_model=ModelInfo, tags=["meta"])
    def model_info() -> ModelInfo:
        """What is being served: rank, d, backbone, user counts, limits."""
        return ModelInfo(
            **svc.info(),
            limits=asdict(limits),
            batching=asdict(batching or Batching(max_texts=1)),
            auth=token is not None,
        )

    return api
