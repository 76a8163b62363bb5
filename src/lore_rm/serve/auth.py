"""Bearer-token authentication and the request-size limit of the service."""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lore_rm.errors import LoreError

TOKEN_ENV = "LORE_SERVE_TOKEN"
TOKEN_FILE_ENV = "LORE_SERVE_TOKEN_FILE"

_bearer = HTTPBearer(auto_error=False, description="the token given to `lore serve`")


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


def token_dependency(token: str | None) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that accepts ``Authorization: Bearer TOKEN`` (or
    ``?access_token=TOKEN``) when ``token`` is set, and everything when it is None."""

    async def check_token(  # async: no threadpool hop per request for a dict look-up
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else None
        if given is None:
            given = request.query_params.get("access_token")
        if not token_matches(given, token):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (Authorization: Bearer TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check_token


async def send_json(send, status: int, obj: object, headers: list | None = None) -> None:
    """Answer an ASGI request with ``obj`` as JSON (used before any route runs)."""
    body = json.dumps(obj).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


#: paths that answer without the token (liveness and the API description)
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class TokenGate:
    """ASGI middleware: a request without the right token gets its 401 before a byte of its
    body is read (a 15 MiB unauthenticated body cost 300 MB when the check ran as a route
    dependency, after parsing). The route dependency stays, for the OpenAPI description."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token

    def _given(self, scope) -> str | None:
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    return credentials.strip()
        query = parse_qs((scope.get("query_string") or b"").decode("latin-1"))
        values = query.get("access_token")
        return values[0] if values else None

    async def __call__(self, scope, receive, send) -> None:
        if (
            self.token is None
            or scope["type"] != "http"
            or scope.get("path") in PUBLIC_PATHS
            or token_matches(self._given(scope), self.token)
        ):
            await self.app(scope, receive, send)
            return
        detail = "missing or wrong bearer token (Authorization: Bearer TOKEN)"
        await send_json(send, 401, {"detail": detail}, [(b"www-authenticate", b"Bearer")])


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def json_items(body: bytes, limit: int) -> int:
    """The ``:`` and ``,`` of a JSON text outside its strings (an object member counts about
    two, a list item one): what parsing it costs, beyond its bytes. Counted in full (strings
    removed) only when the plain count of those bytes exceeds ``limit``."""
    rough = body.count(b":") + body.count(b",")
    if rough <= limit:
        return rough
    bare = _JSON_STRING.sub(b"", body)
    return bare.count(b":") + bare.count(b",")


class BodyLimit:
    """ASGI middleware: reject bodies over ``max_bytes`` with 413 (declared or streamed), and
    bodies holding more than ``max_items`` JSON keys and list items (:func:`json_items`)
    before they are parsed: a 12 MB object of a million keys held the event loop for
    seconds in ``json.loads`` alone."""

    def __init__(self, app, max_bytes: int, max_items: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_items = max_items

    async def _reject(self, send, what: str) -> None:
        await send_json(
            send, 413, {"detail": [{"loc": ["body"], "msg": what, "type": "too_large"}]}
        )

    def _too_big(self, size: str) -> str:
        return f"request body is {size} bytes; this server accepts at most {self.max_bytes}"

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
                await self._reject(send, self._too_big(str(n)))
                return
        # read it all, bounded, then replay
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
                await self._reject(send, self._too_big(f"more than {self.max_bytes}"))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.max_items is not None and len(body) > self.max_items:
            items = json_items(body, self.max_items)
            if items > self.max_items:
                await self._reject(
                    send,
                    f"request body holds {items} JSON keys and list items (':' and ',' outside "
                    f"strings); this server accepts at most {self.max_items}",
                )
                return
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)
