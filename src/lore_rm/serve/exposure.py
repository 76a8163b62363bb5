"""What the service exposes, and to whom: loopback binds answer only loopback ``Host`` names
(a DNS-rebinding page cannot reach them), and a connection must send its request headers
within a deadline (idle or trickling connections are closed).

* :func:`is_loopback`: whether a bind address is reachable from this machine only; ``lore
  serve`` refuses any other bind without a token unless ``--allow-unauthenticated``.
* :class:`HostAllowList`: ASGI middleware answering 400 to a request whose ``Host`` is not
  in the list. A page on ``attacker.example`` whose name an attacker re-points at 127.0.0.1
  sends ``Host: attacker.example``; on a loopback bind with no token it could otherwise read
  and write the service.
* :class:`HeaderTimeoutProtocol`: uvicorn's HTTP/1.1 protocol, closing a connection whose
  request headers are not complete ``$LORE_SERVE_HEADER_TIMEOUT_S`` seconds (default 10)
  after it opened, or after the first byte of its next request (uvicorn's own keep-alive
  timeout covers an idle kept-alive connection; nothing covered one that never sent a
  request: 900 such connections stayed open).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Iterable

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from lore_rm.serve.auth import send_json

HEADER_TIMEOUT_ENV = "LORE_SERVE_HEADER_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the service to this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostAllowList:
    """ASGI middleware: a request whose ``Host`` names none of ``hosts`` gets a 400 (a
    request without ``Host``, HTTP/1.0, is let through: browsers always send one)."""

    def __init__(self, app, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(host_name(h) for h in hosts)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers") or []:
                if name == b"host":
                    host = host_name(value.decode("latin-1"))
                    if host not in self.hosts:
                        msg = (
                            f"Host {host[:100]!r} is not a name this server answers to "
                            f"({', '.join(sorted(self.hosts))}; lore serve --allowed-host "
                            "adds one)"
                        )
                        await send_json(send, 400, {"detail": msg})
                        return
                    break
        await self.app(scope, receive, send)


class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol with a deadline on request headers (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        raw = os.environ.get(HEADER_TIMEOUT_ENV)
        self.header_timeout_s = float(raw) if raw else DEFAULT_HEADER_TIMEOUT_S
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None and self.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete
            self._disarm()
        elif cycle is not None and cycle.response_complete:  # the next request has begun
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
