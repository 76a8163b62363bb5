"""The HTTP service (FastAPI): OpenRLHF's remote reward model, a native reward endpoint,
onboarding, health and model info. See ``docs/serving.md``.

Endpoints (every one but ``/health`` needs the bearer token when one is configured):

``POST /get_reward``
    OpenRLHF's remote-RM shape: ``{"query": [...], "prompts": [...], "labels": [...]}`` ->
    ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. ``labels[i]`` is the user id
    of sample ``i`` (OpenRLHF fills it from the prompt dataset's ``--label_key`` column).
``POST /reward``
    ``{"user": id, "conversations": [[messages], ...]}`` (or ``"users"``: one id per
    conversation) -> ``{"rewards": [...], "known": [...], ...}``.
``POST /users/{user_id}/comparisons``
    onboarding: ``{"comparisons": [{"prompt", "chosen", "rejected"}, ...]}``; stored, then the
    user's weights are refit (basis frozen) on all their stored comparisons.
``GET /users/{user_id}``, ``GET /model-info``, ``GET /health``; ``/openapi.json`` and
``/docs`` come from FastAPI.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from lore_rm.embed.base import Embedder
from lore_rm.errors import LoreError
from lore_rm.fit.model import LowRankReward
from lore_rm.serve.formats import (
    DEFAULT_STRIP_SUFFIXES,
    as_messages,
    check_conversation,
    split_query,
    to_conversation,
)
from lore_rm.serve.service import RewardService
from lore_rm.serve.user_store import StoredComparison

TOKEN_ENV = "LORE_SERVE_TOKEN"
TOKEN_FILE_ENV = "LORE_SERVE_TOKEN_FILE"


@dataclass(frozen=True)
class Limits:
    """Request limits. Bodies over ``max_body_bytes`` get 413; lists over the others get 413
    with the field named."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 512  # conversations (or queries) per reward request
    max_comparisons: int = 1024  # comparisons per onboarding request
    max_user_id_chars: int = 256


@dataclass(frozen=True)
class QueryFormat:
    """How ``/get_reward`` turns OpenRLHF's strings into conversations."""

    strip_suffixes: tuple[str, ...] = DEFAULT_STRIP_SUFFIXES
    parse_templates: bool = True  # ChatML / Llama-3 prompt strings -> messages
    label_key: str | None = None  # labels are JSON objects; the user id is this key


