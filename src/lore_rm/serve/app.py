"""The HTTP service (FastAPI): OpenRLHF's remote reward model, a native reward endpoint,
onboarding, a user's posterior and next questions, health and model info. See
``docs/serving.md``.

The app is assembled here from :mod:`~lore_rm.serve.schemas` (bodies, limits),
:mod:`~lore_rm.serve.auth` (token, body-size limit) and :mod:`~lore_rm.serve.routes`.

Endpoints (every one but ``/health`` needs the bearer token when one is configured):

``POST /get_reward``
    OpenRLHF's remote-RM shape: ``{"query": [...], "prompts": [...], "labels": [...]}`` ->
    ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. ``labels[i]`` is the user id
    of sample ``i`` (OpenRLHF fills it from the prompt dataset's ``--data.label_key``, formerly
    ``--label_key``, column). An unknown user, or a query that does not start with its prompt
    (a truncated prompt), is scored and flagged in ``extra_logs``, never an error.
``POST /reward``
    ``{"user": id, "conversations": [[messages], ...]}`` (or ``"users"``: one id per
    conversation) -> ``{"rewards": [...], "known": [...], ...}``.
``POST /users/{user_id}/comparisons``
    onboarding: ``{"comparisons": [{"prompt", "chosen", "rejected"}, ...]}``; the user's weights
    are refit (basis frozen) on all their comparisons and stored with them in one transaction
    (optional ``Idempotency-Key`` header: a retry stores nothing). A failed database write is
    a 503 that stored nothing.
``POST /users/{user_id}/next-questions``
    ``{"candidates": [{"prompt", "response_a", "response_b"}, ...], "n": 3}`` -> the (up to)
    ``n`` pairs most informative about the user (greedy D-optimal under their posterior; the
    prior for a user without stored comparisons), in asking order, each with its
    ``information_gain`` in nats. Nothing is stored.
``GET /users/{user_id}``
    the served weights, their source and ``posterior``: the weights' delta-method std, the
    number of answers it conditions on and the prior's kind (null for a seen user of the
    model folder with no stored comparisons).
``POST /rank``, ``POST /group-rank``
    best of N for a user (rewards equal ``/reward``'s, best first, intervals from the user's
    posterior; a batch form) and one choice for a group (borda, plurality, copeland; ties
    explicit): :mod:`~lore_rm.serve.usage_routes`.
``GET /users``, ``GET /users/{user_id}/data``, ``DELETE /users/{user_id}``
    the users served (paged), everything stored about one, and deletion (the database keeps
    no trace of their texts; a seen user of the model folder falls back to the population).
``GET /model-info``, ``GET /health``; ``/openapi.json`` and ``/docs`` come from FastAPI.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lore_rm.embed.base import Embedder
from lore_rm.embed.match import resolve_backbone
from lore_rm.embed.memory_cache import MemoryCachedEmbedder
from lore_rm.errors import LoreError, StorageError
from lore_rm.fit.model import LowRankReward
from lore_rm.serve.auth import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    BodyLimit,
    TokenGate,
    resolve_token,
    token_dependency,
)
from lore_rm.serve.batching import Batching, MicroBatcher
from lore_rm.serve.exposure import HostAllowList
from lore_rm.serve.lifeline import die_with_master
from lore_rm.serve.memory import bound_heap
from lore_rm.serve.redact import install_log_redaction
from lore_rm.serve.routes import api_router, path_is_utf8, scorer
from lore_rm.serve.schemas import N_SHOWN, Health, Limits, QueryFormat
from lore_rm.serve.service import DEFAULT_HISTORY, RewardService
from lore_rm.serve.usage_routes import usage_router
from lore_rm.serve.user_store import describe

_log = logging.getLogger("lore_rm.serve")

# the names the app module has always offered
__all__ = [
    "CONFIG_ENV",
    "Batching",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "Limits",
    "QueryFormat",
    "app_from_env",
    "build_app",
    "create_app",
    "resolve_token",
]


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
    batching: Batching | None = None,
    allowed_hosts: Sequence[str] | None = None,
    history: int | None = DEFAULT_HISTORY,
) -> FastAPI:
    """Build the service app over a fitted model and an embedder (injected).

    ``db_path`` is the SQLite file (created if missing; weights stored there are served over
    the model's). ``token`` set: every endpoint but ``/health`` needs
    ``Authorization: Bearer TOKEN`` (or ``?access_token=TOKEN`` for clients that cannot set
    headers, such as OpenRLHF). Token values are redacted from the uvicorn and lore-rm logs.

    ``batching`` (default :class:`Batching`'s): every backbone call goes through one queue
    (:class:`~lore_rm.serve.batching.MicroBatcher`): concurrent requests are gathered into
    shared calls, large ones cut into chunks, small ones first; the embedder's own
    ``batch_size`` still caps the texts per forward pass.
    """
    install_log_redaction()
    limits = limits or Limits()
    qf = query_format or QueryFormat()
    svc = service or RewardService(model, embedder, db_path, history=history)

    batching = batching or Batching()
    batcher = MicroBatcher(svc.embed_now, batching, cost=svc.text_cost)
    svc.use_queue(batcher)

    check_token = token_dependency(token)
    owned = service is None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await run_in_threadpool(batcher.close)  # finish what was queued, off the event loop
        svc.use_queue(None)
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
    app.state.batching = batching
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, max_items=limits.max_json_items)
    app.add_middleware(TokenGate, token=token)  # before any body is read
    if allowed_hosts is not None:  # outermost: a rebinding page gets nothing, not even a 401
        app.add_middleware(HostAllowList, hosts=allowed_hosts)

    @app.exception_handler(LoreError)
    async def _lore_error(request: Request, exc: LoreError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]},
        )

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError) -> JSONResponse:
        _log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(sqlite3.Error)
    async def _database_error(request: Request, exc: sqlite3.Error) -> JSONResponse:
        return await _storage_error(
            request, StorageError(describe(exc, svc.db_path, svc.store.timeout_s))
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=validation_errors(exc.errors()))

    @app.get("/health", response_model=Health, tags=["meta"])
    def health() -> Health:
        """Liveness: no token needed."""
        return Health(status="ok")

    app.include_router(api_router(svc, limits, qf, check_token, token, batcher, batching))
    app.include_router(
        usage_router(svc, limits, check_token, scorer(svc, batcher)),
        dependencies=[Depends(path_is_utf8)],
    )
    return app


def _printable(value: Any, limit: int = 300) -> str:
    """``value`` as text that JSON can carry (lone surrogates escaped), at most ``limit``
    characters."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# pydantic's names for the members of a union, which it puts in error locations
_MEMBER = re.compile(
    r"^(?:function-(?:after|before|wrap|plain)\[.*, (?P<inner>[^,\]]+)\]|"
    r"(?:list|dict|nullable|union|tagged-union|literal)\[.*\]|str|int|float|bool|none)$"
)
_MEMBER_WORDS = {"str": "as text", "list[Message]": "as a list of messages"}


def _readable(loc: Sequence[Any]) -> tuple[list[Any], str]:
    """``loc`` without pydantic's union member names, and the words naming the member
    (``function-after[_valid_unicode(), str]`` -> ``as text``)."""
    out: list[Any] = []
    member = ""
    for p in loc:
        m = _MEMBER.match(p) if isinstance(p, str) else None
        if m is None:
            out.append(p if isinstance(p, int) else _printable(p, 100))
            continue
        name = m.group("inner") or p
        member = _MEMBER_WORDS.get(name, f"as {name}")
    return out, member


def validation_errors(errors: Sequence[Any]) -> dict[str, Any]:
    """A small 422 body: the first few errors (location, message, type; not the offending
    input, which may be huge, non-finite or invalid Unicode), and how many there were.
    Locations name the request's fields only; which form of a field an error is about
    (text or messages) is said in the message."""
    detail = []
    for e in errors[:N_SHOWN]:
        loc, member = _readable(e.get("loc", ()))
        msg = e.get("msg", "") + (
            f": {e['ctx']['error']}" if e.get("type") == "json_invalid" else ""
        )
        detail.append(
            {
                "loc": loc,
                "msg": _printable(f"{member}: {msg}" if member else msg),
                "type": _printable(e.get("type", ""), 100),
            }
        )
    body: dict[str, Any] = {"detail": detail}
    if len(errors) > N_SHOWN:
        body["n_errors"] = len(errors)
    return body


# ---- configuration by environment (uvicorn --workers needs an import string) --------------------
CONFIG_ENV = "LORE_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory lore_rm.serve.app:app_from_env``: reads the JSON
    configuration that ``lore serve`` puts in ``$LORE_SERVE_CONFIG``. A worker of
    ``lore serve --workers N`` stops when its master dies (:mod:`~lore_rm.serve.lifeline`)."""
    die_with_master(loading=True)
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise LoreError(f"${CONFIG_ENV} is not set: start the service with `lore serve`")
    cfg = json.loads(raw)
    app = build_app(**cfg)
    die_with_master()
    return app


def build_app(
    model_dir: str,
    backbone: str | None = None,
    db: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    limits: dict | None = None,
    query_format: dict | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    loader: Callable[..., Embedder] | None = None,
    torch_threads: int = 0,
    force_backbone: bool = False,
    batching: dict | None = None,
    embed_cache_mb: float = 256.0,
    allowed_hosts: list[str] | None = None,
    history: int | None = DEFAULT_HISTORY,
) -> FastAPI:
    """Load the model folder and the backbone, then :func:`create_app`.

    ``backbone`` defaults to the one the model records; ``dtype`` and the token limit to the
    ones its embeddings were made with (``training.json``), so served rewards match the
    fitted ones. A backbone other than the recorded one (another content fingerprint, or
    name when no fingerprint is recorded; another chat template or pooling) is refused
    unless ``force_backbone`` (:func:`~lore_rm.embed.match.resolve_backbone`); another width
    always is.

    ``torch_threads``: torch's intra-op threads for this process (0: one thread for the
    ``hashing-*`` stand-in, whose tiny matrix products only lose to threading; otherwise
    torch's default).

    ``batching``: :class:`Batching` fields; when on, the backbone's forward passes take up to
    ``max_texts`` conversations (off: ``load_backbone``'s default batch size).

    ``embed_cache_mb``: memory for the embeddings of recently seen texts, which are not
    embedded again (:mod:`~lore_rm.embed.memory_cache`; 0: off).

    ``allowed_hosts``, ``history``: see :func:`create_app`."""
    import torch

    from lore_rm.serve.service import default_db_path

    model = LowRankReward.from_pretrained(model_dir)
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    elif (backbone or model.backbone or "").startswith("hashing-"):
        torch.set_num_threads(1)
    batch = Batching(**(batching or {}))
    settings: dict[str, Any] = {"device": device}
    if batch.enabled:
        settings["batch_size"] = batch.max_texts
    embedder, forced = resolve_backbone(
        model_dir,
        model.backbone,
        model.d_,
        backbone,
        dtype=dtype,
        force=force_backbone,
        loader=loader,
        **settings,
    )
    if embed_cache_mb > 0:
        embedder = MemoryCachedEmbedder(embedder, int(embed_cache_mb * 2**20))
    if forced:
        _log.warning(
            "serving %s with a backbone other than the one it was fitted on (--force-backbone): %s",
            model_dir,
            "; ".join(forced),
        )
    qf = dict(query_format or {})
    if "strip_suffixes" in qf:
        qf["strip_suffixes"] = tuple(qf["strip_suffixes"])
    app = create_app(
        model,
        embedder,
        db or default_db_path(model_dir),
        token=resolve_token(token, token_file),
        limits=Limits(**(limits or {})),
        query_format=QueryFormat(**qf),
        batching=batch,
        allowed_hosts=allowed_hosts,
        history=history,
    )
    # What is loaded now (the backbone, transformers: ~450k objects for a tiny Llama) lives
    # as long as the process: keep it out of the cyclic collector, whose full passes over
    # it stalled every request for ~0.2 s (they now take a few ms).
    gc.collect()
    gc.freeze()
    bound_heap()  # freed activation buffers go back to the system (see serve/memory.py)
    return app
