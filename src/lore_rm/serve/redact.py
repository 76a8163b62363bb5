"""Keep the bearer token out of the logs.

OpenRLHF cannot set headers, so its URL carries ``?access_token=TOKEN``, and uvicorn's
access log writes every request's path and query verbatim. :class:`RedactTokens`, a
:class:`logging.Filter` that :func:`install_log_redaction` puts on the ``uvicorn.access``,
``uvicorn.error`` and ``lore_rm`` loggers, replaces the value of every ``access_token=``
query parameter (the key in any percent-encoded spelling, the value up to the next ``&``,
``#`` or whitespace) and of every ``Authorization`` header / ``Bearer`` credential in a
record's message and arguments with ``[redacted]`` before any handler formats it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"
LOGGERS = ("uvicorn.access", "uvicorn.error", "lore_rm")

_NOT_DONE = r"(?!\[redacted\]|(?:bearer|basic|token)\s)"  # never redact twice
_VALUE = _NOT_DONE + r"[^\s'\",}\])]+"
# a query value runs to the next parameter, the fragment or the end of the URL: the
# token's own characters (, ) ] } ' ") are no end (the server reads them as part of it)
_QUERY_VALUE = _NOT_DONE + r"[^&#\s]+"


def _any_spelling(key: str) -> str:
    """``key`` with each character also matched percent-encoded (``access%5Ftoken`` is read
    as ``access_token`` by the server, so it authenticates as one)."""
    return "".join(f"(?:{re.escape(c)}|%{ord(c):02X})" for c in key)


_PATTERNS = (
    # ?access_token=... / &access_token=... (also percent-encoded as a whole URL's query)
    re.compile(
        r"(?<![A-Za-z0-9_%])(" + _any_spelling("access_token") + r"(?:=|%3D))" + _QUERY_VALUE,
        re.I,
    ),
    # Authorization: xyz / "authorization": "Basic xyz" / (b'authorization', b'Bearer xyz')
    re.compile(
        r"(authorization['\"]?\s*[:=,]\s*(?:b?['\"])?\s*(?:(?:bearer|basic|token)\s+)?)" + _VALUE,
        re.I,
    ),
    re.compile(r"(\b(?:bearer|basic)\s+)" + _VALUE, re.I),
)


def redact(text: str) -> str:
    """``text`` with every token value (``access_token=``, ``Authorization``, ``Bearer``)
    replaced by ``[redacted]``."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    return value


class RedactTokens(logging.Filter):
    """Redacts tokens in a record's message and arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # the arguments one by one: uvicorn's access formatter unpacks them again
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it as it would have
            return True
        clean = redact(message)
        if clean != message:  # the token sits in the message itself (or spans an argument)
            record.msg, record.args = clean, ()
        return True


def install_log_redaction(names: tuple[str, ...] = LOGGERS) -> None:
    """Put one :class:`RedactTokens` on each logger in ``names`` (again: no effect)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