# ---- schemas ----------------------------------------------------------------------------------
UserId = Annotated[str, Field(min_length=1, max_length=256, examples=["alice"])]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model request (extra fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    query: list[str] = Field(description="prompt + response strings, as the policy rendered them")
    prompts: list[str] | None = Field(
        None, description="the prompt of each query; the response is query[len(prompt):]"
    )
    labels: list[Any] | None = Field(
        None, description="the user id of each sample (OpenRLHF's --label_key column)"
    )


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(None, description="one user id for every conversation")
    users: list[str | None] | None = Field(None, description="or one user id per conversation")
    conversations: list[list[Message]] = Field(
        min_length=1,
        description="each: the prompt messages then the assistant response being scored",
    )


class RewardResponse(BaseModel):
    rewards: list[float]
    users: list[str | None]
    known: list[bool] = Field(
        description="false: the user has no weights; the population's mean weights were used"
    )
    n_unknown: int


class ComparisonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | list[Message] = Field(description="a user message, or the prompt messages")
    chosen: str | list[Message] = Field(description="the preferred response")
    rejected: str | list[Message] = Field(description="the other response")


class OnboardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comparisons: list[ComparisonIn] = Field(min_length=1)


class OnboardResponse(BaseModel):
    user: str
    new_user: bool
    added: int
    total: int
    n_fit: int
    weights: list[float]


class UserInfo(BaseModel):
    user: str
    known: bool
    source: Literal["onboarded", "model", "population-mean"]
    weights: list[float]
    n_comparisons: int
    n_fit: int | None


class ModelInfo(BaseModel):
    format: str
    rank: int
    n_components: int
    d: int
    scale: float
    recipe: str
    backbone: str | None
    embedder: str
    has_reference_head: bool
    n_model_users: int
    n_onboarded_users: int
    n_stored_comparisons: int
    population_weights: list[float]
    model_fingerprint: str
    limits: dict[str, int]
    auth: bool


class Health(BaseModel):
    status: Literal["ok"]


_bearer = HTTPBearer(auto_error=False, description="the token given to `lore serve`")


# ---- helpers ----------------------------------------------------------------------------------
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


def _message_dicts(msgs: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in msgs]


def _loose(value: str | list[Message]) -> Any:
    return value if isinstance(value, str) else _message_dicts(value)


def resolve_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The bearer token: ``token``, else the file ``token_file`` (or ``$LORE_SERVE_TOKEN_FILE``),
    else ``$LORE_SERVE_TOKEN``; None (no auth) when none is set."""
    if token:
        return token
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if path:
        text = Path(path).read_text().strip()
        if not text:
            raise LoreError(f"{path}: the token file is empty")
        return text
    return os.environ.get(TOKEN_ENV) or None


class _BodyLimit:
    """ASGI middleware: reject bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send, size: str) -> None:
        body = json.dumps(
            {
                "detail": [
                    {
                        "loc": ["body"],
                        "msg": f"request body is {size} bytes; this server accepts at most "
                        f"{self.max_bytes}",
                        "type": "too_large",
                    }
                ]
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                n = -1
            if n > self.max_bytes:
                await self._reject(send, str(n))
                return
            await self.app(scope, receive, send)
            return
        # no declared length (chunked): read it all, bounded, then replay
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, f"more than {self.max_bytes}")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


# ---- the app ----------------------------------------------------------------------------------
def create_app(
    model: LowRankReward,
    embedder: Embedder,
    db_path: str | Path,
    token: str | None = None,
    limits: Limits | None = None,
    query_format: QueryFormat | None = None,
    *,
    service: RewardService | None = None,
) -> FastAPI:
    """Build the service app over a fitted model and an embedder (injected).

    ``db_path`` is the SQLite file (created if missing; weights stored there are served over
    the model's). ``token`` set: every endpoint but ``/health`` needs
    ``Authorization: Bearer TOKEN`` (or ``?access_token=TOKEN`` for clients that cannot set
    headers, such as OpenRLHF).
    """
    limits = limits or Limits()
    qf = query_format or QueryFormat()
    svc = service or RewardService(model, embedder, db_path)

    def check_token(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else None
        if given is None:
            given = request.query_params.get("access_token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (Authorization: Bearer TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    owned = service is None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if owned:  # close the database connections this app opened
            svc.close()

    app = FastAPI(
        lifespan=lifespan,
        title="lore-rm reward service",
        version="1",
        summary="Personalised rewards from a shared low-rank basis: score, onboard, export.",
    )
    app.state.service = svc
    app.state.limits = limits
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(LoreError)
    async def _lore_error(request: Request, exc: LoreError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]},
        )

    @app.get("/health", response_model=Health, tags=["meta"])
    def health() -> Health:
        """Liveness: no token needed."""
        return Health(status="ok")

    api = APIRouter(dependencies=[Depends(check_token)])

    def user_of_label(i: int, label: Any) -> str | None:
        if label is None or label == "":  # OpenRLHF sends "" when no --label_key is set
            return None
        if qf.label_key is not None:
            obj = label
            if isinstance(label, str):
                try:
                    obj = json.loads(label)
                except json.JSONDecodeError as exc:
                    raise _unprocessable(["labels", i], f"not a JSON object ({exc})") from exc
            if not isinstance(obj, dict) or qf.label_key not in obj:
                raise _unprocessable(["labels", i], f"has no key {qf.label_key!r}")
            label = obj[qf.label_key]
            if label is None:
                return None
        if isinstance(label, dict | list):
            raise _unprocessable(["labels", i], "a user id must be a string or a number")
        user = str(label)
        if len(user) > limits.max_user_id_chars:
            raise _unprocessable(
                ["labels", i], f"user id longer than {limits.max_user_id_chars} characters"
            )
        return user

    @api.post("/get_reward", response_model=GetRewardResponse, tags=["rewards"])
    def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        """OpenRLHF remote reward model: ``labels[i]`` is sample i's user id."""
        n = len(body.query)
        _check_batch("query", n, limits.max_batch)
        for name, values in (("prompts", body.prompts), ("labels", body.labels)):
            if values is not None and len(values) != n:
                raise _unprocessable([name], f"has {len(values)} items but query has {n}")
        conversations = []
        for i, q in enumerate(body.query):
            prompt = body.prompts[i] if body.prompts is not None else None
            try:
                conversations.append(
                    split_query(
                        q,
                        prompt,
                        suffixes=qf.strip_suffixes,
                        parse_templates=qf.parse_templates,
                        where=f"query[{i}]",
                    )
                )
            except LoreError as exc:
                raise _unprocessable(["query", i], str(exc)) from exc
        labels = body.labels if body.labels is not None else [None] * n
        users = [user_of_label(i, lab) for i, lab in enumerate(labels)]
        scored = svc.reward(conversations, users)
        rewards = [float(v) for v in scored.rewards]
        return GetRewardResponse(
            rewards=rewards,
            scores=rewards,
            extra_logs={"lore_unknown_user": [0.0 if k else 1.0 for k in scored.known]},
        )

    @api.post("/reward", response_model=RewardResponse, tags=["rewards"])
    def reward(body: RewardRequest) -> RewardResponse:
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
            try:
                conversations.append(
                    check_conversation(_message_dicts(msgs), f"conversations[{i}]")
                )
            except LoreError as exc:
                raise _unprocessable(["conversations", i], str(exc)) from exc
        scored = svc.reward(conversations, users)
        known = [bool(k) for k in scored.known]
        return RewardResponse(
            rewards=[float(v) for v in scored.rewards],
            users=users,
            known=known,
            n_unknown=known.count(False),
        )

    @api.post("/users/{user_id}/comparisons", response_model=OnboardResponse, tags=["users"])
    def onboard(user_id: UserId, body: OnboardRequest) -> OnboardResponse:
        """Store comparisons for a user (new or seen) and refit their weights (basis frozen)
        on all their stored comparisons; the next request is scored with the new weights."""
        _check_batch("comparisons", len(body.comparisons), limits.max_comparisons)
        pairs, raw = [], []
        for i, c in enumerate(body.comparisons):
            where = f"comparisons[{i}]"
            try:
                prompt = as_messages(_loose(c.prompt), "user", f"{where}.prompt")
                chosen = as_messages(_loose(c.chosen), "assistant", f"{where}.chosen")
                rejected = as_messages(_loose(c.rejected), "assistant", f"{where}.rejected")
                pairs.append(
                    (
                        to_conversation(prompt, chosen, f"{where}.chosen"),
                        to_conversation(prompt, rejected, f"{where}.rejected"),
                    )
                )
            except LoreError as exc:
                raise _unprocessable(["comparisons", i], str(exc)) from exc
            raw.append(StoredComparison(prompt=prompt, chosen=chosen, rejected=rejected))
        done = svc.onboard(user_id, pairs, raw)
        return OnboardResponse(**asdict(done))

    @api.get("/users/{user_id}", response_model=UserInfo, tags=["users"])
    def user_info(user_id: UserId) -> UserInfo:
        """The weights a user is served with, and where they come from."""
        return UserInfo(**svc.user_info(user_id))

    @api.get("/model-info", response_model=ModelInfo, tags=["meta"])
    def model_info() -> ModelInfo:
        """What is being served: rank, d, backbone, user counts, limits."""
        return ModelInfo(**svc.info(), limits=asdict(limits), auth=token is not None)

    app.include_router(api)
    return app


# ---- configuration by environment (uvicorn --workers needs an import string) --------------------
CONFIG_ENV = "LORE_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory lore_rm.serve.app:app_from_env``: reads the JSON
    configuration that ``lore serve`` puts in ``$LORE_SERVE_CONFIG``."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise LoreError(f"${CONFIG_ENV} is not set: start the service with `lore serve`")
    cfg = json.loads(raw)
    return build_app(**cfg)


def build_app(
    model_dir: str,
    backbone: str,
    db: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    limits: dict | None = None,
    query_format: dict | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    loader: Callable[..., Embedder] | None = None,
    torch_threads: int = 0,
) -> FastAPI:
    """Load the model folder and the backbone, then :func:`create_app`.

    ``torch_threads``: torch's intra-op threads for this process (0: one thread for the
    ``hashing-*`` stand-in, whose tiny matrix products only lose to threading; otherwise
    torch's default)."""
    import torch

    from lore_rm.serve.service import default_db_path

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    elif backbone.startswith("hashing-"):
        torch.set_num_threads(1)

    model = LowRankReward.from_pretrained(model_dir)
    embedder = (loader or load_embedder)(backbone, device=device, dtype=dtype)
    qf = dict(query_format or {})
    if "strip_suffixes" in qf:
        qf["strip_suffixes"] = tuple(qf["strip_suffixes"])
    return create_app(
        model,
        embedder,
        db or default_db_path(model_dir),
        token=resolve_token(token, token_file),
        limits=Limits(**(limits or {})),
        query_format=QueryFormat(**qf),
    )


def load_embedder(name_or_path: str, *, device: str = "cpu", dtype: str | None = None) -> Embedder:
    """The backbone ``name_or_path`` through ``lore_rm.embed.load_backbone`` (a reward model
    folder or Hub name, ``minilm``, or the ``hashing-<dim>`` stand-in)."""
    from lore_rm.embed import load_backbone

    kwargs: dict[str, Any] = {"device": device}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return load_backbone(name_or_path, **kwargs)
